"""Frames with ground truth for the offline evaluator: from a rosbag2 or from two folders.

Bags may be sqlite3 or mcap.

A source yields ``Frame`` objects in reading order. A frame that can not be
scored still comes out, with ``skip_reason`` (a short key counted in the
report) and ``problem`` (the sentence logged), and with its image when the
image itself was fine, so ``--output-bag`` and ``--save-predictions`` still
cover it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_ros.bags import COMPRESSED_TYPE, IMAGE_TYPE, IMAGE_TYPES, open_bag
from seg_ros.image_codec import ImageDecodeError, decode_compressed, decode_image, message_to_array
from seg_ros.image_sources import IMAGE_SUFFIXES

LOG = logging.getLogger(__name__)


@dataclass
class Frame:
    key: str  # "<sec:010d>_<nanosec:09d>" (header stamp) for bags, the file stem for folders
    image: np.ndarray | None = None  # RGB uint8 H×W×3 (or grey H×W)
    label: np.ndarray | None = None  # ground truth H×W class indices
    skip_reason: str | None = None  # e.g. no_ground_truth, size_mismatch, undecodable_image
    problem: str = ""  # the human-readable reason when skipped
    header: object | None = None  # the image message's header (bags only)
    log_time: int | None = None  # the image's bag timestamp in ns (bags only)


def stamp_key(sec: int, nanosec: int) -> str:
    return f"{int(sec):010d}_{int(nanosec):09d}"


def _label_from_array(pixels: np.ndarray, what: str) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3:
        if (
            pixels.shape[2] >= 3
            and np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
            and np.array_equal(pixels[:, :, 0], pixels[:, :, 2])
        ):
            return np.ascontiguousarray(pixels[:, :, 0])  # grey stored as colour
        raise ValueError(
            f"{what} is a colour image; ground truth must hold one class index per pixel "
            "(mono8/mono16)"
        )
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{what} has {pixels.dtype} pixels; ground truth must be mono8 or mono16 class indices"
        )
    return pixels


def decode_label_message(msg, compressed: bool) -> np.ndarray:
    """Decode a ground-truth Image (mono8/16) or png CompressedImage to H×W class indices."""
    if compressed:
        data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
        pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if pixels is None:
            raise ImageDecodeError(
                f"cannot decode compressed label image ({msg.format or 'unknown format'})"
            )
        return _label_from_array(pixels, "compressed label image")
    return _label_from_array(message_to_array(msg), f"{msg.encoding} label image")


def read_label_file(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"cannot read label file {path}")
    return _label_from_array(pixels, f"label file {path.name}")


class FolderSource:
    """Images in one folder, ground truth with the same file stem in another (val/ + valannot/)."""

    def __init__(self, images: str | Path, labels: str | Path):
        self.images_dir, self.labels_dir = Path(images), Path(labels)
        for what, folder in (("images", self.images_dir), ("labels", self.labels_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} folder {folder} does not exist")
        self.paths = sorted(
            p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.images_dir}")
        self._labels = {}
        for p in sorted(self.labels_dir.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                # Prefer lossless PNG when a stem has several files.
                if p.stem not in self._labels or p.suffix.lower() == ".png":
                    self._labels[p.stem] = p

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            frame = Frame(key=path.stem)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                frame.skip_reason, frame.problem = (
                    "undecodable_image",
                    f"cannot read image file {path}",
                )
                yield frame
                continue
            frame.image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            label_path = self._labels.get(path.stem)
            if label_path is None:
                frame.skip_reason = "no_ground_truth"
                frame.problem = f"no label file named {path.stem}.* in {self.labels_dir}"
            else:
                try:
                    frame.label = read_label_file(label_path)
                except ValueError as exc:
                    frame.skip_reason, frame.problem = "undecodable_label", str(exc)
            yield frame


class BagSource:
    """Image and ground-truth topics of a rosbag2 (sqlite3 or mcap), matched by exact header stamp.

    Messages are read in bag order; an image waits for its label (and the
    other way round) in a buffer of ``max_pending`` entries per topic, so
    memory stays bounded on long bags: entries pushed out, and those left at
    the end, are reported as skipped. ``image_topic`` falls back to
    ``<topic>/compressed`` (image_transport's name) when only that exists.
    ``on_message(connection, timestamp, rawdata)``, when given, sees every
    message of every topic in order (for copying the bag).
    """

    def __init__(
        self,
        path: str | Path,
        image_topic: str,
        label_topic: str,
        *,
        max_pending: int = 64,
        on_message: Callable | None = None,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        self.max_pending = int(max_pending)
        self.on_message = on_message
        self.reader = open_bag(self.path)
        topics = self.reader.topics
        image_like = sorted(t for t, info in topics.items() if info.msgtype in IMAGE_TYPES)
        self.image_topic = self._resolve(image_topic, topics, image_like, "image")
        self.label_topic = self._resolve(label_topic, topics, image_like, "ground-truth label")
        if self.image_topic == self.label_topic:
            raise ValueError(f"the image and label topics are the same ({self.image_topic})")
        self.image_connections = [
            c for c in self.reader.connections if c.topic == self.image_topic
        ]
        self.label_connections = [
            c for c in self.reader.connections if c.topic == self.label_topic
        ]
        if sum(c.msgcount for c in self.label_connections) == 0:
            LOG.warning(
                "bag %s has no messages on the label topic %s: no frame can be scored",
                self.path,
                self.label_topic,
            )

    def _resolve(self, topic: str, topics: dict, image_like: list[str], what: str) -> str:
        candidates = (
            [topic]
            if topic.endswith("/compressed")
            else [topic, topic.rstrip("/") + "/compressed"]
        )
        for name in candidates:
            if name in topics:
                if topics[name].msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
                    raise ValueError(
                        f"{what} topic {name} in {self.path} carries {topics[name].msgtype}, "
                        f"expected {IMAGE_TYPE} or {COMPRESSED_TYPE}"
                    )
                return name
        self.close()
        raise ValueError(
            f"bag {self.path} has no {what} topic {topic}; its image topics are: "
            f"{', '.join(image_like) or 'none'}"
        )

    @property
    def ros2(self) -> bool:
        return bool(self.reader.is2)

    def __len__(self) -> int:
        return sum(c.msgcount for c in self.image_connections)

    def close(self) -> None:
        if self.reader.stack:
            self.reader.close()

    def _image_frame(self, msg, log_time: int, compressed: bool) -> Frame:
        stamp = msg.header.stamp
        frame = Frame(
            key=stamp_key(stamp.sec, stamp.nanosec), header=msg.header, log_time=log_time
        )
        try:
            frame.image = decode_compressed(msg) if compressed else decode_image(msg)
        except ImageDecodeError as exc:
            frame.skip_reason, frame.problem = "undecodable_image", f"image {frame.key}: {exc}"
        return frame

    def __iter__(self) -> Iterator[Frame]:
        from rosbags.highlevel import AnyReaderError

        wanted = {c.id: c for c in (*self.image_connections, *self.label_connections)}
        image_ids = {c.id for c in self.image_connections}
        pending_images: dict[tuple[int, int], tuple[object, int, bool]] = {}
        pending_labels: dict[tuple[int, int], tuple[object, bool]] = {}
        connections = () if self.on_message else list(wanted.values())
        try:
            for connection, timestamp, rawdata in self.reader.messages(connections=connections):
                if self.on_message:
                    self.on_message(connection, timestamp, rawdata)
                if connection.id not in wanted:
                    continue
                compressed = connection.msgtype == COMPRESSED_TYPE
                is_image = connection.id in image_ids
                try:
                    msg = self.reader.deserialize(rawdata, connection.msgtype)
                except AnyReaderError as exc:
                    reason = "undecodable_image" if is_image else "undecodable_label"
                    yield Frame(
                        key=f"t{timestamp}",
                        skip_reason=reason,
                        problem=f"cannot deserialise a message on {connection.topic}: {exc}",
                    )
                    continue
                stamp = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
                if is_image:
                    if stamp in pending_images:
                        old = pending_images.pop(stamp)
                        frame = self._image_frame(old[0], old[1], old[2])
                        yield self._skipped(
                            frame,
                            "duplicate_stamp",
                            f"two images with stamp {frame.key}; scoring the later one",
                        )
                    if stamp in pending_labels:
                        yield self._matched(
                            self._image_frame(msg, timestamp, compressed),
                            *pending_labels.pop(stamp),
                        )
                    else:
                        pending_images[stamp] = (msg, timestamp, compressed)
                else:
                    if stamp in pending_images:
                        yield self._matched(
                            self._image_frame(*pending_images.pop(stamp)), msg, compressed
                        )
                    else:
                        if stamp in pending_labels:
                            yield Frame(
                                key=stamp_key(*stamp),
                                skip_reason="duplicate_stamp",
                                problem=f"two labels with stamp {stamp_key(*stamp)}; using the "
                                "later one",
                            )
                        pending_labels[stamp] = (msg, compressed)
                while len(pending_images) > self.max_pending:
                    yield self._unmatched_image(pending_images, next(iter(pending_images)))
                while len(pending_labels) > self.max_pending:
                    yield self._orphan_label(pending_labels, next(iter(pending_labels)))
            for stamp in list(pending_images):
                yield self._unmatched_image(pending_images, stamp)
            for stamp in list(pending_labels):
                yield self._orphan_label(pending_labels, stamp)
        finally:
            self.close()

    @staticmethod
    def _skipped(frame: Frame, reason: str, problem: str) -> Frame:
        if frame.skip_reason is None:
            frame.skip_reason, frame.problem = reason, problem
        return frame

    def _matched(self, frame: Frame, label_msg, compressed: bool) -> Frame:
        if frame.skip_reason is None:
            try:
                frame.label = decode_label_message(label_msg, compressed)
            except ValueError as exc:  # ImageDecodeError included
                frame.skip_reason, frame.problem = "undecodable_label", f"label {frame.key}: {exc}"
        return frame

    def _unmatched_image(self, pending: dict, stamp) -> Frame:
        frame = self._image_frame(*pending.pop(stamp))
        return self._skipped(
            frame,
            "no_ground_truth",
            f"image {frame.key} has no label on {self.label_topic} with the same stamp",
        )

    def _orphan_label(self, pending: dict, stamp) -> Frame:
        pending.pop(stamp)
        key = stamp_key(*stamp)
        return Frame(
            key=key,
            skip_reason="label_without_image",
            problem=f"label {key} has no image on {self.image_topic} with the same stamp",
        )
