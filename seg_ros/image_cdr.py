"""sensor_msgs/Image and CompressedImage in their serialised (CDR) form, without ROS.

The node takes camera frames as raw bytes (a subscription with ``raw=True``)
and publishes its outputs as raw bytes, so a frame that will be dropped is
never deserialised and an output array goes into the message buffer with one
copy instead of numpy -> array.array -> C message -> CDR. The layout is
XCDR1 little-endian (encapsulation ``00 01 00 00``), what every ROS 2 RMW writes
on x86 and ARM: 4-byte aligned integers, strings as length (with the NUL)
plus bytes plus NUL, ``uint8[]`` as length plus bytes. Neither message has a
field wider than 4 bytes, so XCDR2 would lay them out the same.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from seg_ros.image_codec import ImageDecodeError, encode_fields

ENCAPSULATION = b"\x00\x01\x00\x00"  # CDR, little-endian, no options
_U32 = struct.Struct("<I")


def _align(offset: int) -> int:
    return (offset + 3) & ~3


class _Reader:
    def __init__(self, data, what: str):
        self.view = memoryview(data).cast("B")
        self.what = what
        if bytes(self.view[:2]) != ENCAPSULATION[:2]:
            raise ImageDecodeError(
                f"{what}: not little-endian CDR (encapsulation {bytes(self.view[:4]).hex()})"
            )
        self.offset = 4

    def u32(self) -> int:
        start = 4 + _align(self.offset - 4)
        if start + 4 > len(self.view):
            raise ImageDecodeError(f"{self.what}: message ends early ({len(self.view)} bytes)")
        self.offset = start + 4
        return _U32.unpack_from(self.view, start)[0]

    def u8(self) -> int:
        if self.offset >= len(self.view):
            raise ImageDecodeError(f"{self.what}: message ends early ({len(self.view)} bytes)")
        self.offset += 1
        return self.view[self.offset - 1]

    def raw(self, size: int) -> memoryview:
        if self.offset + size > len(self.view):
            raise ImageDecodeError(
                f"{self.what}: a field of {size} bytes runs past the end of the message"
            )
        self.offset += size
        return self.view[self.offset - size : self.offset]

    def string(self) -> str:
        size = self.u32()
        return bytes(self.raw(size)[:-1]).decode("utf-8", "replace") if size else ""


@dataclass
class RawImage:
    """The fields of a serialised Image (or CompressedImage); ``data`` is a view, not a copy.

    ``header`` is the header's serialised bytes, so outputs carry it unchanged
    (stamp and frame_id byte for byte). Duck-types with seg_ros.image_codec.
    """

    header: bytes
    stamp: tuple[int, int]
    frame_id: str
    data: memoryview
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    format: str = ""


def _read_header(reader: _Reader) -> tuple[tuple[int, int], str]:
    sec, nanosec = reader.u32(), reader.u32()
    if sec >= 1 << 31:
        sec -= 1 << 32
    return (sec, nanosec), reader.string()


def parse_image(data) -> RawImage:
    """Read a serialised sensor_msgs/Image; raises ImageDecodeError when it is not one."""
    reader = _Reader(data, "image message")
    stamp, frame_id = _read_header(reader)
    header = bytes(reader.view[4 : reader.offset])
    height, width = reader.u32(), reader.u32()
    encoding = reader.string()
    is_bigendian = reader.u8()
    step = reader.u32()
    pixels = reader.raw(reader.u32())
    return RawImage(header, stamp, frame_id, pixels, height, width, encoding, is_bigendian, step)


def parse_compressed(data) -> RawImage:
    """Read a serialised sensor_msgs/CompressedImage; ImageDecodeError when it is not one."""
    reader = _Reader(data, "compressed image message")
    stamp, frame_id = _read_header(reader)
    header = bytes(reader.view[4 : reader.offset])
    fmt = reader.string()
    return RawImage(header, stamp, frame_id, reader.raw(reader.u32()), format=fmt)


def cdr_string(text: str) -> bytes:
    """Serialise a string field: length with the NUL, the UTF-8 bytes, the NUL."""
    encoded = text.encode() + b"\x00"
    return _U32.pack(len(encoded)) + encoded


def serialize_image(image: np.ndarray, encoding: str, header: bytes) -> bytes:
    """Serialise ``image`` as a sensor_msgs/Image with ``header`` (bytes); one copy of the pixels.

    Encodings and shapes as seg_ros.image_codec.encode_fields.
    """
    fields = encode_fields(image, encoding)
    head = bytearray(ENCAPSULATION)
    head += header
    head += bytes(_align(len(head) - 4) - (len(head) - 4))
    head += _U32.pack(fields["height"]) + _U32.pack(fields["width"])
    head += cdr_string(encoding)
    head += b"\x00"  # is_bigendian: encode_fields writes little-endian
    head += bytes(_align(len(head) - 4) - (len(head) - 4))
    head += _U32.pack(fields["step"]) + _U32.pack(fields["data"].size)
    return b"".join((head, fields["data"].data))
