"""image_sources: real image files, a real video written by OpenCV and real rosbag2 files.

The rosbag2 files are written by rosbags.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_ros.image_codec import encode_fields
from seg_ros.image_sources import open_image_source

RNG = np.random.default_rng(3)


def _images(n, height=24, width=32):
    return [RNG.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def write_bag(path, frames, *, topic="/camera/image_raw", compressed_topic="", storage="sqlite3"):
    """Write a rosbag2 with ``frames`` (RGB) as bgr8 Images on ``topic``.

    With ``compressed_topic``, the frames also go there as PNGs.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    Image, CompressedImage = (
        store.types["sensor_msgs/msg/Image"],
        store.types["sensor_msgs/msg/CompressedImage"],
    )
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        raw = writer.add_connection(topic, Image.__msgtype__, typestore=store)
        packed = (
            writer.add_connection(compressed_topic, CompressedImage.__msgtype__, typestore=store)
            if compressed_topic
            else None
        )
        for i, rgb in enumerate(frames):
            header = Header(stamp=Time(sec=100 + i, nanosec=5), frame_id="camera")
            msg = Image(
                header=header, **encode_fields(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
            )
            writer.write(raw, (100 + i) * 10**9, store.serialize_cdr(msg, Image.__msgtype__))
            if packed:
                png = cv2.imencode(".png", rgb[..., ::-1])[1].reshape(-1)
                cmsg = CompressedImage(header=header, format="png", data=png)
                writer.write(
                    packed,
                    (100 + i) * 10**9,
                    store.serialize_cdr(cmsg, CompressedImage.__msgtype__),
                )
    return path


def test_folder_in_name_order_and_limit(tmp_path):
    frames = _images(3)
    for name, rgb in zip(("b", "a", "c"), frames):
        cv2.imwrite(str(tmp_path / f"{name}.png"), rgb[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_image_source(tmp_path)
    assert source.kind == "folder" and source.count == 3
    got = list(source)
    assert [f.name for f in got] == ["a", "b", "c"]
    np.testing.assert_array_equal(got[0].image, frames[1])
    assert [f.name for f in open_image_source(tmp_path, limit=2)] == ["a", "b"]
    assert len(list(source)) == 3  # re-iterable


def test_single_image(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    rgb = np.dstack([xx * 7, yy * 9, 250 - xx * 5]).astype(np.uint8)  # smooth: JPEG keeps it close
    cv2.imwrite(str(tmp_path / "one.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    frames = list(open_image_source(tmp_path / "one.jpg"))
    assert len(frames) == 1 and frames[0].name == "one"
    assert np.abs(frames[0].image.astype(int) - rgb).mean() < 4


def test_video(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 20)]
    for rgb in colours:
        writer.write(np.full((24, 32, 3), rgb[::-1], np.uint8))
    writer.release()
    source = open_image_source(path, limit=3)
    assert source.kind == "video"
    frames = list(source)
    assert [f.name for f in frames] == ["frame_000000", "frame_000001", "frame_000002"]
    for frame, rgb in zip(frames, colours):
        assert frame.image.shape == (24, 32, 3)
        assert (
            np.abs(frame.image.reshape(-1, 3).mean(axis=0) - rgb).max() < 12
        )  # RGB order, not BGR


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_raw_and_compressed_topics(tmp_path, storage):
    frames = _images(3)
    bag = write_bag(
        tmp_path / "bag", frames, compressed_topic="/camera/image_raw/compressed", storage=storage
    )
    with pytest.raises(ValueError, match="several image topics"):
        open_image_source(bag)
    for topic in ("/camera/image_raw", "/camera/image_raw/compressed"):
        source = open_image_source(bag, topic=topic)
        assert source.kind == "rosbag" and source.count == 3
        got = list(source)
        assert [f.name for f in got] == [f"{100 + i:010d}_000000005" for i in range(3)]
        for frame, rgb in zip(got, frames):
            np.testing.assert_array_equal(frame.image, rgb)
    with pytest.raises(ValueError, match=r"no image topic '/nope'.*'/camera/image_raw'"):
        open_image_source(bag, topic="/nope")
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    assert open_image_source(storage_file, topic="/camera/image_raw").path == bag
    (bag / "metadata.yaml").unlink()
    with pytest.raises(ValueError, match="without its metadata.yaml"):
        open_image_source(storage_file)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_image_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no images"):
        open_image_source(tmp_path)
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="cannot tell what"):
        open_image_source(tmp_path / "data.csv")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        list(open_image_source(tmp_path / "broken.png"))
    with pytest.raises(ValueError, match="only applies to bags"):
        open_image_source(tmp_path / "broken.png", topic="/camera")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="cannot open video"):
        open_image_source(tmp_path / "clip.mp4")
