"""Engine cache keys and file format, INT8 calibration data (image folders and real rosbags), TensorRT build flow.

TensorRT itself cannot be installed on the development machines or CI, so
everything around it is tested here without it; the build flow runs against a
recording stand-in for the ``tensorrt`` module (the only mock: the edge that
cannot exist here), and the real build/run tests skip with the reason.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_ros.backends.base import BackendError, BackendOptions
from seg_ros.backends.calibration import CalibrationSource, evenly_spaced
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


def _key(**changes) -> dict:
    args = dict(
        precision="fp16",
        calibration="",
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        dla_core=-1,
    )
    network = {
        "model": {"weights": "sha256:aa", "family": "deeplab"},
        "height": 64,
        "width": 96,
        "opset": 17,
    }
    network.update(changes.pop("network", {}))
    args.update(changes)
    return engine_key(network, **args)


IO = engine_io(11, 64, 96)


# --- keys ---------------------------------------------------------------------------------------


def test_engine_io_is_the_export_heads_io():
    assert IO == {
        "image": {"shape": [1, 3, 64, 96], "dtype": "float32"},
        "label": {"shape": [1, 64, 96], "dtype": "int32"},
        "confidence": {"shape": [1, 64, 96], "dtype": "float32"},
        "probabilities": {"shape": [1, 11, 64, 96], "dtype": "float32"},
    }


@pytest.mark.parametrize(
    "change",
    [
        {"network": {"model": {"weights": "sha256:bb", "family": "deeplab"}}},
        {"network": {"height": 128}},
        {"precision": "fp32"},
        {"tensorrt_version": "10.7.0"},
        {"gpu_name": "NVIDIA GeForce RTX 4090"},
        {"compute_capability": "8.9"},
        {"dla_core": 0},
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
    with pytest.raises(EngineFileError, match="gpu: Orin -> Thor"):
        read_engine(path, _key(gpu_name="Thor"), IO)
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
        cache.engine_path("deeplab v3+/x", 360, 480, p, d).name
        for p in ("fp32", "fp16", "int8")
        for d in (-1, 0, 1)
    }
    assert len(names) == 9 and all("/" not in n and " " not in n for n in names)
    assert cache.timing_cache_path("10.3.0", "Orin", "8.7") != cache.timing_cache_path(
        "10.3.0", "Orin", "8.9"
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


# --- the TensorRT build flow, against a recording stand-in for the tensorrt module ---------------


class FakeTensorRT:
    """The part of TensorRT 10's Python API seg_ros uses; records the calls (TensorRT cannot exist here)."""

    __version__ = "10.3.0"

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class BuilderFlag:
        FP16, INT8, GPU_FALLBACK = "FP16", "INT8", "GPU_FALLBACK"

    class DeviceType:
        GPU, DLA = "GPU", "DLA"

    def __init__(self, result: bytes | None = b"serialized plan", parse_ok: bool = True):
        self.result, self.parse_ok = result, parse_ok
        self.builds = []
        fake = self

        class TimingCache:
            def __init__(self, blob):
                self.blob = bytes(blob)

            def serialize(self):
                return self.blob + b"+new timings"

        class Config:
            def __init__(self):
                self.flags, self.pools, self.timing_cache = set(), {}, None
                self.int8_calibrator = self.progress_monitor = None
                self.default_device_type, self.DLA_core = "GPU", -1

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

            def set_flag(self, flag):
                self.flags.add(flag)

            def create_timing_cache(self, blob):
                return TimingCache(blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.timing_cache = cache
                return True

            def get_timing_cache(self):
                return self.timing_cache

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                assert Path(path).is_file()
                return fake.parse_ok

            def get_error(self, index):
                return "In node 3 (Foo): UNSUPPORTED_NODE"

        class Builder:
            num_DLA_cores = 2

            def __init__(self, logger):
                assert isinstance(logger, fake.ILogger)

            def create_network(self, flags):
                return object()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                fake.builds.append(config)
                monitor = config.progress_monitor
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic timing", "Building engine", 3)
                for step in range(3):
                    assert monitor.step_complete("Tactic timing", step) is True
                monitor.phase_finish("Tactic timing")
                monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
                return fake.result

        self.OnnxParser, self.Builder = OnnxParser, Builder


def _build(trt, tmp_path, **changes):
    from seg_ros.backends.tensorrt_backend import build_serialized_engine

    onnx_path = tmp_path / "net.onnx"
    onnx_path.write_bytes(b"onnx")
    args = dict(
        precision="fp16",
        workspace_mb=512,
        dla_core=-1,
        calibrator=None,
        timing_cache=tmp_path / "timing.cache",
    )
    args.update(changes)
    return build_serialized_engine(trt, onnx_path, **args)


def test_build_settings_reach_the_builder(tmp_path):
    trt = FakeTensorRT()
    assert _build(trt, tmp_path) == b"serialized plan"
    config = trt.builds[0]
    assert config.flags == {"FP16"} and config.pools == {"WORKSPACE": 512 << 20}
    assert config.progress_monitor._bars == {}  # every progress bar was closed
    assert (tmp_path / "timing.cache").read_bytes() == b"+new timings"
    _build(trt, tmp_path, precision="fp32", workspace_mb=0)
    assert trt.builds[1].flags == set() and trt.builds[1].pools == {}
    assert (
        trt.builds[1].timing_cache.blob == b"+new timings"
    )  # the saved timings are used next time


def test_int8_and_dla_settings(tmp_path):
    trt = FakeTensorRT()
    calibrator = object()
    _build(trt, tmp_path, precision="int8", calibrator=calibrator, dla_core=1)
    config = trt.builds[0]
    assert config.flags == {"FP16", "INT8", "GPU_FALLBACK"}
    assert config.int8_calibrator is calibrator
    assert (config.default_device_type, config.DLA_core) == ("DLA", 1)
    with pytest.raises(BackendError, match="DLA core 2 requested but this device has 2"):
        _build(trt, tmp_path, dla_core=2)


def test_parse_and_build_failures_are_reported(tmp_path):
    with pytest.raises(BackendError, match="could not parse .*UNSUPPORTED_NODE"):
        _build(FakeTensorRT(parse_ok=False), tmp_path)
    with pytest.raises(BackendError, match="failed to build an engine"):
        _build(FakeTensorRT(result=None), tmp_path)
    assert not (tmp_path / "timing.cache").exists()


class _TinyNet:
    """A one-layer network: the engine flow below needs a real export, not a big one."""

    @staticmethod
    def loaded():
        import torch

        from seg_ros.models import LoadedModel, ModelSpec

        torch.manual_seed(0)
        return LoadedModel(
            torch.nn.Conv2d(3, 4, 3, padding=1).eval(),
            ModelSpec(name="tiny", family="deeplab", num_classes=4),
        )


def test_prepare_engine_builds_caches_and_rebuilds_for_a_new_tensorrt(
    tmp_path, monkeypatch, caplog
):
    import seg_ros.backends.tensorrt_backend as module

    trt = FakeTensorRT()
    monkeypatch.setattr(module, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(module, "gpu_identity", lambda: ("Orin", "8.7"))
    loaded = _TinyNet.loaded()
    options = BackendOptions(engine_cache=str(tmp_path))
    first = module.prepare_engine(loaded, height=16, width=24, precision="fp16", options=options)
    assert first.built and first.payload == b"serialized plan" and len(trt.builds) == 1
    assert first.path.parent == tmp_path and first.key["gpu"] == "Orin"
    assert read_engine(first.path, first.key, engine_io(4, 16, 24)) == b"serialized plan"

    again = module.prepare_engine(loaded, height=16, width=24, precision="fp16", options=options)
    assert not again.built and len(trt.builds) == 1  # from the cache, no build

    trt.__version__ = "10.7.0"
    caplog.set_level(logging.WARNING)
    upgraded = module.prepare_engine(
        loaded, height=16, width=24, precision="fp16", options=options
    )
    assert upgraded.built and len(trt.builds) == 2 and upgraded.path == first.path
    assert "tensorrt: 10.3.0 -> 10.7.0" in caplog.text


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

    assert main(["build-engine", "--model", "deeplab", "--precision", "int8"]) == 2
    assert "INT8 calibration: INT8 needs calibration data" in caplog.text
    assert "ONNX graph" not in capsys.readouterr().out
