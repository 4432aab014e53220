"""ONNX export: ONNX Runtime equals PyTorch per family, TensorRT's operators, SegNet unpooling."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from seg_ros.commands import export as export_command
from seg_ros.export import (
    HEAD_OUTPUTS,
    compare_with_torch,
    export_onnx,
    onnx_opset,
    tensorrt_friendly,
    unsupported_tensorrt_ops,
)
from seg_ros.models import ModelSpec, build_model, save_checkpoint
from seg_ros.models.segnet import unpool_like_max

HEIGHT, WIDTH = 65, 97  # odd on purpose: SegNet pads, the others resize


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- SegNet's unpooling


@pytest.mark.parametrize("values", ["ties", "zeros", "float"])
def test_unpool_like_max_equals_max_unpool2d_exactly(values):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 8, 12)
    if values == "ties":  # few distinct values: most windows hold several maxima
        x = torch.randint(0, 3, shape, generator=generator).float()
    elif values == "zeros":  # what ReLU leaves: whole windows of equal zeros
        x = torch.relu(torch.randn(shape, generator=generator) - 1.0)
    else:
        x = torch.randn(shape, generator=generator)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    y = torch.randn(pooled.shape, generator=generator)
    expected = F.max_unpool2d(y, indices, 2, 2)
    assert torch.equal(unpool_like_max(y, x), expected)


def test_unpool_like_max_keeps_the_first_maximum_in_scan_order():
    x = torch.tensor([[[[1.0, 5.0], [5.0, 5.0]]]])  # three tied maxima: PyTorch keeps (0, 1)
    out = unpool_like_max(torch.tensor([[[[7.0]]]]), x)
    assert out.tolist() == [[[[0.0, 7.0], [0.0, 0.0]]]]


@pytest.mark.parametrize("backbone, size", [("basic", (65, 97)), ("vgg16_bn", (33, 47))])
def test_segnet_tensorrt_friendly_unpooling_gives_identical_outputs(backbone, size):
    torch.manual_seed(0)
    model = build_model("segnet", 5, backbone=backbone).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        reference = model(x)
        with tensorrt_friendly(model):
            friendly = model(x)
    assert torch.equal(friendly, reference)
    assert model.tensorrt_friendly is False  # restored after the block


# ------------------------------------------------------------- every family through ONNX Runtime


# SegNet goes through ONNX Runtime in the export-command test below (head graph); each export
# costs several seconds of the dynamo exporter, so every family is exported once.
@pytest.mark.parametrize(
    "family, options",
    [
        ("deeplab", {"version": "v3plus", "backbone": "mobilenet_v3_large"}),
        ("refinenet", {"light_weight": True, "backbone": "mobilenet_v2"}),
    ],
)
def test_logits_export_matches_pytorch_in_onnxruntime(tmp_path, family, options):
    torch.manual_seed(0)
    model = build_model(family, 11, **options).eval()
    path = export_onnx(model, tmp_path / f"{family}.onnx", HEIGHT, WIDTH, head=False)
    assert onnx_opset(path) >= 17
    assert unsupported_tensorrt_ops(path) == []
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape == ["batch", 3, HEIGHT, WIDTH]  # the batch is dynamic
    assert [o.name for o in session.get_outputs()] == ["logits"]
    images = np.random.default_rng(1).standard_normal((3, 3, HEIGHT, WIDTH), dtype=np.float32)
    for batch in (images[:1], images):  # batch 1, and 3 different images in one run
        (logits,) = session.run(None, {"image": batch})
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        assert logits.shape == (len(batch), 11, HEIGHT, WIDTH)
        assert np.abs(logits - expected).max() < 1e-3
        assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999
    np.testing.assert_allclose(logits[:1], session.run(None, {"image": images[:1]})[0], atol=1e-4)


def test_export_command_writes_the_head_graph(tmp_path, capsys):
    """Export from a checkpoint: label/confidence/probabilities with the node's dtypes."""
    torch.manual_seed(0)
    model = build_model("segnet", 11, backbone="basic").eval()
    weights = save_checkpoint(
        tmp_path / "segnet.safetensors",
        model,
        ModelSpec(name="t", family="segnet", options={"backbone": "basic"}, num_classes=11),
    )
    parser = argparse.ArgumentParser()
    export_command.register(parser.add_subparsers())
    out = tmp_path / "segnet_head.onnx"
    args = parser.parse_args(
        [
            "export",
            "--model",
            "segnet",
            "--weights",
            str(weights),
            "--height",
            str(HEIGHT),
            "--width",
            str(WIDTH),
            "--onnx",
            str(out),
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "all operators supported" in printed
    assert "(fp32 graph as written) vs PyTorch fp32: label agreement 100.0000%" in printed
    assert "with its graph optimisations (as the backends run it): label agreement" in printed
    assert "compared with PyTorch fp32 on a random image" in printed

    session = _session(out)
    assert [o.name for o in session.get_outputs()] == list(HEAD_OUTPUTS)
    image = np.random.default_rng(2).standard_normal((1, 3, HEIGHT, WIDTH), dtype=np.float32)
    label, confidence, probabilities = session.run(None, {"image": image})
    assert label.dtype == np.int32 and label.shape == (1, HEIGHT, WIDTH)
    assert confidence.dtype == np.float32 and confidence.shape == (1, HEIGHT, WIDTH)
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 11, HEIGHT, WIDTH)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(confidence, probabilities.max(1))
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    assert (label == logits.argmax(1)).mean() >= 0.999
    assert compare_with_torch(model, out, image)["max_abs_diff"] < 1e-4


def test_export_command_reports_missing_weights(tmp_path):
    parser = argparse.ArgumentParser()
    export_command.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "export",
            "--model",
            "segnet",
            "--weights",
            str(tmp_path / "none.safetensors"),
            "--onnx",
            str(tmp_path / "x.onnx"),
        ]
    )
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        args.func(args)


def test_a_static_export_keeps_batch_one(tmp_path):
    model = torch.nn.Conv2d(3, 2, 1).eval()
    path = export_onnx(model, tmp_path / "static.onnx", 8, 12, head=False, dynamic_batch=False)
    assert _session(path).get_inputs()[0].shape == [1, 3, 8, 12]


def test_export_rejects_bad_arguments(tmp_path):
    model = build_model("segnet", 3, backbone="basic")
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(model, tmp_path / "a.onnx", 32, 32, opset=16)
    with pytest.raises(ValueError, match="positive"):
        export_onnx(model, tmp_path / "a.onnx", 0, 32)


# ---------------------------------------------------------------- the TensorRT operator check


def _model_with(nodes, outputs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    graph = helper.make_graph(nodes, "g", [x], outs)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)]
    )


def test_operator_check_flags_what_tensorrt_cannot_parse(tmp_path):
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["p", "i"], ["u"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["u", "", "", "sizes"], ["r"], mode="cubic"),
        helper.make_node("Foo", ["r"], ["y"], domain="custom"),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    model = _model_with(nodes, ["y", "z"])
    model.graph.initializer.append(
        helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, 8, 8])
    )
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    assert unsupported_tensorrt_ops(path) == [
        "MaxPool (indices output)",
        "MaxUnpool",
        "Resize (cubic, half_pixel)",
        "custom::Foo",
    ]


def test_operator_check_passes_plain_maxpool_and_relu(tmp_path):
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"]),
    ]
    path = tmp_path / "good.onnx"
    onnx.save(_model_with(nodes, ["y"]), path)
    assert unsupported_tensorrt_ops(path) == []


def test_operator_check_looks_inside_local_functions(tmp_path):
    body = [helper.make_node("MaxUnpool", ["a", "b"], ["c"], kernel_shape=[2, 2])]
    function = helper.make_function(
        "local", "Unpool", ["a", "b"], ["c"], body, opset_imports=[helper.make_opsetid("", 18)]
    )
    nodes = [helper.make_node("Unpool", ["x", "x"], ["y"], domain="local")]
    model = _model_with(nodes, ["y"])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    path = tmp_path / "function.onnx"
    onnx.save(model, path)
    assert unsupported_tensorrt_ops(path) == [
        "MaxUnpool"
    ]  # the call itself is fine: the parser inlines it


# ---------------------------------------------------------------- what `seg_ros export` claims


def test_segnet_export_is_the_network_where_pooling_has_no_near_ties(tmp_path):
    """The bundled SegNet: most logits match PyTorch to 1e-5; index unpooling moves near-ties.

    Where a pooling window holds two maxima within rounding (ReLU's zeros and
    near-zeros are common), a different CPU kernel's rounding picks the other
    index and the unpooled value lands in the neighbouring cell; how often
    depends on the CPU (AVX2: never in this frame, AVX-512: 16 % of logits,
    up to 4.5e-2). Labels agree either way, and the graph is the network.
    """
    from seg_ros.models import load_model

    loaded = load_model("segnet")
    height, width = loaded.spec.input_height, loaded.spec.input_width
    path = export_onnx(loaded.module, tmp_path / "segnet.onnx", height, width, head=False)
    image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    as_written = compare_with_torch(loaded.module, path, image)
    fused = compare_with_torch(loaded.module, path, image, optimized=True)
    assert as_written["label_agreement"] >= 0.999 and fused["label_agreement"] >= 0.999
    assert as_written["max_abs_diff"] < 0.1 and fused["max_abs_diff"] < 0.1
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": image})
    with torch.no_grad():
        reference = loaded.module.eval()(torch.from_numpy(image)).numpy()
    assert np.median(np.abs(logits - reference)) < 1e-5


def _frames(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """CamVid val frames, else the package's sample frames, else generated scenes; RGB uint8."""
    import cv2

    from conftest import camvid_root
    from seg_ros.paths import samples_dir

    files = sorted((camvid_root() / "val").glob("*.png"))
    files = files or sorted((samples_dir() / "camvid").glob("*.jpg"))
    if files:
        picks = files[:: max(len(files) // count, 1)][:count]
        return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in picks]
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        sky = np.array([130, 160, 200]) + rng.integers(-20, 20, 3)
        road = np.array([90, 90, 95]) + rng.integers(-15, 15, 3)
        image = np.zeros((height, width, 3))
        horizon = int(height * rng.uniform(0.35, 0.55))
        image[:horizon], image[horizon:] = sky, road
        for _ in range(6):  # buildings, cars, trees: boxes of other colours
            y0, x0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
            image[
                y0 : y0 + rng.integers(8, height // 2), x0 : x0 + rng.integers(8, width // 3)
            ] = rng.integers(0, 256, 3)
        image += rng.normal(0, 6, image.shape)
        scenes.append(np.clip(image, 0, 255).astype(np.uint8))
    return scenes


def _agreement(loaded, onnx_path, images) -> float:
    """Fraction of pixels where ONNX Runtime's labels equal PyTorch fp32's.

    The graph is run as written (optimisations off): QDQ nodes then compute
    what TensorRT computes (int32 accumulation). ONNX Runtime's fused x86
    integer kernels saturate on CPUs without VNNI (this one: 81.5 % for the
    same INT8 graph), which says nothing about the graph.
    """
    from seg_ros.preprocess import Preprocessor

    spec = loaded.spec
    preprocess = Preprocessor(spec.input_height, spec.input_width, spec.mean, spec.std)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    same = []
    for image in images:
        batch = preprocess(image)[1]
        (label,) = session.run(["label"], {"image": batch})
        with torch.no_grad():
            reference = loaded.module.eval()(torch.from_numpy(batch)).argmax(1).numpy()
        same.append((label == reference).mean())
    return float(np.mean(same))


def _batch_equals_single_runs(path, loaded, images) -> None:
    """Check that a batch of different frames in one run gives each frame's batch-1 results."""
    from seg_ros.preprocess import Preprocessor

    spec = loaded.spec
    preprocess = Preprocessor(spec.input_height, spec.input_width, spec.mean, spec.std)
    batch = np.concatenate([preprocess(image)[1] for image in images])
    session = _session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic
    label, _, probabilities = session.run(None, {"image": batch})
    for i in range(len(batch)):
        one = session.run(None, {"image": batch[i : i + 1]})
        assert (label[i : i + 1] == one[0]).mean() > 0.999
        np.testing.assert_allclose(probabilities[i : i + 1], one[2], atol=1e-3)


@pytest.fixture(scope="module")
def bundled_fp32(tmp_path_factory):
    """Load the bundled LW-RefineNet MobileNetV2 and export its fp32 head graph at its size."""
    from seg_ros.models import load_model

    loaded = load_model(weights="refinenet_lw_mobilenet_v2_camvid")
    spec = loaded.spec
    folder = tmp_path_factory.mktemp("graphs")
    path = export_onnx(loaded.module, folder / "fp32.onnx", spec.input_height, spec.input_width)
    return loaded, path


def test_fp16_graph_is_strongly_typed_fp16_and_agrees_with_pytorch(bundled_fp32, tmp_path):
    from seg_ros.export import FP32_OPS, convert_to_fp16

    loaded, fp32 = bundled_fp32
    path = convert_to_fp16(fp32, tmp_path / "fp16.onnx")
    model = onnx.load(str(path))
    types = {init.data_type for init in model.graph.initializer}
    assert TensorProto.FLOAT16 in types  # the network's weights are fp16 ...
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    producers = {out: n for n in model.graph.node for out in n.output}
    assert producers[argmax.input[0]].op_type != "Cast"  # ... the head reads fp32 logits
    assert not {n.op_type for n in model.graph.node} & set(FP32_OPS)  # none in this network
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io == {
        "image": TensorProto.FLOAT,
        "label": TensorProto.INT32,
        "confidence": TensorProto.FLOAT,
        "probabilities": TensorProto.FLOAT,
    }
    assert unsupported_tensorrt_ops(path) == []
    spec = loaded.spec
    frames = _frames(4, spec.input_height, spec.input_width, 1)
    assert _agreement(loaded, path, frames) >= 0.99
    _batch_equals_single_runs(path, loaded, frames[:3])


@pytest.fixture(scope="module")
def bundled_int8(bundled_fp32, tmp_path_factory):
    """Quantise the bundled model with the shared QDQ function and its shipped calibration."""
    from seg_ros.backends import BackendOptions
    from seg_ros.backends.calibration import resolve_calibration
    from seg_ros.backends.quantize import RangeTable, write_qdq_onnx

    loaded, fp32 = bundled_fp32
    table = resolve_calibration(BackendOptions(), loaded.spec)
    assert isinstance(table, RangeTable)  # the bundled model ships its calibration
    folder = tmp_path_factory.mktemp("int8")
    return loaded, write_qdq_onnx(fp32, folder / "qdq.onnx", table, profile="tensorrt")


def test_int8_graph_for_tensorrt_runs_the_same_numbers(bundled_int8, tmp_path):
    from seg_ros.export import for_tensorrt_qdq, tensorrt_qdq_problems

    loaded, qdq = bundled_int8
    assert any("int32 data" in p for p in tensorrt_qdq_problems(qdq))  # ORT's int32 biases
    path = for_tensorrt_qdq(qdq, tmp_path / "int8.onnx")
    assert tensorrt_qdq_problems(path) == [] and unsupported_tensorrt_ops(path) == []
    spec = loaded.spec
    batch = np.random.default_rng(4).standard_normal(
        (1, 3, spec.input_height, spec.input_width), dtype=np.float32
    )
    ort_form = _session(qdq).run(None, {"image": batch})
    trt_form = _session(path).run(None, {"image": batch})
    assert (ort_form[0] == trt_form[0]).mean() > 0.999  # labels
    np.testing.assert_allclose(ort_form[2], trt_form[2], atol=1e-4)  # probabilities
    _batch_equals_single_runs(path, loaded, _frames(3, spec.input_height, spec.input_width, 2))


def test_int8_graph_agrees_with_pytorch(bundled_int8):
    loaded, qdq = bundled_int8
    spec = loaded.spec
    assert _agreement(loaded, qdq, _frames(4, spec.input_height, spec.input_width, 1)) >= 0.97
