"""Serialised Image/CompressedImage without ROS, checked against rclpy's own serialiser."""

from __future__ import annotations

import array

import numpy as np
import pytest

from seg_ros.image_cdr import parse_compressed, parse_image, serialize_image
from seg_ros.image_codec import ImageDecodeError, decode_image

serialization = pytest.importorskip("rclpy.serialization", reason="rclpy is not installed")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

ARRAYS = {
    "rgb8": np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3),
    "mono8": np.arange(35, dtype=np.uint8).reshape(5, 7),
    "mono16": (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7),
    "32FC1": np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7),
    "32FC3": np.linspace(0, 1, 105, dtype=np.float32).reshape(5, 7, 3),
}


def _message(encoding: str, pixels: np.ndarray, frame_id: str) -> Image:
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.step = pixels.strides[0]
    msg.data = array.array("B", pixels.tobytes())
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = -5, 999
    return msg


@pytest.mark.parametrize("encoding", sorted(ARRAYS))
@pytest.mark.parametrize("frame_id", ["", "a", "abc", "abcd", "front_camera_optical"])
def test_parse_and_serialise_agree_with_rclpy(encoding, frame_id):
    pixels = ARRAYS[encoding]
    msg = _message(encoding, pixels, frame_id)
    raw = parse_image(serialization.serialize_message(msg))
    assert (raw.stamp, raw.frame_id, raw.encoding) == ((-5, 999), frame_id, encoding)
    assert (raw.height, raw.width, raw.step, raw.is_bigendian) == (5, 7, msg.step, 0)
    assert bytes(raw.data) == pixels.tobytes()
    # Our bytes deserialise, with rclpy, to the very same message (header copied byte for byte).
    ours = serialize_image(pixels, encoding, raw.header)
    assert serialization.deserialize_message(ours, Image) == msg


def test_parsed_image_decodes_without_a_copy():
    pixels = ARRAYS["rgb8"]
    data = serialization.serialize_message(_message("rgb8", pixels, "cam"))
    decoded = decode_image(parse_image(data))
    np.testing.assert_array_equal(decoded, pixels)
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))


def test_compressed_image():
    msg = CompressedImage(format="png")
    msg.header.frame_id = "xy"
    msg.data = array.array("B", b"not really a png")
    raw = parse_compressed(serialization.serialize_message(msg))
    assert (raw.format, raw.frame_id, bytes(raw.data)) == ("png", "xy", b"not really a png")


@pytest.mark.parametrize("cut", [0, 3, 10, 30, 60])
def test_truncated_or_foreign_bytes_are_refused_with_the_reason(cut):
    data = serialization.serialize_message(_message("rgb8", ARRAYS["rgb8"], "cam"))
    with pytest.raises(ImageDecodeError, match="ends early|runs past|not little-endian"):
        parse_image(data[:cut])
    with pytest.raises(ImageDecodeError, match="not little-endian"):
        parse_image(b"\x00\x00\x00\x00" + data[4:])  # big-endian CDR
