"""INT8 calibration data: frames from an image folder or a rosbag, preprocessed as in the pipeline.

INT8 needs representative network inputs (ONNX Runtime's calibrator for the
shared QDQ graph, TensorRT's entropy calibrator on its implicit path); these
come from the user's own camera (a folder of images, or a recorded bag read
with the ``rosbags`` library, no ROS needed), or, with neither given, from the
range table shipped beside the weights (``resolve_calibration``). Frames are
drawn evenly over the whole source so a long drive is not calibrated on its
first seconds only. The fingerprint (file names, sizes and modification times,
topic, frame count) goes into the cache keys: new data means a new calibration.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import closing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_ros.bags import decode_image_message, image_connections, open_bag
from seg_ros.image_sources import IMAGE_SUFFIXES, read_image
from seg_ros.preprocess import Preprocessor

LOG = logging.getLogger(__name__)

TABLE_SUFFIX = ".calibration.json"  # models/<name>.calibration.json beside <name>.safetensors


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` indices spread over range(total) (all of them when total <= count)."""
    if total <= count:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


@dataclass(frozen=True)
class CalibrationSource:
    """Either ``images`` (a folder) or ``bag`` + ``topic``; at most ``frames`` frames are used."""

    images: str = ""
    bag: str = ""
    topic: str = ""
    frames: int = 100

    @classmethod
    def from_options(cls, options) -> CalibrationSource:
        """From BackendOptions; ValueError/FileNotFoundError with the reason when unusable."""
        source = cls(
            options.calibration_images,
            options.calibration_bag,
            options.calibration_topic,
            options.calibration_frames,
        )
        source.validate()
        return source

    def validate(self) -> None:
        if bool(self.images) == bool(self.bag):
            raise ValueError(
                "INT8 needs calibration data: set exactly one of calibration_images (a folder) "
                "or calibration_bag (with calibration_topic)"
            )
        if self.frames <= 0:
            raise ValueError(f"calibration_frames must be positive, got {self.frames}")
        if self.images:
            if not Path(self.images).is_dir():
                raise FileNotFoundError(f"calibration image folder {self.images} does not exist")
            if not self.image_files():
                raise ValueError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {self.images}"
                )
        else:
            if not Path(self.bag).exists():
                raise FileNotFoundError(f"calibration bag {self.bag} does not exist")
            if not self.topic:
                raise ValueError(
                    f"calibration_bag {self.bag} needs calibration_topic (the image topic to read)"
                )

    def describe(self) -> str:
        return f"images in {self.images}" if self.images else f"{self.topic} in bag {self.bag}"

    def image_files(self) -> list[Path]:
        return sorted(
            p
            for p in Path(self.images).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )

    def fingerprint(self) -> dict:
        """Identify the data: names, sizes and times of the files, topic, frame count."""
        hasher = hashlib.sha256()
        if self.images:
            root = Path(self.images)
            files = self.image_files()
        else:
            root = Path(self.bag)
            files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            name = path.relative_to(root) if path != root else path.name
            stat = path.stat()
            hasher.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return {
            "kind": "images" if self.images else "bag",
            "topic": self.topic,
            "frames": self.frames,
            "files": len(files),
            "sha256": hasher.hexdigest(),
        }

    def count(self) -> int:
        """Return how many frames ``images_rgb()`` will yield."""
        if self.images:
            return min(len(self.image_files()), self.frames)
        with closing(open_bag(self.bag)) as reader:
            total = sum(c.msgcount for c in image_connections(reader, self.topic, self.bag))
        return min(total, self.frames)

    def images_rgb(self) -> Iterator[np.ndarray]:
        """Yield the chosen frames as RGB (or mono) uint8 arrays."""
        if self.images:
            files = self.image_files()
            for index in evenly_spaced(len(files), self.frames):
                try:
                    image = read_image(files[index])
                except ValueError as exc:  # fail: never calibrate on part of the data
                    raise ValueError(f"cannot read calibration image {files[index]}") from exc
                yield image
            return
        with closing(open_bag(self.bag)) as reader:
            connections = image_connections(reader, self.topic, self.bag)
            total = sum(c.msgcount for c in connections)
            wanted = set(evenly_spaced(total, self.frames))
            for index, (connection, _, raw) in enumerate(reader.messages(connections=connections)):
                if index in wanted:  # deserialise only the frames that are used
                    msg = reader.deserialize(raw, connection.msgtype)
                    yield decode_image_message(msg, connection.msgtype)

    def batches(self, height: int, width: int, mean, std) -> Iterator[np.ndarray]:
        """1×3×height×width float32 network inputs, preprocessed exactly as the pipeline does."""
        preprocess = Preprocessor(height, width, mean, std)
        for image in self.images_rgb():
            yield preprocess(image)[1]


def table_path(spec) -> Path | None:
    """Where the calibration table shipped with ``spec``'s weights lives (next to the weights)."""
    if not spec.weights_path:
        return None
    weights = Path(spec.weights_path)
    return weights.with_name(weights.name.split(".")[0] + TABLE_SUFFIX)


def resolve_calibration(options, spec):
    """Pick the INT8 calibration: the user's frames if given, else the weights' shipped table.

    Returns a CalibrationSource or a seg_ros.backends.quantize.RangeTable;
    ValueError/FileNotFoundError with a one-line reason when there is neither.
    """
    if options.calibration_images or options.calibration_bag:
        return CalibrationSource.from_options(options)
    from seg_ros.backends.quantize import RangeTable

    path = table_path(spec)
    if path is not None and path.is_file():
        return RangeTable.load(path)
    weights = spec.weights_path or "random-initialised weights"
    raise ValueError(
        f"INT8 needs calibration data: {weights} ships no calibration table ({TABLE_SUFFIX}); "
        "set the node parameter calibration.images (a folder; --calibration-images) or "
        "calibration.bag + calibration.topic"
    )
