"""Engine cache keys and files, INT8 calibration data (folders and real rosbags), TensorRT flow.

TensorRT itself cannot be installed on the development machines or CI, so
everything around it is tested here without it; the build and run flow runs
against stand-ins for TensorRT 10.x and 11.x (test/tensorrt_standin.py, the
only mock: the edge that cannot exist here), and the real build/run tests
skip with the reason.
"""

from __future__ import annotations

import logging
import struct
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_ros.backends.base import BackendError, BackendOptions
from seg_ros.backends.calibration import CalibrationSource, evenly_spaced
from seg_ros.backends.devices import GpuIdentity
from seg_ros.backends.engine_cache import (
    MAGIC,
    EngineCache,
    EngineFileError,
    engine_io,
    engine_key,
    read_engine,
    read_header,
    write_engine,
)
from seg_ros.pipeline import SegmentationPipeline
from tensorrt_standin import make_tensorrt


GPU = GpuIdentity("Orin", "8.7", 16, 61)  # Jetson AGX Orin 64 GB


def _key(**changes) -> dict:
    args = dict(
        precision="fp16",
        typing="strong",
        calibration="",
        tensorrt_version="10.3.0",
        gpu=GPU,
        dla_core=-1,
        max_batch=1,
    )
    network = {
        "model": {"weights": "sha256:aa", "family": "deeplab"},
        "height": 64,
        "width": 96,
        "opset": 17,
    }
    network.update(changes.pop("network", {}))
    gpu = changes.pop("gpu", {})
    args.update(changes)
    args["gpu"] = replace(GPU, **gpu)
    return engine_key(network, **args)


IO = engine_io(11, 64, 96)


# --- keys ---------------------------------------------------------------------------------------


def test_engine_io_is_the_export_heads_io():
    assert IO == {  # -1: the dynamic batch, as TensorRT reports it
        "image": {"shape": [-1, 3, 64, 96], "dtype": "float32"},
        "label": {"shape": [-1, 64, 96], "dtype": "int32"},
        "confidence": {"shape": [-1, 64, 96], "dtype": "float32"},
        "probabilities": {"shape": [-1, 11, 64, 96], "dtype": "float32"},
    }


@pytest.mark.parametrize(
    "change",
    [
        {"network": {"model": {"weights": "sha256:bb", "family": "deeplab"}}},
        {"network": {"height": 128}},
        {"precision": "fp32"},
        {"typing": "weak"},
        {"tensorrt_version": "10.7.0"},
        {"gpu": {"name": "NVIDIA GeForce RTX 4090"}},
        {"gpu": {"compute_capability": "8.9"}},
        {"gpu": {"multiprocessors": 8, "memory_gib": 15}},  # Orin NX 16 GB: same name and sm
        {"gpu": {"memory_gib": 31}},  # AGX Orin 32 GB has 14 SMs, but memory alone must do
        {"dla_core": 0},
        {"max_batch": 4},  # the optimisation profile's largest batch (the node's cameras)
    ],
)
def test_every_validity_field_changes_the_key(change):
    assert _key() == _key()
    assert _key(**change) != _key()


def test_calibration_counts_only_for_int8():
    assert _key(calibration="abc") == _key(calibration="def")  # fp16: calibration is irrelevant
    assert _key(precision="int8", calibration="abc") != _key(precision="int8", calibration="def")


# --- engine files -------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "m.engine"
    payload = bytes(range(256)) * 40
    write_engine(path, payload, _key(), IO, build_seconds=1.0)
    assert read_engine(path, _key(), IO) == payload
    assert path.read_bytes().startswith(MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine"]  # no temporary files left


def test_stale_engine_names_what_changed(tmp_path):
    path = tmp_path / "m.engine"
    write_engine(path, b"engine", _key(), IO)
    with pytest.raises(EngineFileError, match=r"tensorrt: 10\.3\.0 -> 10\.7\.0"):
        read_engine(path, _key(tensorrt_version="10.7.0"), IO)
    with pytest.raises(EngineFileError, match="gpu.name: Orin -> Thor"):
        read_engine(path, _key(gpu={"name": "Thor"}), IO)
    with pytest.raises(EngineFileError, match="gpu.multiprocessors: 16 -> 8"):
        read_engine(path, _key(gpu={"multiprocessors": 8}), IO)
    with pytest.raises(EngineFileError, match="input/output shapes"):
        read_engine(path, _key(), engine_io(19, 64, 96))


@pytest.mark.parametrize(
    "damage",
    [
        "truncated payload",
        "truncated header",
        "no length",
        "flipped byte",
        "foreign file",
        "garbage header",
        "empty",
    ],
)
def test_damaged_or_foreign_files_are_refused(tmp_path, damage):
    path = tmp_path / "m.engine"
    payload = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    write_engine(path, payload, _key(), IO)
    data = path.read_bytes()
    if damage == "truncated payload":
        data = data[:-100]
    elif damage == "truncated header":
        data = data[: len(MAGIC) + 4 + 10]
    elif damage == "no length":
        data = data[: len(MAGIC) + 2]
    elif damage == "flipped byte":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    elif damage == "foreign file":
        data = payload  # a raw TensorRT plan, e.g. from trtexec, has no header
    elif damage == "garbage header":
        data = MAGIC + struct.pack("<I", 8) + b"{notjson" + payload
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(EngineFileError):
        read_engine(path, _key(), IO)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_engine(tmp_path / "none.engine", _key(), IO)


def test_load_or_build_builds_once_then_reuses_and_rebuilds_when_stale(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    path = cache.engine_path("deeplab_v3_mobilenet", 64, 96, "fp16")
    builds = []

    def build():
        builds.append(1)
        return f"engine #{len(builds)}".encode()

    payload, built = cache.load_or_build(path, _key(), IO, build)
    assert (payload, built, len(builds)) == (b"engine #1", True, 1)
    payload, built = cache.load_or_build(path, _key(), IO, build)
    assert (payload, built, len(builds)) == (b"engine #1", False, 1)
    with caplog.at_level(logging.WARNING):
        payload, built = cache.load_or_build(path, _key(tensorrt_version="10.7.0"), IO, build)
    assert (payload, built, len(builds)) == (b"engine #2", True, 2)
    assert "10.3.0 -> 10.7.0" in caplog.text
    assert read_engine(path, _key(tensorrt_version="10.7.0"), IO) == b"engine #2"
    header, _ = read_header(path)
    assert header["info"]["build_seconds"] >= 0


def test_failed_build_leaves_no_file(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.engine_path("m", 64, 96, "fp32")

    def build():
        raise BackendError("builder ran out of memory")

    with pytest.raises(BackendError, match="out of memory"):
        cache.load_or_build(path, _key(), IO, build)
    assert list(tmp_path.iterdir()) == []


def test_cache_paths(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    names = {
        cache.engine_path("deeplab v3+/x", 360, 480, p, d, max_batch=b).name
        for p in ("fp32", "fp16", "int8")
        for d in (-1, 0, 1)
        for b in (1, 4)
    }
    assert len(names) == 18 and all("/" not in n and " " not in n for n in names)
    assert cache.timing_cache_path("10.3.0", GPU) != cache.timing_cache_path(
        "10.3.0", replace(GPU, multiprocessors=8)
    )
    monkeypatch.setenv("SEG_ROS_CACHE", str(tmp_path / "c"))
    assert EngineCache("").folder == tmp_path / "c" / "engines"


# --- INT8 calibration data ----------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _solid(value: int, height=30, width=40) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = value
    image[..., 1] = 255 - value
    image[..., 2] = 7
    return image


def _red_channel_value(batch: np.ndarray) -> int:
    return int(round((batch[0, 0].mean() * STD[0] + MEAN[0]) * 255))


def test_evenly_spaced():
    assert evenly_spaced(3, 10) == [0, 1, 2]
    assert evenly_spaced(10, 3) == [0, 4, 9] or evenly_spaced(10, 3) == [0, 5, 9]
    assert len(evenly_spaced(1000, 100)) == 100


def test_image_folder_batches_match_the_pipelines_preprocessing(tmp_path):
    for i, value in enumerate([10, 60, 110, 160, 210]):
        cv2.imwrite(
            str(tmp_path / f"frame_{i:02d}.png"), cv2.cvtColor(_solid(value), cv2.COLOR_RGB2BGR)
        )
    (tmp_path / "notes.txt").write_text("not an image")
    source = CalibrationSource(images=str(tmp_path), frames=3)
    source.validate()
    assert source.count() == 3
    batches = list(source.batches(16, 24, MEAN, STD))
    assert [b.shape for b in batches] == [(1, 3, 16, 24)] * 3
    assert all(b.dtype == np.float32 for b in batches)
    assert [_red_channel_value(b) for b in batches] == [10, 110, 210]  # first, middle, last
    reference = SegmentationPipeline(None, num_classes=1, input_size=(16, 24), mean=MEAN, std=STD)
    np.testing.assert_array_equal(batches[0], reference.preprocess(_solid(10))[1])


def test_fingerprint_follows_the_data(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _solid(1))
    source = CalibrationSource(images=str(tmp_path), frames=10)
    first = source.fingerprint()
    assert source.fingerprint() == first
    cv2.imwrite(str(tmp_path / "b.png"), _solid(2))
    assert source.fingerprint() != first
    assert CalibrationSource(images=str(tmp_path), frames=5).fingerprint() != source.fingerprint()


def _write_bag(path: Path, storage: str, compressed: bool, values: list[int]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        camera = writer.add_connection(
            "/camera/image_raw" + ("/compressed" if compressed else ""), msgtype, typestore=store
        )
        other = writer.add_connection("/odom_count", "std_msgs/msg/UInt32", typestore=store)
        for i, value in enumerate(values):
            header = Header(stamp=Time(sec=i, nanosec=0), frame_id="camera")
            rgb = _solid(value)
            if compressed:
                ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                msg = store.types[msgtype](header=header, format="png", data=png.reshape(-1))
            else:
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                msg = store.types[msgtype](
                    header=header,
                    height=30,
                    width=40,
                    encoding="bgr8",
                    is_bigendian=0,
                    step=120,
                    data=bgr.reshape(-1),
                )
            writer.write(camera, i * 10**9, store.serialize_cdr(msg, msgtype))
            writer.write(
                other,
                i * 10**9 + 1,
                store.serialize_cdr(
                    store.types["std_msgs/msg/UInt32"](data=i), "std_msgs/msg/UInt32"
                ),
            )


@pytest.mark.parametrize("storage,compressed", [("sqlite3", False), ("mcap", True)])
def test_rosbag_batches(tmp_path, storage, compressed):
    bag = tmp_path / "drive"
    values = [0, 40, 80, 120, 160, 200, 240]
    _write_bag(bag, storage, compressed, values)
    topic = "/camera/image_raw" + ("/compressed" if compressed else "")
    source = CalibrationSource(bag=str(bag), topic=topic, frames=3)
    source.validate()
    assert source.count() == 3
    batches = list(source.batches(30, 40, MEAN, STD))
    assert [_red_channel_value(b) for b in batches] == [0, 120, 240]
    assert source.fingerprint()["kind"] == "bag"


def test_rosbag_errors_name_the_problem(tmp_path):
    bag = tmp_path / "drive"
    _write_bag(bag, "sqlite3", False, [1, 2])
    with pytest.raises(ValueError, match=r"'/nope' is not in bag .*camera/image_raw"):
        CalibrationSource(bag=str(bag), topic="/nope").count()
    with pytest.raises(ValueError, match="UInt32, not an image type"):
        CalibrationSource(bag=str(bag), topic="/odom_count").count()
    with pytest.raises(ValueError, match="needs calibration_topic"):
        CalibrationSource(bag=str(bag)).validate()


def test_calibration_source_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        CalibrationSource().validate()
    with pytest.raises(ValueError, match="exactly one"):
        CalibrationSource(images=str(tmp_path), bag=str(tmp_path), topic="/t").validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CalibrationSource(images=str(tmp_path / "missing")).validate()
    with pytest.raises(ValueError, match="no images"):
        CalibrationSource(images=str(tmp_path)).validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CalibrationSource(bag=str(tmp_path / "missing.mcap"), topic="/t").validate()


# --- the TensorRT build and run flow, against stand-ins for TensorRT 10.x and 11.x ---------------

VERSIONS = ["10.3.0", "10.12.0", "11.1.0"]
H, W = 16, 24


class _TinyNet:
    """A small network: the engine flow below needs a real export, not a big one.

    A stem at full and half size (the TensorRT INT8 profile keeps it fp32), one feature layer
    at 1/4 size (quantised in the INT8 graph, fp16 in the fp16 graph), a classifier and the
    upsampling back to input size.
    """

    @staticmethod
    def loaded(num_classes: int = 4):
        import torch

        from seg_ros.models import LoadedModel, ModelSpec

        torch.manual_seed(0)
        return LoadedModel(
            torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 4, 1),  # 4 classes whatever the spec says (I/O checks)
                torch.nn.Upsample(scale_factor=4, mode="bilinear"),
            ).eval(),
            ModelSpec(name="tiny", family="deeplab", num_classes=num_classes),
        )


@pytest.fixture
def install(monkeypatch):
    """Install a stand-in ``tensorrt`` of a given version; engine buffers live on the CPU."""
    import seg_ros.backends.tensorrt_backend as backend

    def install(version: str, **kwargs):
        trt = make_tensorrt(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(backend, "gpu_identity", lambda: GPU)
        monkeypatch.setattr(backend, "BUFFER_DEVICE", "cpu")
        return trt

    return install


def _frames(folder: Path, count: int = 3) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), _solid(20 + i * 70))
    return folder


def _plan_graph(payload: bytes):
    """Return the ONNX graph a stand-in plan was built from."""
    import onnx

    start = payload.index(b"\n") + 1
    length = int.from_bytes(payload[start : start + 4], "little")
    return onnx.load_from_string(payload[start + 4 + length :])


def _elem_types(model) -> set[int]:
    return {init.data_type for init in model.graph.initializer}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_strongly_typed_build_on_each_version(install, tmp_path, version, precision):
    from onnx import TensorProto

    from seg_ros.backends.tensorrt_backend import prepare_engine

    trt = install(version)
    options = BackendOptions(engine_cache=str(tmp_path), workspace_mb=256)
    art = prepare_engine(
        _TinyNet.loaded(), height=H, width=W, precision=precision, options=options
    )
    network, config = trt.record.builds[-1]
    assert network.strongly_typed and network.flags == 1 << 1  # STRONGLY_TYPED asked for
    assert config.flags == set() and config.pools == {"WORKSPACE": 256 << 20}
    assert art.built and art.key["typing"] == "strong" and art.key["tensorrt"] == version
    graph_types = _elem_types(_plan_graph(art.payload))
    assert (TensorProto.FLOAT16 in graph_types) == (precision == "fp16")
    assert config.progress_monitor._bars == {}  # every progress bar was closed
    again = prepare_engine(
        _TinyNet.loaded(), height=H, width=W, precision=precision, options=options
    )
    assert not again.built and len(trt.record.builds) == 1


def test_tensorrt_11_without_the_flag_builds_strongly_typed_anyway(install, tmp_path):
    from seg_ros.backends.tensorrt_backend import prepare_engine

    trt = install("11.1.0", strongly_typed_flag=False)
    options = BackendOptions(engine_cache=str(tmp_path))
    prepare_engine(_TinyNet.loaded(), height=H, width=W, precision="fp16", options=options)
    network, config = trt.record.builds[-1]
    assert network.flags == 0 and network.strongly_typed and config.flags == set()


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_int8_is_the_qdq_graph_built_strongly_typed(install, tmp_path, version):
    from seg_ros.backends.tensorrt_backend import prepare_engine

    trt = install(version)
    options = BackendOptions(
        engine_cache=str(tmp_path / "engines"),
        calibration_images=str(_frames(tmp_path / "calib")),
    )
    art = prepare_engine(_TinyNet.loaded(), height=H, width=W, precision="int8", options=options)
    network, config = trt.record.builds[-1]
    ops = {node.op_type for node in _plan_graph(art.payload).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert network.strongly_typed and config.flags == set() and trt.record.calibration == []
    assert art.key["calibration"]  # the data's fingerprint keys the engine


def test_implicit_precision_only_where_tensorrt_still_has_it(install, tmp_path, caplog):
    from seg_ros.backends.tensorrt_backend import prepare_engine

    trt = install("10.12.0")
    options = BackendOptions(engine_cache=str(tmp_path), implicit_precision=True)
    caplog.set_level(logging.WARNING)
    art = prepare_engine(_TinyNet.loaded(), height=H, width=W, precision="fp16", options=options)
    network, config = trt.record.builds[-1]
    assert not network.strongly_typed and network.flags == 0 and config.flags == {"FP16"}
    assert art.key["typing"] == "weak" and "removed in 11" in caplog.text
    assert 10 not in _elem_types(_plan_graph(art.payload))  # no fp16: the flags do it here

    install("11.1.0")
    with pytest.raises(BackendError, match="11.1.0 has no implicit precision"):
        prepare_engine(_TinyNet.loaded(), height=H, width=W, precision="fp16", options=options)


def test_implicit_int8_runs_the_calibrator_and_caches_its_table(install, tmp_path):
    from seg_ros.backends.tensorrt_backend import prepare_engine

    trt = install("10.3.0")
    engines = tmp_path / "engines"
    options = BackendOptions(
        engine_cache=str(engines),
        calibration_images=str(_frames(tmp_path / "calib")),
        implicit_precision=True,
    )
    loaded = _TinyNet.loaded()
    art = prepare_engine(loaded, height=H, width=W, precision="int8", options=options)
    _, config = trt.record.builds[-1]
    assert config.flags == {"FP16", "INT8"} and config.int8_calibrator is not None
    # the calibrator feeds one frame at a time: a batch-1 calibration profile beside the profile
    assert config.calibration_profile.get_shape("image") == [(1, 3, H, W)] * 3
    assert trt.record.calibration == ["batch"] * 3 and art.key["typing"] == "weak"
    assert len(list(engines.glob("*.calib"))) == 1
    prepare_engine(loaded, height=H, width=W, precision="int8", options=options, force=True)
    assert trt.record.calibration[-1] == "cache"  # the second build reads the calibration cache


@pytest.mark.parametrize("implicit", [True, False])
def test_calibration_data_errors_fail_the_build_and_cache_nothing(install, tmp_path, implicit):
    from seg_ros.backends.tensorrt_backend import prepare_engine

    install("10.3.0")
    frames = _frames(tmp_path / "calib")
    (frames / "9.png").write_bytes(b"not a png")  # the last frame drawn cannot be read
    engines = tmp_path / "engines"
    options = BackendOptions(
        engine_cache=str(engines), calibration_images=str(frames), implicit_precision=implicit
    )
    with pytest.raises(BackendError, match="cannot read calibration image"):
        prepare_engine(_TinyNet.loaded(), height=H, width=W, precision="int8", options=options)
    left = sorted(p.suffix for p in engines.glob("*")) if engines.exists() else []
    assert ".engine" not in left and ".calib" not in left


@pytest.mark.parametrize("answer", ["raise", "none"])
def test_a_corrupt_timing_cache_falls_back_to_a_fresh_one(install, tmp_path, answer, caplog):
    from seg_ros.backends.engine_cache import EngineCache
    from seg_ros.backends.tensorrt_backend import prepare_engine
    from tensorrt_standin import TIMING_MAGIC

    install("10.3.0", timing_error=answer)
    timing = EngineCache(tmp_path).timing_cache_path("10.3.0", GPU)
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_bytes(b"\x00garbage from a crashed write")
    caplog.set_level(logging.WARNING)
    art = prepare_engine(
        _TinyNet.loaded(),
        height=H,
        width=W,
        precision="fp32",
        options=BackendOptions(engine_cache=str(tmp_path)),
    )
    assert art.built and timing.read_bytes().startswith(TIMING_MAGIC)
    assert "timing cache" in caplog.text


def test_parse_and_build_failures_are_reported(install, tmp_path):
    from seg_ros.backends.tensorrt_backend import build_serialized_engine

    trt = install("10.3.0")
    onnx_path = tmp_path / "net.onnx"
    onnx_path.write_bytes(b"not onnx")
    with pytest.raises(Exception):
        build_serialized_engine(
            trt,
            onnx_path,
            precision="fp32",
            workspace_mb=0,
            dla_core=-1,
            timing_cache=tmp_path / "t.cache",
        )
    trt.Builder.build_serialized_network = lambda self, network, config: None
    from seg_ros.backends.onnx_cache import prepare_onnx_for_tensorrt

    good = prepare_onnx_for_tensorrt(_TinyNet.loaded(), H, W)
    with pytest.raises(BackendError, match="failed to build an engine"):
        build_serialized_engine(
            trt,
            good,
            precision="fp32",
            workspace_mb=0,
            dla_core=-1,
            timing_cache=tmp_path / "t.cache",
        )
    with pytest.raises(BackendError, match="DLA core 2 requested but this device has 2"):
        build_serialized_engine(
            trt,
            good,
            precision="fp16",
            workspace_mb=0,
            dla_core=2,
            timing_cache=tmp_path / "t.cache",
        )
    assert not (tmp_path / "t.cache").exists()


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runtime_path_runs_the_engine_on_bound_buffers(install, tmp_path, version, precision):
    from seg_ros.backends import create_backend
    from seg_ros.backends.tensorrt_backend import TensorRTBackend

    trt = install(version)
    loaded = _TinyNet.loaded()
    batch = np.random.default_rng(3).standard_normal((1, 3, H, W), dtype=np.float32)
    options = BackendOptions(engine_cache=str(tmp_path))
    backend = TensorRTBackend(loaded, height=H, width=W, precision=precision, options=options)
    assert backend.engine_built and backend.name == "tensorrt:Orin"
    assert not backend.computes_on_cpu  # the node overlaps publishing with the GPU's work
    context = backend._context
    assert set(context.addresses) == {"image", "label", "confidence", "probabilities"}
    got = backend.infer(batch, ("label", "confidence", "probabilities"))
    assert context.runs == 1
    import torch

    assert backend.tensor_device == torch.device("cpu")  # the pipeline's tensor stages run there
    two = backend.infer_tensor(torch.from_numpy(np.concatenate([batch, batch])), ("label",))
    assert context.runs == 3 and two["label"].shape == (2, H, W)
    assert (two["label"].numpy() == got["label"]).all()
    with create_backend(
        "onnxruntime", loaded, height=H, width=W, options={"device": "cpu"}
    ) as ort:
        want = ort.infer(batch, ("label", "confidence", "probabilities"))
    assert got["label"].dtype == np.int32 and got["label"].shape == (1, H, W)
    tolerance = 1e-5 if precision == "fp32" else 5e-3
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=tolerance)
    assert (got["label"] == want["label"]).mean() > (0.999 if precision == "fp32" else 0.98)
    backend.close()
    again = TensorRTBackend(loaded, height=H, width=W, precision=precision, options=options)
    assert not again.engine_built and len(trt.record.builds) == 1
    # one TensorRT logger for the whole process: builder, parser and both runtimes share it
    assert len({id(logger) for logger in trt.record.loggers}) == 1


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_the_profile_spans_one_to_max_batch_and_a_batch_runs_at_once(install, tmp_path, version):
    import torch

    from seg_ros.backends import create_backend
    from seg_ros.backends.tensorrt_backend import TensorRTBackend

    trt = install(version)
    loaded = _TinyNet.loaded()
    options = BackendOptions(engine_cache=str(tmp_path), max_batch=3)
    backend = TensorRTBackend(loaded, height=H, width=W, precision="fp32", options=options)
    network, config = trt.record.builds[-1]
    assert network.get_input(0).shape == (-1, 3, H, W)  # the export's dynamic batch
    assert [p.get_shape("image") for p in config.profiles] == [
        [(1, 3, H, W), (3, 3, H, W), (3, 3, H, W)]  # min 1, opt and max: the cameras
    ]
    assert backend.max_batch == 3 and backend.engine_path.name.endswith("-b3.engine")
    assert backend._engine.get_tensor_profile_shape("image", 0)[2] == (3, 3, H, W)
    context = backend._context
    batch = np.random.default_rng(5).standard_normal((3, 3, H, W), dtype=np.float32)
    got = backend.infer(batch, ("label", "probabilities"))
    assert context.runs == 1 and context.input_shapes == {"image": (3, 3, H, W)}
    assert got["label"].shape == (3, H, W)
    two = backend.infer(batch[1:], ("label",))  # fewer frames than the profile's largest
    assert context.runs == 2 and context.input_shapes["image"] == (2, 3, H, W)
    assert (two["label"] == got["label"][1:]).all()
    chunks = backend.infer_tensor(torch.from_numpy(np.concatenate([batch, batch[:1]])), ("label",))
    assert context.runs == 4  # 4 frames: a batch of 3, then 1
    assert (chunks["label"].numpy() == np.concatenate([got["label"], got["label"][:1]])).all()
    assert not context.set_input_shape("image", (4, 3, H, W))  # beyond the profile
    with create_backend(
        "onnxruntime", loaded, height=H, width=W, options={"device": "cpu"}
    ) as ort:
        singles = [ort.infer(batch[i : i + 1], ("label", "probabilities")) for i in range(3)]
    assert (got["label"] == np.concatenate([s["label"] for s in singles])).all()
    np.testing.assert_allclose(
        got["probabilities"], np.concatenate([s["probabilities"] for s in singles]), atol=1e-5
    )
    backend.close()
    single = TensorRTBackend(
        loaded,
        height=H,
        width=W,
        precision="fp32",
        options=BackendOptions(engine_cache=str(tmp_path)),
    )
    assert single.engine_built and single.max_batch == 1  # another max_batch: another engine
    assert len(trt.record.builds) == 2


def test_a_dynamic_batch_without_a_profile_does_not_build(install, tmp_path, monkeypatch):
    import seg_ros.backends.tensorrt_backend as backend

    install("10.3.0")
    monkeypatch.setattr(backend, "_add_batch_profile", lambda *args, **kwargs: None)
    with pytest.raises(BackendError, match="failed to build an engine"):
        backend.prepare_engine(
            _TinyNet.loaded(),
            height=H,
            width=W,
            precision="fp32",
            options=BackendOptions(engine_cache=str(tmp_path)),
        )


def test_engine_built_is_true_after_a_rebuild(install, tmp_path, caplog):
    from seg_ros.backends.tensorrt_backend import TensorRTBackend

    trt = install("10.3.0")
    loaded = _TinyNet.loaded()
    options = BackendOptions(engine_cache=str(tmp_path))
    TensorRTBackend(loaded, height=H, width=W, precision="fp16", options=options).close()
    trt.record.refuse_deserialize = 1  # the cached plan no longer deserializes
    caplog.set_level(logging.WARNING)
    rebuilt = TensorRTBackend(loaded, height=H, width=W, precision="fp16", options=options)
    assert "rebuilding it" in caplog.text
    assert rebuilt.engine_built and len(trt.record.builds) == 2


def test_engine_io_is_checked_after_deserialising(install, tmp_path):
    from seg_ros.backends.tensorrt_backend import TensorRTBackend

    install("11.1.0")
    loaded = _TinyNet.loaded(num_classes=5)  # the graph makes 4 classes, the spec says 5
    with pytest.raises(BackendError, match="has I/O .*probabilities"):
        TensorRTBackend(
            loaded,
            height=H,
            width=W,
            precision="fp32",
            options=BackendOptions(engine_cache=str(tmp_path)),
        )


@pytest.mark.parametrize("version", ["9.2.0", "12.0.0"])
def test_unknown_tensorrt_versions_fall_back(install, monkeypatch, tmp_path, version):
    import seg_ros.backends.devices as devices
    from seg_ros.backends import create_backend

    trt = install(version)
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(devices, "tensorrt_importable", lambda: True)
    loaded = _TinyNet.loaded()
    options = {"engine_cache": str(tmp_path), "device": "cpu"}
    with pytest.raises(BackendError, match=f"TensorRT {version} is not supported"):
        create_backend("tensorrt", loaded, height=H, width=W, precision="fp16", options=options)
    with create_backend("auto", loaded, height=H, width=W, precision="fp16", options=options) as b:
        assert b.name == "onnxruntime:CPUExecutionProvider"
        assert f"tensorrt: TensorRT {version} is not supported" in b.reason
    assert trt.record.builds == []


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None,
    reason="checks the failure where TensorRT is missing",
)
def test_build_engine_command_does_everything_but_the_build(tmp_path, capsys, caplog):
    import torch

    from seg_ros.cli import main

    images = tmp_path / "calib"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), _solid(i * 50))
    torch.manual_seed(0)  # test_backends' deeplab: its exported graph is already in the cache
    code = main(
        [
            "build-engine",
            "--model",
            "deeplab",
            "--backbone",
            "mobilenet_v3_large",
            "--height",
            "64",
            "--width",
            "96",
            "--precision",
            "int8",
            "--calibration-images",
            str(images),
            "--engine-cache",
            str(tmp_path / "engines"),
        ]
    )
    out = capsys.readouterr()
    assert code == 2
    assert "every operator supported by TensorRT" in out.out
    assert "INT8 calibration: 3 frames" in out.out
    assert "TensorRT is not installed" in caplog.text
    onnx_file = out.out.split("ONNX graph ")[1].split(":")[0]
    assert Path(onnx_file).is_file()


def test_build_engine_refuses_int8_without_data_before_any_work(capsys, caplog):
    from seg_ros.cli import main

    # DeepLab v3 (not v3+) has no bundled weights, so no shipped calibration table either
    args = ["build-engine", "--model", "deeplab", "--version", "v3", "--precision", "int8"]
    assert main(args) == 2
    assert "INT8 calibration: INT8 needs calibration data" in caplog.text
    assert "ONNX graph" not in capsys.readouterr().out
