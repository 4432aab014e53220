"""Image sequences for `seg_ros segment` and `seg_ros demo`: one image, a folder, a video or a bag.

``open_image_source(path)`` checks the input up front (so a typo fails
before a model is loaded) and returns an ``ImageSource``: iterate it for
``SourceFrame``s in order, RGB uint8. Bags (rosbag2 sqlite3/mcap folders,
and ROS 1 ``.bag`` files) are read with ``rosbags``, without ROS; their
``sensor_msgs/Image`` and ``CompressedImage`` messages go through
``image_codec`` like the node's input does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_ros.bags import decode_image_message, image_connections, image_topics, open_bag
from seg_ros.image_codec import ImageDecodeError

LOG = logging.getLogger(__name__)

# Every image file suffix seg_ros reads (OpenCV decodes them all): folders, datasets, calibration.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class SourceFrame:
    name: str  # file stem, "frame_000042" (video) or "<sec>_<nanosec>" header stamp (bag)
    image: np.ndarray  # RGB uint8 H×W×3 (H×W uint8 for grey bag images)


@dataclass
class ImageSource:
    """An ordered, re-iterable image sequence; ``count``: length after ``limit`` (0: unknown)."""

    kind: str  # image | folder | video | rosbag
    path: Path
    count: int
    limit: int = 0  # 0 = every frame
    topic: str = ""  # the image topic (bags only)
    files: tuple[Path, ...] = ()  # the images (image/folder only)

    def describe(self) -> str:
        what = {"image": "image", "folder": "folder", "video": "video", "rosbag": "bag"}[self.kind]
        topic = f" topic {self.topic}" if self.topic else ""
        size = f" ({self.count} frames)" if self.count else ""
        return f"{what} {self.path}{topic}{size}"

    def __iter__(self) -> Iterator[SourceFrame]:
        frames = {
            "image": self._files,
            "folder": self._files,
            "video": self._video,
            "rosbag": self._bag,
        }[self.kind]()
        for index, frame in enumerate(frames):
            if self.limit and index >= self.limit:
                break
            yield frame

    def _files(self) -> Iterator[SourceFrame]:
        for path in self.files:
            yield SourceFrame(path.stem, read_image(path))

    def _video(self) -> Iterator[SourceFrame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield SourceFrame(f"frame_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            capture.release()

    def _bag(self) -> Iterator[SourceFrame]:
        with closing(open_bag(self.path)) as reader:
            connections = image_connections(reader, self.topic, self.path)
            for connection, _, raw in reader.messages(connections=connections):
                msg = reader.deserialize(raw, connection.msgtype)
                stamp = msg.header.stamp
                name = f"{int(stamp.sec):010d}_{int(stamp.nanosec):09d}"
                try:
                    image = decode_image_message(msg, connection.msgtype)
                except ImageDecodeError as exc:
                    LOG.warning("%s: skipping the image stamped %s: %s", self.topic, name, exc)
                    continue
                yield SourceFrame(name, image)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 H×W×3 (grey and 16-bit files as OpenCV's IMREAD_COLOR)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}: not an image file OpenCV can decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or path.suffix == ".bag"


def _bag_topic(path: Path, topic: str) -> tuple[str, int]:
    """Return the image topic to read (the requested one, or the only one) and its count."""
    with closing(open_bag(path)) as reader:
        images = image_topics(reader)
    if topic:
        if topic not in images:
            raise ValueError(
                f"bag {path} has no image topic {topic!r}; "
                f"image topics: {sorted(images) or 'none'}"
            )
        return topic, images[topic]
    if len(images) != 1:
        problem = (
            "no sensor_msgs/Image or CompressedImage topic"
            if not images
            else f"several image topics {sorted(images)}: choose one with --topic"
        )
        raise ValueError(f"bag {path} has {problem}")
    return next(iter(images.items()))


def open_image_source(path: str | Path, *, topic: str = "", limit: int = 0) -> ImageSource:
    """Check ``path`` and describe how to read it; FileNotFoundError/ValueError with the reason."""
    path = Path(path).expanduser()
    if limit < 0:
        raise ValueError(f"frame limit must be >= 0, got {limit}")
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix in (".mcap", ".db3") and path.is_file():
        if not (path.parent / "metadata.yaml").is_file():
            raise ValueError(
                f"{path} is one file of a rosbag2 without its metadata.yaml: pass the bag folder"
            )
        path = path.parent  # one file of a bag: read the whole bag
    if topic and not _is_bag(path):
        raise ValueError(
            f"--topic {topic} only applies to bags, but {path} is not a rosbag2 folder "
            "or .bag file"
        )
    if _is_bag(path):
        topic, count = _bag_topic(path, topic)
        kind, files = "rosbag", ()
    elif path.is_dir():
        files = tuple(
            sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        )
        if not files:
            raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        kind, count = "folder", len(files)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        kind, files, count = "image", (path,), 1
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise ValueError(
                    f"cannot open video {path}: OpenCV has no decoder for it or the file is broken"
                )
            count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        finally:
            capture.release()
        kind, files = "video", ()
    else:
        raise ValueError(
            f"cannot tell what {path} is: expected an image ({', '.join(IMAGE_SUFFIXES)}), "
            "a folder of images, "
            f"a video ({', '.join(VIDEO_SUFFIXES)}), a rosbag2 folder or a ROS 1 .bag file"
        )
    if limit:
        count = min(count, limit) if count else 0
    return ImageSource(kind, path, count, limit, topic, files)
