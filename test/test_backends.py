"""Backends on real models and real ONNX Runtime sessions: agreement, validation, auto, caches.

Networks are the real small variants (randomly initialised unless weights are
bundled) at 64x96 to keep the suite fast on a 2-core machine. They are seeded,
so every test (and test_benchmark) finds the same exported ONNX file in the
session's cache instead of exporting again; the cache's own tests use a tiny net.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch

from seg_ros.backends import BackendError, create_backend
from seg_ros.backends.base import head_io
from seg_ros.backends.devices import cuda_available, tensorrt_importable
from seg_ros.backends.onnx_cache import (
    CACHE_LIMIT_ENV,
    cached_onnx,
    enforce_cache_limit,
    export_key,
    prepare_onnx_for_tensorrt,
    scratch_dir,
    weights_fingerprint,
)
from seg_ros.models import LoadedModel, ModelSpec, load_model
from seg_ros.pipeline import SegmentationPipeline

H, W = 64, 96
SMALL = {
    "segnet": {"backbone": "basic"},
    "deeplab": {"backbone": "mobilenet_v3_large"},
    "refinenet": {"light_weight": True, "backbone": "mobilenet_v2"},
}


def small_model(family: str) -> LoadedModel:
    torch.manual_seed(
        0
    )  # the same parameters every time: one export per family, reused from the cache
    return load_model(family, **SMALL[family])


@pytest.fixture(scope="module")
def models() -> dict:
    return {family: small_model(family) for family in SMALL}


@pytest.fixture(scope="module")
def deeplab(models) -> LoadedModel:
    return models["deeplab"]


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """Return a real street image when CamVid is present, else a synthetic one of the same size."""
    from conftest import camvid_root

    files = sorted((camvid_root() / "val").glob("*.png"))
    if files:
        return cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(1)
    return cv2.resize(
        rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), (480, 360), interpolation=cv2.INTER_CUBIC
    )


def _batch(loaded, image) -> np.ndarray:
    spec = loaded.spec
    return SegmentationPipeline(
        None, num_classes=spec.num_classes, input_size=(H, W), mean=spec.mean, std=spec.std
    ).preprocess(image)[1]


# --- the same answers from every backend -------------------------------------------------------


@pytest.mark.parametrize("family", list(SMALL))
def test_onnxruntime_and_torch_agree(models, frame, family):
    loaded = models[family]
    batch = _batch(loaded, frame)
    everything = ("label", "confidence", "probabilities")
    with (
        create_backend("onnxruntime", loaded, height=H, width=W) as ort,
        create_backend("torch", loaded, height=H, width=W) as eager,
    ):
        assert ort.name == "onnxruntime:CPUExecutionProvider" and eager.name == "torch:cpu"
        assert ort.computes_on_cpu and eager.computes_on_cpu  # the node publishes in between
        a, b = ort.infer(batch, everything), eager.infer(batch, everything)
    expected = head_io(loaded.spec.num_classes, H, W)
    for out in (a, b):
        for name in everything:
            shape, dtype = expected[name]
            assert out[name].shape == shape and out[name].dtype == np.dtype(dtype), name
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=2e-4)
    np.testing.assert_allclose(a["probabilities"].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(a["confidence"], b["confidence"], atol=2e-4)
    np.testing.assert_allclose(a["confidence"], a["probabilities"].max(axis=1), atol=1e-6)
    # Labels may differ only where two classes are (numerically) tied.
    disagree = a["label"] != b["label"]
    assert disagree.mean() < 0.005
    np.testing.assert_array_equal(a["label"], a["probabilities"].argmax(axis=1))


def _counting_runs(backend, monkeypatch) -> list:
    """Record the batch size of every session.run of an ONNX Runtime backend."""
    sizes, run = [], backend._session.run

    def counting(names, feeds):
        sizes.append(len(feeds["image"]))
        return run(names, feeds)

    monkeypatch.setattr(backend._session, "run", counting)
    return sizes


def test_onnxruntime_runs_a_batch_of_cameras_in_one_session_run(deeplab, frame, monkeypatch):
    """The export's dynamic batch: two frames in one run, the labels of two single runs."""
    from seg_ros.backends.base import MAX_BATCH

    frames = np.concatenate([_batch(deeplab, frame), _batch(deeplab, frame[:, ::-1].copy())])
    with create_backend("onnxruntime", deeplab, height=H, width=W) as backend:
        assert backend.max_batch == MAX_BATCH  # a symbolic batch: any
        sizes = _counting_runs(backend, monkeypatch)
        both = backend.infer(frames, ("label", "confidence"))
        singles = [backend.infer(frames[i : i + 1], ("label", "confidence")) for i in range(2)]
    assert sizes == [2, 1, 1]
    assert not (frames[0] == frames[1]).all()  # different images per item
    for i, single in enumerate(singles):
        assert (both["label"][i : i + 1] == single["label"]).all()
        np.testing.assert_allclose(both["confidence"][i : i + 1], single["confidence"], atol=1e-5)


def test_a_static_batch_graph_still_runs_frame_by_frame(tmp_path, monkeypatch):
    """An export from before the dynamic batch (static 1x3xHxW) takes a batch one frame a time."""
    from functools import partial

    import seg_ros.backends.onnx_cache as onnx_cache
    from seg_ros.backends.onnx_cache import check_onnx_for_tensorrt

    tiny = _tiny()
    static = partial(cached_onnx, dynamic_batch=False, cache_root=tmp_path)
    check_onnx_for_tensorrt(static(tiny, 16, 24, head=True), 16, 24)  # TensorRT takes it too
    monkeypatch.setattr(onnx_cache, "cached_onnx", static)
    with create_backend("onnxruntime", tiny, height=16, width=24) as backend:
        assert backend.max_batch == 1
        sizes = _counting_runs(backend, monkeypatch)
        pipeline = SegmentationPipeline(backend, num_classes=4, input_size=(16, 24))
        images = np.random.default_rng(2).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
        results = pipeline.process_batch(list(images))
    assert sizes == [1, 1] and len(results) == 2


def test_only_the_requested_outputs(deeplab, frame):
    batch = _batch(deeplab, frame)
    with create_backend("onnxruntime", deeplab, height=H, width=W) as backend:
        assert set(backend.infer(batch, ("label",))) == {"label"}
        assert set(backend.infer(batch, ("confidence", "label"))) == {"confidence", "label"}
    with create_backend("torch", deeplab, height=H, width=W) as backend:
        assert set(backend.infer(batch, ("probabilities",))) == {"probabilities"}


@pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
def test_infer_rejects_bad_batches_and_outputs(deeplab, kind):
    with create_backend(kind, deeplab, height=H, width=W) as backend:
        good = np.zeros((1, 3, H, W), np.float32)
        with pytest.raises(
            ValueError, match=r"built for input \(1, 3, 64, 96\).*\(1, 3, 32, 96\)"
        ):
            backend.infer(np.zeros((1, 3, 32, 96), np.float32))
        with pytest.raises(ValueError, match="float32"):
            backend.infer(good.astype(np.float64))
        with pytest.raises(ValueError, match="unknown output"):
            backend.infer(good, ("logits",))
        with pytest.raises(ValueError, match="at least one"):
            backend.infer(good, ())


def test_torch_backend_leaves_the_callers_module_alone(deeplab):
    before = next(deeplab.module.parameters())
    with create_backend("torch", deeplab, height=H, width=W):
        pass
    after = next(deeplab.module.parameters())
    assert after is before and after.device.type == "cpu" and after.dtype == torch.float32


# --- arguments and failures ---------------------------------------------------------------------


def test_bad_arguments_are_value_errors(deeplab):
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        create_backend("cuda", deeplab, height=H, width=W)
    with pytest.raises(ValueError, match="unknown precision"):
        create_backend("torch", deeplab, height=H, width=W, precision="int4")
    with pytest.raises(ValueError, match="positive"):
        create_backend("torch", deeplab, height=0, width=W)
    with pytest.raises(ValueError, match="unknown backend option 'bogus'"):
        create_backend("torch", deeplab, height=H, width=W, options={"bogus": 1})
    with pytest.raises(ValueError, match="'device' must be one of"):
        create_backend("torch", deeplab, height=H, width=W, options={"device": "tpu"})
    with pytest.raises(ValueError, match="dla_core"):
        create_backend("torch", deeplab, height=H, width=W, options={"dla_core": -5})


@pytest.mark.skipif(cuda_available(), reason="checks the CPU-only refusals")
def test_unsupported_precisions_and_devices_are_backend_errors(deeplab):
    with pytest.raises(BackendError, match="fp16 in the torch backend needs a CUDA GPU"):
        create_backend("torch", deeplab, height=H, width=W, precision="fp16")
    with pytest.raises(BackendError, match="no int8 path"):
        create_backend("torch", deeplab, height=H, width=W, precision="int8")
    with pytest.raises(BackendError, match="torch sees no CUDA GPU"):
        create_backend("torch", deeplab, height=H, width=W, options={"device": "cuda"})
    with pytest.raises(BackendError, match="runs fp32 or int8"):
        create_backend("onnxruntime", deeplab, height=H, width=W, precision="fp16")
    with pytest.raises(BackendError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        create_backend("onnxruntime", deeplab, height=H, width=W, options={"device": "cuda"})


@pytest.mark.skipif(
    tensorrt_importable(), reason="checks the message shown where TensorRT is missing"
)
def test_tensorrt_requested_without_tensorrt_says_so(deeplab):
    with pytest.raises(BackendError, match="TensorRT is not installed.*--backend onnxruntime"):
        create_backend("tensorrt", deeplab, height=H, width=W, precision="fp16")
    with pytest.raises(BackendError, match="a DLA core runs fp16 or int8 only"):
        create_backend("tensorrt", deeplab, height=H, width=W, options={"dla_core": 0})
    # Weights without a shipped calibration table and no calibration data: said before any work.
    random = LoadedModel(deeplab.module, ModelSpec(name="r", family="deeplab", num_classes=11))
    with pytest.raises(BackendError, match="INT8 calibration: .*ships no calibration table"):
        create_backend("tensorrt", random, height=H, width=W, precision="int8")


# --- auto ---------------------------------------------------------------------------------------

needs_cpu_only = pytest.mark.skipif(
    tensorrt_importable() or cuda_available(),
    reason="the auto choice checked here is the one for a machine without a GPU",
)


@needs_cpu_only
def test_auto_picks_onnxruntime_on_the_cpu_and_says_why(deeplab, caplog):
    caplog.set_level("INFO", logger="seg_ros.backends")
    with create_backend("auto", deeplab, height=H, width=W) as backend:
        assert backend.name == "onnxruntime:CPUExecutionProvider"
        assert backend.precision == "fp32"
        assert "TensorRT is not importable" in backend.reason
    assert "backend auto: using onnxruntime:CPUExecutionProvider" in caplog.text


@needs_cpu_only
def test_auto_runs_fp32_where_fp16_is_unavailable(deeplab):
    with create_backend("auto", deeplab, height=H, width=W, precision="fp16") as backend:
        assert backend.precision == "fp32"
        assert "fp16 is not available there" in backend.reason


@needs_cpu_only
def test_auto_without_onnxruntime_uses_torch(deeplab, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "onnxruntime", None
    )  # `import onnxruntime` now fails, as when not installed
    with create_backend("auto", deeplab, height=H, width=W) as backend:
        assert backend.name == "torch:cpu"
        assert "ONNX Runtime is not installed" in backend.reason


@needs_cpu_only
def test_auto_reports_every_failure_when_nothing_starts(deeplab):
    with pytest.raises(
        BackendError,
        match=r"no backend could start: onnxruntime: .*CUDAExecutionProvider.*; "
        r"torch: .*no CUDA GPU",
    ):
        create_backend("auto", deeplab, height=H, width=W, options={"device": "cuda"})


# --- the exported-ONNX cache --------------------------------------------------------------------


@pytest.fixture
def export_calls(monkeypatch):
    import seg_ros.export

    calls = []
    real = seg_ros.export.export_onnx

    def counting(*args, **kwargs):
        calls.append(args[2:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_ros.export, "export_onnx", counting)
    return calls


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _tiny(sha256: str = "ab" * 32) -> LoadedModel:
    """Make a tiny net as if loaded from a weights file (hash in the spec): exports are cached."""
    spec = ModelSpec(name="tiny", family="deeplab", num_classes=4, weights_sha256=sha256)
    return LoadedModel(_TinyNet().eval(), spec)


def test_onnx_cache_reuses_only_matching_files(tmp_path, export_calls):
    import onnx

    tiny = _tiny()
    assert export_key(tiny, 16, 24) != export_key(tiny, 8, 12)
    assert export_key(tiny, 16, 24) != export_key(tiny, 16, 24, dynamic_batch=False)
    first = cached_onnx(tiny, 16, 24, cache_root=tmp_path)
    assert cached_onnx(tiny, 16, 24, cache_root=tmp_path) == first
    assert export_calls == [(16, 24)]

    intact = first.read_bytes()
    first.write_bytes(intact[:100])  # truncated (e.g. disk full while copying)
    assert cached_onnx(tiny, 16, 24, cache_root=tmp_path) == first
    assert len(export_calls) == 2

    foreign = onnx.load_from_string(
        intact
    )  # a valid ONNX file whose stored key is another model's
    for prop in foreign.metadata_props:
        prop.value = prop.value.replace("sha256:", "sha256:0")
    onnx.save(foreign, str(first))
    assert cached_onnx(tiny, 16, 24, cache_root=tmp_path) == first
    assert len(export_calls) == 3
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [
        ".onnx"
    ]  # no temporary files left behind


def test_random_initialised_exports_are_not_cached(tmp_path, export_calls):
    tiny = _tiny(sha256="")  # random initialisation: new parameters on every start
    path = cached_onnx(tiny, 16, 24, cache_root=tmp_path)
    assert path.is_file() and path.parent == scratch_dir() != tmp_path
    assert list(tmp_path.iterdir()) == []
    assert cached_onnx(tiny, 16, 24, cache_root=tmp_path) == path  # still reused in this process
    assert export_calls == [(16, 24)]


def test_onnx_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch, caplog):
    import os

    tiny = _tiny()
    first = cached_onnx(tiny, 16, 24, cache_root=tmp_path)
    second = cached_onnx(tiny, 8, 12, cache_root=tmp_path)
    os.utime(first, (1, 1))  # first is the older one...
    os.utime(second, (2, 2))
    assert cached_onnx(tiny, 16, 24, cache_root=tmp_path) == first  # ...until it is used again
    size = max(first.stat().st_size, second.stat().st_size)
    monkeypatch.setenv(CACHE_LIMIT_ENV, str(2.5 * size / (1 << 20)))  # room for two files
    caplog.set_level("INFO", logger="seg_ros.backends.onnx_cache")
    third = cached_onnx(tiny, 8, 16, cache_root=tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([first, third])  # second was the least recent
    assert f"evicted {second.name}" in caplog.text
    # What the caller is about to use stays, even alone over the cap.
    assert enforce_cache_limit(tmp_path, keep=(third,), limit=1) == [first]
    assert list(tmp_path.iterdir()) == [third]


def test_weights_fingerprint(deeplab, tmp_path):
    from dataclasses import replace

    # Weights not from a file (random initialisation): the parameters in memory are hashed.
    in_memory = LoadedModel(
        deeplab.module, replace(deeplab.spec, weights_sha256="", weights_path="")
    )
    assert weights_fingerprint(in_memory) == weights_fingerprint(in_memory)
    changed = LoadedModel(__import__("copy").deepcopy(deeplab.module), in_memory.spec)
    with torch.no_grad():
        next(changed.module.parameters()).add_(1e-3)
    assert weights_fingerprint(changed) != weights_fingerprint(in_memory)

    named = LoadedModel(deeplab.module, replace(deeplab.spec, weights_sha256="ab" * 32))
    assert weights_fingerprint(named) == "sha256:" + "ab" * 32


@pytest.mark.parametrize("family", list(SMALL))
def test_exported_graphs_are_ready_for_tensorrt(models, family):
    path = prepare_onnx_for_tensorrt(models[family], H, W)
    assert path.is_file()


class _Unpooling(torch.nn.Module):
    """Index-based unpooling exported naively: TensorRT's parser has no MaxUnpool."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2, return_indices=True)
        self.unpool = torch.nn.MaxUnpool2d(2)

    def forward(self, x):
        y, indices = self.pool(self.conv(x))
        return self.unpool(y, indices)


def test_graphs_tensorrt_cannot_parse_are_refused(tmp_path):
    loaded = LoadedModel(
        _Unpooling().eval(), ModelSpec(name="unpooling", family="segnet", num_classes=2)
    )
    with pytest.raises(
        BackendError, match=r"does not support.*MaxPool \(indices output\)|MaxUnpool"
    ):
        prepare_onnx_for_tensorrt(loaded, 16, 16, cache_root=tmp_path)


# --- in the pipeline ----------------------------------------------------------------------------


def test_build_pipeline_with_onnxruntime_on_a_real_frame(frame):
    from seg_ros.pipeline import PipelineConfig, build_pipeline

    torch.manual_seed(0)  # the deeplab fixture's parameters: its exported ONNX is reused
    built = build_pipeline(
        PipelineConfig(
            model="deeplab",
            model_options={"backbone": "mobilenet_v3_large"},
            backend="onnxruntime",
            input_height=H,
            input_width=W,
            threads=1,
        )
    )
    assert built.backend_name == "onnxruntime:CPUExecutionProvider"
    result = built.pipeline.process(frame, want_probabilities=True)
    assert result.label.shape == frame.shape[:2] and result.label.dtype == np.uint8
    assert result.label.max() < built.spec.num_classes
    assert result.probabilities.shape == (*frame.shape[:2], built.spec.num_classes)
    assert 0.0 < result.confidence.min() and result.confidence.max() <= 1.0
    built.pipeline.backend.close()


# --- TensorRT on a real GPU ---------------------------------------------------------------------


@pytest.mark.skipif(
    not (tensorrt_importable() and cuda_available()),
    reason="TensorRT is not installable on this machine (and needs a CUDA GPU)",
)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime(deeplab, frame, tmp_path, precision):
    batch = _batch(deeplab, frame)
    options = {"engine_cache": str(tmp_path)}
    with (
        create_backend(
            "tensorrt", deeplab, height=H, width=W, precision=precision, options=options
        ) as trt,
        create_backend(
            "onnxruntime", deeplab, height=H, width=W, options={"device": "cpu"}
        ) as ort,
    ):
        assert trt.engine_built
        a, b = trt.infer(batch, ("label", "confidence")), ort.infer(batch, ("label", "confidence"))
    assert (a["label"] == b["label"]).mean() > (0.999 if precision == "fp32" else 0.98)
    np.testing.assert_allclose(
        a["confidence"], b["confidence"], atol=1e-3 if precision == "fp32" else 2e-2
    )
    with create_backend(
        "tensorrt", deeplab, height=H, width=W, precision=precision, options=options
    ) as again:
        assert not again.engine_built  # second start: from the cache
