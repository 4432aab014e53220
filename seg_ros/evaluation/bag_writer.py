"""``--output-bag``: the input bag copied with the node's outputs added, for RViz / Foxglove later.

Every input connection and message is copied byte for byte; the outputs go to
``/<namespace>/label`` (mono8, mono16 above 254 classes), ``/<namespace>/confidence``
(32FC1) and ``/<namespace>/overlay`` (rgb8), each with the input image's header
and at the input image's bag timestamp, as the node would publish them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_ros.image_codec import encode_fields

IMAGE_TYPE = "sensor_msgs/msg/Image"


def storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3': what the rosbag2 at ``path`` is stored as."""
    if path.suffix == ".mcap" or (path.is_dir() and any(path.glob("*.mcap"))):
        return "mcap"
    return "sqlite3"


class OutputBagWriter:
    """Copies a rosbag2 and adds segmentation outputs; use as a context manager."""

    def __init__(
        self,
        output: str | Path,
        input_connections,
        *,
        namespace: str = "segmentation_node",
        storage: str = "sqlite3",
        input_typestore=None,
    ):
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(output)
        if self.path.exists():
            raise ValueError(
                f"output bag {self.path} exists already; rosbag2 writers never overwrite"
            )
        if storage not in ("sqlite3", "mcap"):
            raise ValueError(f"unknown bag storage {storage!r}: expected sqlite3 or mcap")
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.writer = Writer(
            self.path,
            version=9,
            storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3,
        )
        self.writer.open()
        self._copies = {}
        try:
            for conn in input_connections:
                msgdef, digest = conn.msgdef.data, conn.digest
                if (
                    not msgdef or not digest
                ):  # old bags without definitions: take them from a typestore
                    store = input_typestore if input_typestore is not None else self.typestore
                    msgdef, digest = None, None
                    extra = {"typestore": store}
                else:
                    extra = {}
                self._copies[conn.id] = self.writer.add_connection(
                    conn.topic,
                    conn.msgtype,
                    msgdef=msgdef,
                    rihs01=digest,
                    serialization_format=conn.ext.serialization_format,
                    offered_qos_profiles=conn.ext.offered_qos_profiles,
                    **extra,
                )
            ns = "/" + namespace.strip("/")
            self._outputs = {
                name: self.writer.add_connection(
                    f"{ns}/{name}", IMAGE_TYPE, typestore=self.typestore
                )
                for name in ("label", "confidence", "overlay")
            }
        except WriterError as exc:
            self.writer.close()
            raise ValueError(f"cannot write {self.path}: {exc}") from exc

    def copy(self, connection, timestamp: int, rawdata) -> None:
        """Copy one input message unchanged."""
        self.writer.write(self._copies[connection.id], timestamp, rawdata)

    def _image(self, header, array: np.ndarray, encoding: str) -> bytes:
        types = self.typestore.types
        new_header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](
                sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec)
            ),
            frame_id=str(header.frame_id),
        )
        msg = types[IMAGE_TYPE](header=new_header, **encode_fields(array, encoding))
        return self.typestore.serialize_cdr(msg, IMAGE_TYPE)

    def write_outputs(
        self,
        header,
        timestamp: int,
        label: np.ndarray,
        confidence: np.ndarray,
        overlay_rgb: np.ndarray,
    ) -> None:
        """Write the node's three image outputs for one input frame."""
        label_encoding = "mono8" if label.dtype == np.uint8 else "mono16"
        for name, array, encoding in (
            ("label", label, label_encoding),
            ("confidence", confidence.astype(np.float32, copy=False), "32FC1"),
            ("overlay", overlay_rgb, "rgb8"),
        ):
            self.writer.write(self._outputs[name], timestamp, self._image(header, array, encoding))

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> OutputBagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
