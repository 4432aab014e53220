"""Open rosbag2 (sqlite3, mcap) and ROS 1 bags without ROS: the one reader behind every bag input.

Calibration, `seg_ros segment`/`demo` and the offline evaluator all open bags
here, so they accept the same bags (message definitions taken from the bag,
else from Humble's, which every ROS 2 release shares for sensor_msgs) and
fail with the same one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)


def open_bag(path: str | Path):
    """Return an opened rosbags AnyReader for ``path`` (close it, or use it as a context manager).

    ValueError with the reason when the bag cannot be read.
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    reader = AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except Exception as exc:  # rosbags raises its own error types for broken bags
        raise ValueError(f"cannot read bag {path}: {exc}") from exc
    return reader


def image_topics(reader) -> dict[str, int]:
    """Map each Image / CompressedImage topic of an open bag to its message count."""
    topics: dict[str, int] = {}
    for connection in reader.connections:
        if connection.msgtype in IMAGE_TYPES:
            topics[connection.topic] = topics.get(connection.topic, 0) + connection.msgcount
    return topics


def image_connections(reader, topic: str, path: str | Path) -> list:
    """Return the connections of image ``topic``; ValueError naming the bag's topics otherwise."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        found = sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)
        raise ValueError(f"topic {topic!r} is not in bag {path}; it has {found}")
    wrong = sorted({c.msgtype for c in connections if c.msgtype not in IMAGE_TYPES})
    if wrong:
        raise ValueError(
            f"topic {topic!r} in {path} carries {wrong[0]}, not an image type {IMAGE_TYPES}"
        )
    return connections


def decode_image_message(msg, msgtype: str) -> np.ndarray:
    """Decode a deserialised Image or CompressedImage to RGB (or mono) uint8; ImageDecodeError."""
    from seg_ros.image_codec import decode_compressed, decode_image

    return decode_compressed(msg) if msgtype == COMPRESSED_TYPE else decode_image(msg)
