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
from seg_ros.backends.engine_cache import (MAGIC, EngineCache, EngineFileError, engine_io, engine_key,
                                           read_engine, read_header, write_engine)
from seg_ros.pipeline import SegmentationPipeline

NO_TENSORRT = "TensorRT is not installable on this machine"


def _key(**changes) -> dict:
    args = dict(precision="fp16", calibration="", tensorrt_version="10.3.0", gpu_name="Orin",
                compute_capability="8.7", dla_core=-1)
    network = {"model": {"weights": "sha256:aa", "family": "deeplab"}, "height": 64, "width": 96, "opset": 17}
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


@pytest.mark.parametrize("change", [
    {"network": {"model": {"weights": "sha256:bb", "family": "deeplab"}}},
    {"network": {"height": 128}},
    {"precision": "fp32"},
    {"tensorrt_version": "10.7.0"},
    {"gpu_name": "NVIDIA GeForce RTX 4090"},
    {"compute_capability": "8.9"},
    {"dla_core": 0},
])
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


@pytest.mark.parametrize("damage", ["truncated payload", "truncated header", "no length", "flipped byte",
                                    "foreign file", "garbage header", "empty"])
def test_damaged_or_foreign_files_are_refused(tmp_path, damage):
    path = tmp_path / "m.engine"
    payload = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    write_engine(path, payload, _key(), IO)
    data = path.read_bytes()
    if damage == "truncated payload":
        data = data[:-100]
    elif damage == "truncated header":
        data = data[:len(MAGIC) + 4 + 10]
    elif damage == "no length":
        data = data[:len(MAGIC) + 2]
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
    names = {cache.engine_path("deeplab v3+/x", 360, 480, p, d).name
             for p in ("fp32", "fp16", "int8") for d in (-1, 0, 1)}
    assert len(names) == 9 and all("/" not in n and " " not in n for n in names)
    assert cache.timing_cache_path("10.3.0", "Orin", "8.7") != cache.timing_cache_path("10.3.0", "Orin", "8.9")
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
        cv2.imwrite(str(tmp_path / f"frame_{i:02d}.png"), cv2.cvtColor(_solid(value), cv2.COLOR_RGB2BGR))
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
        camera = writer.add_connection("/camera/image_raw" + ("/compressed" if compressed else ""), msgtype,
                                       typestore=store)
        other = writer.add_connection("/odom_count", "std_msgs/msg/UInt32", typestore=store)
        for i, value in enumerate(values):
            header = Header(stamp=Time(sec=i, nanosec=0), frame_id="camera")
            rgb = _solid(value)
            if compressed:
                ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                msg = store.types[msgtype](header=header, format="png", data=png.reshape(-1))
            else:
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                msg = store.types[msgtype](header=header, height=30, width=40, encoding="bgr8", is_bigendian=0,
                                           step=120, data=bgr.reshape(-1))
            writer.write(camera, i * 10**9, store.serialize_cdr(msg, msgtype))
            writer.write(other, i * 10**9 + 1, store.serialize_cdr(store.types["std_msgs/msg/UInt32"](data=i),
                                                                   "std_msgs/msg/UInt32"))


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
