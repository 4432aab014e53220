"""image_codec: every encoding against an independent or OpenCV reference, and malformed cases."""

from __future__ import annotations

import array
import types

import cv2
import numpy as np
import pytest

from seg_ros.image_codec import (
    ImageDecodeError,
    decode_compressed,
    decode_image,
    encode_fields,
    message_to_array,
    to_ros_image,
)

H, W = 6, 8
RNG = np.random.default_rng(7)


def make_msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, big_endian: bool = False):
    """Build an Image-like namespace holding ``pixels`` row by row.

    Each row is followed by ``pad`` garbage bytes.
    """
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = np.ascontiguousarray(pixels, dtype=dtype).reshape(height, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return types.SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=rows.shape[1],
        data=rows.tobytes(),
    )


def rgb_image(height=H, width=W):
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    "encoding,make,expected",
    [
        ("rgb8", lambda rgb: rgb, lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[..., ::-1], lambda rgb: rgb),
        ("8UC3", lambda rgb: rgb[..., ::-1], lambda rgb: rgb),  # cv_bridge reads 8UC3 as bgr8
        (
            "rgba8",
            lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
            lambda rgb: rgb,
        ),
        (
            "bgra8",
            lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)]),
            lambda rgb: rgb,
        ),
        ("mono8", lambda rgb: rgb[..., 0], lambda rgb: rgb[..., 0]),
        ("8UC1", lambda rgb: rgb[..., 1], lambda rgb: rgb[..., 1]),
    ],
)
def test_direct_encodings(encoding, make, expected, pad):
    rgb = rgb_image()
    out = decode_image(make_msg(np.ascontiguousarray(make(rgb)), encoding, pad=pad))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected(rgb))
    assert out.flags.c_contiguous


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 1])  # pad 1: odd step, rows start at unaligned addresses
def test_mono16_scaled_like_cv_bridge(big_endian, pad):
    values = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    values[0, :4] = (0, 65535, 257, 128)
    msg = make_msg(values, "mono16", pad=pad, big_endian=big_endian)
    np.testing.assert_array_equal(message_to_array(msg), values)
    out = decode_image(msg)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(
        out, np.rint(values / 257.0).astype(np.uint8)
    )  # 255/65535 == 1/257
    assert tuple(out[0, :4]) == (0, 255, 1, 0)


def _yuv_from_rgb(rgb):
    """BT.601 limited-range YUV, as cameras (UVC) send it, computed without OpenCV."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v)]


@pytest.mark.parametrize(
    "encoding,order",
    [
        ("yuv422", "UYVY"),
        ("uyvy", "UYVY"),
        ("yuyv", "YUYV"),
        ("yuv422_yuy2", "YUYV"),
    ],
)
def test_yuv422(encoding, order):
    # Pixel pairs share chroma, so make every pair one colour: then decoding must give it back.
    rgb = np.repeat(RNG.integers(40, 216, (H, W // 2, 3), dtype=np.uint8), 2, axis=1)
    y, u, v = _yuv_from_rgb(rgb)
    packed = np.empty((H, W, 2), np.uint8)
    if order == "UYVY":
        packed[..., 1] = y
        packed[:, 0::2, 0], packed[:, 1::2, 0] = u[:, 0::2], v[:, 0::2]
    else:
        packed[..., 0] = y
        packed[:, 0::2, 1], packed[:, 1::2, 1] = u[:, 0::2], v[:, 0::2]
    msg = make_msg(packed, encoding, pad=2)
    out = decode_image(msg)
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 3
    code = cv2.COLOR_YUV2BGR_UYVY if order == "UYVY" else cv2.COLOR_YUV2BGR_YUY2
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, code)[..., ::-1])


def test_yuv422_odd_width_rejected():
    msg = make_msg(np.zeros((2, 3, 2), np.uint8), "yuv422")
    with pytest.raises(ImageDecodeError, match="even width"):
        decode_image(msg)


# ROS names a Bayer pattern by its top-left 2×2 block read row by row; OpenCV's old
# names are offset.
BAYER = {
    "bayer_rggb8": ("RGGB", cv2.COLOR_BayerBG2BGR),
    "bayer_bggr8": ("BGGR", cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg8": ("GBRG", cv2.COLOR_BayerGR2BGR),
    "bayer_grbg8": ("GRBG", cv2.COLOR_BayerGB2BGR),
}


@pytest.mark.parametrize("encoding", sorted(BAYER))
def test_bayer(encoding):
    pattern, reference_code = BAYER[encoding]
    colour = np.array([200, 110, 30], np.uint8)  # distinct channels: a swapped pattern shows
    rgb = np.broadcast_to(colour, (8, 10, 3))
    channel = {"R": 0, "G": 1, "B": 2}
    mosaic = np.empty((8, 10), np.uint8)
    for dy in range(2):
        for dx in range(2):
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[2 * dy + dx]]]
    out = decode_image(make_msg(mosaic, encoding, pad=1))
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])
    np.testing.assert_array_equal(out, cv2.cvtColor(mosaic, reference_code)[..., ::-1])


def test_odd_step_padding_is_skipped():
    rgb = rgb_image(3, 5)
    msg = make_msg(rgb, "rgb8", pad=2)  # step 17: odd, not a multiple of 3
    assert msg.step == 17
    out = decode_image(msg)
    np.testing.assert_array_equal(out, rgb)


def test_unpadded_decode_shares_memory_with_message():
    rgb = rgb_image()
    msg = make_msg(rgb, "rgb8")
    msg.data = array.array("B", msg.data)  # what rclpy hands a subscriber
    out = decode_image(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_numpy_data_like_rosbags():
    rgb = rgb_image()
    msg = make_msg(rgb, "bgr8")
    msg.data = np.frombuffer(msg.data, np.uint8).copy()
    np.testing.assert_array_equal(decode_image(msg), rgb[..., ::-1])


@pytest.mark.parametrize(
    "change,pattern",
    [
        (
            dict(data=b"\0" * (H * W * 3 - 1)),
            r"data has 143 bytes, expected step x height = 24 x 6 = 144",
        ),
        (dict(step=W * 3 - 1), r"step 23 is smaller than one row \(8 pixels x 3 bytes = 24\)"),
        (dict(width=0), r"empty rgb8 image: 0x6"),
        (dict(height=0), r"empty rgb8 image: 8x0"),
        (dict(encoding="rgb32"), r"unsupported image encoding 'rgb32'"),
    ],
)
def test_malformed_messages(change, pattern):
    msg = make_msg(rgb_image(), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError, match=pattern):
        decode_image(msg)


def test_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def test_raw_only_encodings_are_refused_for_the_network():
    msg = types.SimpleNamespace(**encode_fields(np.zeros((2, 2), np.float32), "32FC1"))
    with pytest.raises(
        ImageDecodeError, match="unsupported image encoding '32FC1' for segmentation"
    ):
        decode_image(msg)
    msg.encoding = "rgb32"
    with pytest.raises(ImageDecodeError, match="unsupported image encoding 'rgb32'"):
        message_to_array(msg)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_round_trip(ext):
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.dstack([xx * 4, yy * 5, 255 - xx * 3]).astype(np.uint8)  # smooth, so JPEG stays close
    ok, encoded = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    msg = types.SimpleNamespace(format=ext[1:], data=array.array("B", encoded.tobytes()))
    out = decode_compressed(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if ext == ".png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 3


def test_compressed_garbage_and_empty():
    with pytest.raises(
        ImageDecodeError, match=r"cannot decode compressed image \(jpeg, 5 bytes\)"
    ):
        decode_compressed(types.SimpleNamespace(format="jpeg", data=b"\xff\xd8abc"))
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed(types.SimpleNamespace(format="png", data=b""))


@pytest.mark.parametrize(
    "encoding,array_",
    [
        ("mono8", RNG.integers(0, 256, (H, W), dtype=np.uint8)),
        ("mono16", RNG.integers(0, 65536, (H, W), dtype=np.uint16)),
        ("32FC1", RNG.random((H, W), dtype=np.float32)),
        ("32FC3", RNG.random((H, W, 3), dtype=np.float32)),
        ("rgb8", RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)),
    ],
)
def test_encode_fields_round_trip(encoding, array_):
    fields = encode_fields(array_, encoding)
    itemsize = array_.dtype.itemsize * (array_.shape[2] if array_.ndim == 3 else 1)
    assert fields["height"] == H and fields["width"] == W and fields["encoding"] == encoding
    assert fields["is_bigendian"] == 0 and fields["step"] == W * itemsize
    assert fields["data"].dtype == np.uint8 and fields["data"].size == H * W * itemsize
    np.testing.assert_array_equal(message_to_array(types.SimpleNamespace(**fields)), array_)


def test_encode_fields_rejects_mismatches():
    with pytest.raises(
        ValueError, match=r"mono8 needs a H×W uint8 array, got shape \(2, 2\) dtype uint16"
    ):
        encode_fields(np.zeros((2, 2), np.uint16), "mono8")
    with pytest.raises(ValueError, match="32FC4 needs a H×W×4 float32 array"):
        encode_fields(np.zeros((2, 2, 3), np.float32), "32FC4")
    with pytest.raises(ValueError, match="cannot encode 'yuv422'"):
        encode_fields(np.zeros((2, 2), np.uint8), "yuv422")
    with pytest.raises(ValueError, match="empty"):
        encode_fields(np.zeros((0, 2), np.uint8), "mono8")


def test_rclpy_message_survives_serialisation():
    sensor_msgs = pytest.importorskip(
        "sensor_msgs.msg", reason="rclpy message packages not installed"
    )
    serialization = pytest.importorskip("rclpy.serialization")
    std_msgs = pytest.importorskip("std_msgs.msg")
    header = std_msgs.Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    confidence = RNG.random((H, W), dtype=np.float32)
    msg = to_ros_image(confidence, "32FC1", header, sensor_msgs.Image)
    assert isinstance(msg.data, array.array) and msg.header.frame_id == "camera"
    back = serialization.deserialize_message(
        serialization.serialize_message(msg), sensor_msgs.Image
    )
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == (12, 345)
    np.testing.assert_array_equal(message_to_array(back), confidence)
    rgb = rgb_image()
    back = serialization.deserialize_message(
        serialization.serialize_message(
            to_ros_image(rgb[..., ::-1].copy(), "bgr8", header, sensor_msgs.Image)
        ),
        sensor_msgs.Image,
    )
    np.testing.assert_array_equal(decode_image(back), rgb)


def test_rosbags_message_survives_cdr():
    stores = pytest.importorskip("rosbags.typesys", reason="rosbags not installed")
    typestore = stores.get_typestore(stores.Stores.ROS2_HUMBLE)
    Image = typestore.types["sensor_msgs/msg/Image"]
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    labels = RNG.integers(0, 11, (H, W), dtype=np.uint8)
    msg = to_ros_image(
        labels, "mono8", Header(stamp=Time(sec=3, nanosec=4), frame_id="cam"), Image
    )
    raw = typestore.serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = typestore.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert back.header.frame_id == "cam"
    np.testing.assert_array_equal(decode_image(back), labels)
