"""The BatchNorm+PReLU split computes what the original graph computes, and INT8 uses it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from seg_ros.backends import quantize as q
from seg_ros.backends.onnx_cache import cached_onnx
from seg_ros.backends.prelu_split import SPLIT_SUM_SUFFIX, split_prelu
from seg_ros.image_sources import read_image
from seg_ros.models import bundled_models, load_model
from seg_ros.paths import samples_dir
from seg_ros.preprocess import Preprocessor


def _graph() -> onnx.ModelProto:
    """Conv -> BN -> PReLU (split), Conv -> PReLU with a scalar slope, PReLU with a slope >= 1."""
    rng = np.random.default_rng(0)
    c = 4
    tensors = {
        "w1": rng.normal(size=(c, 3, 3, 3)),
        "w2": rng.normal(size=(c, c, 1, 1)),
        "gamma": rng.uniform(-2, 2, c),  # a negative scale flips the sign: still exact
        "beta": rng.normal(size=c),
        "mean": rng.normal(size=c),
        "var": rng.uniform(0.1, 3, c),
        "slope": np.array([-0.5, 0.0, 0.25, 0.9]).reshape(c, 1, 1),
        "scalar_slope": np.array([0.2]),
        "steep_slope": np.array([0.3, 1.5, 0.1, 0.2]).reshape(c, 1, 1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn"
        ),
        helper.make_node("PRelu", ["bn", "slope"], ["p1"], name="prelu1"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("PRelu", ["c2", "scalar_slope"], ["p2"], name="prelu2"),
        helper.make_node("PRelu", ["p2", "steep_slope"], ["y"], name="prelu3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 7])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_the_split_is_exact_and_leaves_what_it_cannot_split():
    model = _graph()
    split = split_prelu(model)
    onnx.checker.check_model(split)
    ops = [n.op_type for n in split.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("PRelu") == 2  # the scalar and the >= 1 slope stay
    assert [n.op_type for n in model.graph.node].count("PRelu") == 3  # the input is not touched
    x = np.random.default_rng(1).normal(scale=3, size=(1, 3, 6, 7)).astype(np.float32)
    (expected,), (got,) = _run(model, x), _run(split, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.any(expected < 0) and np.any(expected > 0)  # both sides of the kink were tested


def test_keeping_the_original_gives_both_graphs_tensors_in_one_pass():
    model = _graph()
    both = split_prelu(model, keep_original=True)
    onnx.checker.check_model(both)
    assert [o.name for o in both.graph.output] == ["y", "p1" + SPLIT_SUM_SUFFIX]
    produced = {out for n in both.graph.node for out in n.output}
    assert {"bn", "p1", "prelu1/relu_branch_relu", "prelu1/linear_branch"} <= produced
    both.graph.output.append(helper.make_tensor_value_info("p1", TensorProto.FLOAT, None))
    x = np.random.default_rng(2).normal(size=(1, 3, 6, 7)).astype(np.float32)
    y, split_sum, p1 = _run(both, x)
    np.testing.assert_allclose(y, _run(model, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split_sum, p1, rtol=1e-5, atol=1e-5)


def test_default_models_cpu_int8_graph_has_no_fp32_prelu_and_tensorrts_keeps_it(tmp_path):
    spec = next(s for s in bundled_models() if s.name == "deeplab_v3plus_espnet_c_camvid")
    loaded = load_model(weights=spec.weights_path)
    height, width = 96, 128
    fp32 = cached_onnx(loaded, height, width, head=True)
    exported = onnx.load(str(fp32))
    assert any(n.op_type == "PRelu" for n in exported.graph.node)
    images = sorted((samples_dir() / "camvid").glob("*.jpg"))[:3]
    frames = [Preprocessor(height, width)(read_image(p))[1] for p in images]
    table = q.calibrate(fp32, iter(frames), len(frames))
    ops = {}
    for profile in ("cpu", "tensorrt"):
        out = q.write_qdq_onnx(fp32, tmp_path / f"{profile}.onnx", table, profile)
        ops[profile] = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "PRelu" not in ops["cpu"] and "BatchNormalization" not in ops["cpu"]
    assert "PRelu" in ops["tensorrt"]
    session = ort.InferenceSession(str(tmp_path / "cpu.onnx"), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    label = session.run(["label"], {"image": frames[0]})[0]
    expected = reference.run(["label"], {"image": frames[0]})[0]
    # 96×128 and three calibration frames: ~90 % (95.7 % at 360×480, README INT8)
    assert (label == expected).mean() > 0.85
