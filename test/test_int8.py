"""INT8 on ONNX Runtime: the shared QDQ graph, shipped calibration tables, calibration, caching.

Real onnxruntime.quantization and real sessions throughout. The bundled
LW-RefineNet runs at a small size on the package's own sample frames (so no
CamVid is needed); random-initialised nets cover the error paths.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch

from seg_ros.backends import create_backend
from seg_ros.backends import quantize as q
from seg_ros.backends.calibration import CalibrationSource, resolve_calibration, table_path
from seg_ros.backends.onnx_cache import cached_onnx
from seg_ros.image_sources import read_image
from seg_ros.models import bundled_models, load_model
from seg_ros.paths import samples_dir
from seg_ros.preprocess import Preprocessor

H, W = 64, 96


@pytest.fixture(scope="module")
def refinenet():
    # The bundled LW-RefineNet MobileNetV2, the model the issue measured INT8 on.
    return load_model(weights="refinenet_lw_mobilenet_v2_camvid")


@pytest.fixture(scope="module")
def samples() -> list[np.ndarray]:
    files = sorted((samples_dir() / "camvid").glob("*.jpg"))
    assert files, "the package ships sample frames in samples/camvid"
    return [read_image(p) for p in files]


def _frames(folder, count: int = 6):
    """Write ``count`` smooth random colour images (a stand-in camera) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (120, 90), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder


def _small_random():
    """Return a seeded random-initialised SegNet-Basic: weights from no file, so no table."""
    from seg_ros.models import LoadedModel, ModelSpec, build_model, resolve_options

    torch.manual_seed(0)
    options = resolve_options("segnet", backbone="basic")
    spec = ModelSpec(name="segnet_random", family="segnet", options=options, num_classes=11)
    return LoadedModel(build_model("segnet", 11, **options).eval(), spec)


# --- the shipped tables -------------------------------------------------------------------------


def test_every_bundled_model_ships_a_table_that_fits_its_graph(tmp_path):
    specs = bundled_models()
    assert specs, "models/ holds the bundled weights"
    for spec in specs:
        path = table_path(spec)
        assert path.is_file(), f"{spec.name} ships no calibration table"
        table = q.RangeTable.load(path)
        assert table.info["model"] == spec.name and table.info["frames"] == 32
        loaded = load_model(weights=spec.weights_path)
        fp32 = cached_onnx(loaded, H, W, cache_root=tmp_path)
        model = onnx.load(str(fp32))
        excluded, _ = q.head_nodes(model)
        needed = q._needed_tensors(model, q._quantised_op_types(), set(excluded))
        covered = len(needed & set(table.ranges)) / len(needed)
        assert covered >= 1 - q.MAX_UNCOVERED, f"{path} does not fit {spec.name}'s graph"
        q.write_qdq_onnx(fp32, tmp_path / f"{spec.name}.onnx", table, q.cpu_profile())


def test_shipped_table_quantises_and_keeps_the_labels(refinenet, samples, tmp_path):
    table = resolve_calibration(_options(), refinenet.spec)
    assert isinstance(table, q.RangeTable)  # no data given: the shipped table
    path = q.quantized_onnx(refinenet, H, W, table, profile=q.cpu_profile(), cache_root=tmp_path)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and "DequantizeLinear" in ops
    # The head reads fp32 logits: its ArgMax is not fed by a DequantizeLinear.
    producer = {o: n for n in model.graph.node for o in n.output}
    (argmax,) = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert producer[argmax.input[0]].op_type != "DequantizeLinear"

    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(cached_onnx(refinenet, H, W, cache_root=tmp_path)))
    int8 = ort.InferenceSession(str(path))
    pre = Preprocessor(H, W, refinenet.spec.mean, refinenet.spec.std)
    agreement = []
    for image in samples:
        batch = pre(image)[1]
        a = fp32.run(["label"], {"image": batch})[0]
        b = int8.run(["label"], {"image": batch})[0]
        agreement.append((a == b).mean())
    # A broken graph (8-bit weights saturating on AVX2, wrong ranges) keeps < 0.75 of them here.
    assert np.mean(agreement) > 0.9


def test_tensorrt_profile_is_symmetric_int8(refinenet, tmp_path):
    table = q.RangeTable.load(table_path(refinenet.spec))
    path = q.quantized_onnx(refinenet, H, W, table, profile="tensorrt", cache_root=tmp_path)
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # One cache key, not the fp32 export's inherited beside its own: the checker accepts it.
    keys = [prop.key for prop in model.metadata_props]
    assert len(keys) == len(set(keys))
    onnx.checker.check_model(str(path))


def _quantised_inputs(path) -> set[str]:
    """Names of the nodes of a QDQ graph that read a dequantised (INT8) tensor."""
    model = onnx.load(str(path))
    dequantised = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if dequantised & set(n.input)}


def test_tensorrt_profile_keeps_the_high_resolution_stem_fp32(tmp_path):
    loaded = _small_random()  # SegNet-Basic: the stem is the first two encoder convolutions
    fp32 = cached_onnx(loaded, H, W, cache_root=tmp_path)
    model = onnx.load(str(fp32))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    stem = q.stem_nodes(model)
    assert [n for n in convs if n in stem] == convs[:2]
    source = CalibrationSource(images=str(_frames(tmp_path / "frames")), frames=2)
    tensorrt = q.quantized_onnx(loaded, H, W, source, profile="tensorrt", cache_root=tmp_path)
    cpu = q.quantized_onnx(loaded, H, W, source, profile="cpu", cache_root=tmp_path)
    quantised = _quantised_inputs(tensorrt)
    assert not quantised & set(convs[:2]) and convs[2] in quantised
    assert set(convs[:3]) <= _quantised_inputs(cpu)  # the CPU encodings quantise the stem


def test_the_profile_keys_the_int8_graph_and_the_engine(tmp_path, monkeypatch):
    from seg_ros.backends.tensorrt_backend import _calibration_id

    loaded = _small_random()
    source = CalibrationSource(images=str(_frames(tmp_path / "frames")), frames=2)
    first = q.quantized_onnx(loaded, H, W, source, profile="tensorrt", cache_root=tmp_path)
    engine_id = _calibration_id(source, "strong")
    monkeypatch.setitem(q.PROFILES, "tensorrt", {**q.PROFILES["tensorrt"], "fp32": []})
    again = q.quantized_onnx(loaded, H, W, source, profile="tensorrt", cache_root=tmp_path)
    assert again != first and _quantised_inputs(again) > _quantised_inputs(first)
    assert _calibration_id(source, "strong") != engine_id  # the engine is rebuilt too


def test_onnxruntime_backend_runs_int8_from_the_shipped_table(refinenet, samples):
    with create_backend("onnxruntime", refinenet, height=H, width=W, precision="int8") as b:
        assert b.precision == "int8" and "int8" in b.onnx_path.name
        out = b.infer(Preprocessor(H, W)(samples[0])[1], ("label", "probabilities"))
        assert out["label"].shape == (1, H, W)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.skipif(
    __import__("seg_ros.backends.devices", fromlist=["x"]).cuda_available(),
    reason="the auto choice checked here is a CPU-only machine's",
)
def test_auto_on_a_cpu_runs_int8_only_when_asked(refinenet):
    with create_backend("auto", refinenet, height=H, width=W) as backend:
        assert backend.precision == "fp32"
    with create_backend("auto", refinenet, height=H, width=W, precision="int8") as backend:
        assert backend.name.startswith("onnxruntime") and backend.precision == "int8"


# --- calibration from frames ---------------------------------------------------------------------


def _options(**values):
    from seg_ros.backends.base import BackendOptions

    return BackendOptions.from_dict(values)


def test_weights_without_calibration_get_one_clear_line():
    loaded = _small_random()
    with pytest.raises(ValueError, match="ships no calibration table.*calibration.images") as e:
        create_backend("onnxruntime", loaded, height=H, width=W, precision="int8")
    assert "\n" not in str(e.value)


def test_calibration_is_cached_by_its_datas_fingerprint(tmp_path, monkeypatch):
    loaded = _small_random()
    frames = _frames(tmp_path / "frames")
    calls = []
    real = q.calibrate
    monkeypatch.setattr(q, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))

    source = CalibrationSource(images=str(frames), frames=4)
    first = q.quantized_onnx(loaded, H, W, source, profile="cpu", cache_root=tmp_path / "c")
    assert len(calls) == 1
    # The other profile reuses the calibration (same data), and the same request the graph.
    q.quantized_onnx(loaded, H, W, source, profile="tensorrt", cache_root=tmp_path / "c")
    assert (
        q.quantized_onnx(loaded, H, W, source, profile="cpu", cache_root=tmp_path / "c") == first
    )
    assert len(calls) == 1
    _frames(tmp_path / "frames", 7)  # new data: a new calibration and a new graph
    again = q.quantized_onnx(loaded, H, W, source, profile="cpu", cache_root=tmp_path / "c")
    assert len(calls) == 2 and again != first


def test_a_calibration_that_fails_part_way_is_not_cached(tmp_path):
    loaded = load_model("segnet")  # bundled weights: its files would go to the cache folder
    frames = _frames(tmp_path / "frames")
    (frames / "5.png").write_bytes(b"not a png")  # the last frame drawn cannot be read
    cache = tmp_path / "cache"
    source = CalibrationSource(images=str(frames), frames=6)
    with pytest.raises(ValueError, match="cannot read calibration image .*5.png"):
        q.quantized_onnx(loaded, H, W, source, profile="cpu", cache_root=cache)
    left = sorted(p.name for p in cache.iterdir())
    assert not [n for n in left if "int8" in n or n.endswith(".ranges.json")], left


def test_calibrate_refuses_fewer_frames_than_promised(tmp_path):
    loaded = _small_random()
    fp32 = cached_onnx(loaded, H, W)
    batches = [Preprocessor(H, W)(np.zeros((H, W, 3), np.uint8))[1]] * 2
    with pytest.raises(ValueError, match="gave 2 of 3 frames"):
        q.calibrate(fp32, iter(batches), 3)


def test_percentile_calibration_clips_an_outliers_range_that_minmax_keeps(tmp_path):
    """A few extreme values set MinMax's range; the 99.99 % histogram's is narrower.

    It still holds the ordinary frames' values, and the table says how it was made.
    """
    loaded = _small_random()
    fp32 = cached_onnx(loaded, H, W)
    rng = np.random.default_rng(0)
    frames = [
        Preprocessor(H, W)(rng.integers(100, 156, (H, W, 3), dtype=np.uint8))[1] for _ in range(7)
    ]
    outlier = Preprocessor(H, W)(np.zeros((H, W, 3), np.uint8))[1]
    outlier[0, :, 0, 0] = 40.0  # a handful of values far outside everything else
    minmax = q.calibrate(fp32, iter([*frames, outlier]), 8)
    percentile = q.calibrate(fp32, iter([*frames, outlier]), 8, method="percentile")
    name = q.INPUT_NAME
    assert (minmax.info["method"], percentile.info["method"]) == ("minmax", "percentile")
    assert minmax.ranges[name][1] >= 40.0 > 2 * percentile.ranges[name][1]
    ordinary = max(float(f.max()) for f in frames)
    assert percentile.ranges[name][1] >= 0.9 * ordinary
    with pytest.raises(ValueError, match="unknown calibration method 'entropy'"):
        q.calibrate(fp32, iter(frames), 7, method="entropy")


def test_a_table_for_another_graph_is_refused(tmp_path):
    loaded = _small_random()
    fp32 = cached_onnx(loaded, H, W)
    table = q.RangeTable({"some_other_tensor": (0.0, 1.0)})
    with pytest.raises(ValueError, match="lacks .* it was made for another network"):
        q.write_qdq_onnx(fp32, tmp_path / "x.onnx", table)
    assert not (tmp_path / "x.onnx").exists()


def test_a_tables_fp32_op_types_stay_unquantised(tmp_path):
    import dataclasses

    import onnx

    loaded = _small_random()
    fp32 = cached_onnx(loaded, H, W)
    frames = [Preprocessor(H, W)(np.full((H, W, 3), v, np.uint8))[1] for v in (0, 128, 255)]
    table = q.calibrate(fp32, iter(frames), 3)

    def quantised_convs(table, name):
        graph = onnx.load(str(q.write_qdq_onnx(fp32, tmp_path / name, table, "cpu"))).graph
        dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return sum(n.op_type == "Conv" and n.input[0] in dequantised for n in graph.node)

    assert quantised_convs(table, "all.onnx") > 0
    kept = dataclasses.replace(table, fp32_op_types=("Conv",))
    assert quantised_convs(kept, "kept.onnx") == 0
    assert kept.fingerprint() != table.fingerprint()  # a cached INT8 graph is not reused


def test_range_table_round_trip_and_bad_files(tmp_path):
    table = q.RangeTable({"a": (-1.0, 2.5), "b": (0.0, 6.0)}, {"model": "m"}, ("Add",))
    loaded = q.RangeTable.load(table.save(tmp_path / "t.json"))
    assert loaded.ranges == table.ranges and loaded.fingerprint() == table.fingerprint()
    assert loaded.fp32_op_types == ("Add",)
    (tmp_path / "bad.json").write_text('{"format": 1, "ranges": {"a": [3, 1]}}')
    with pytest.raises(ValueError, match="min > max"):
        q.RangeTable.load(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("not json")
    with pytest.raises(ValueError, match="not a seg_ros calibration table"):
        q.RangeTable.load(tmp_path / "worse.json")


def test_cpu_profile_is_a_known_one():
    assert q.cpu_profile() in q.PROFILES
    with pytest.raises(ValueError, match="unknown INT8 profile"):
        q.write_qdq_onnx("x.onnx", "y.onnx", q.RangeTable({"a": (0.0, 1.0)}), "gpu")


def test_cli_flags_reach_the_backend_options():
    import argparse

    from seg_ros.backends.base import BackendOptions
    from seg_ros.commands.options import add_pipeline_arguments, pipeline_config_from_args

    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    args = parser.parse_args(
        ["--precision", "int8", "--calibration-images", "frames/", "--calibration-frames", "8"]
    )
    config = pipeline_config_from_args(args)
    options = BackendOptions.from_dict(config.backend_options)
    assert config.precision == "int8"
    assert (options.calibration_images, options.calibration_frames) == ("frames/", 8)
