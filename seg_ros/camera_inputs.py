"""One camera of the segmentation node: input subscription, output publishers, mailbox, statistics.

Frames arrive as serialised bytes (``raw=True``): the subscription callback
only stores the newest one, and the inference worker parses and decodes just
the frame it will segment. Outputs are published as serialised bytes built
straight from the arrays (seg_ros.image_cdr) with the input's header bytes.
The subscription exists only while some output of this camera has a
subscriber (``update_subscription``, polled by the node like image_proc).
"""

from __future__ import annotations

import numpy as np
import rclpy.subscription
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from seg_ros.dds import matched_reliability
from seg_ros.image_cdr import parse_compressed, parse_image, serialize_image
from seg_ros.image_codec import decode_compressed, decode_image
from seg_ros.node_parameters import OUTPUTS
from seg_ros.stats import NodeStats
from seg_ros.visualize import overlay


# rclpy passes message info (publisher and sequence number) to two-argument callbacks from
# Jazzy on; on Humble the transport-loss count stays 0.
WITH_MESSAGE_INFO = hasattr(rclpy.subscription, "MessageInfo")
RELIABLE_INPUT_DEPTH = 10  # serialised frames DDS may hold until the executor takes them


def input_qos(reliability: str) -> QoSProfile:
    """Build the input reader's QoS; best effort is the sensor-data profile (REP-2003).

    The newest frame wins in the camera's mailbox, not in DDS: a reliable reader of depth 1
    lost most 30 Hz 1280x720 frames silently whenever the executor took one late (81 of 301
    arrived), while depth RELIABLE_INPUT_DEPTH let every frame through to be counted (301 of
    301; the ones inference could not keep up with counted as dropped).
    """
    if reliability == "reliable":
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=RELIABLE_INPUT_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE,
        )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


class Camera:
    """``name`` "" is the single-camera set-up: input ``image``, outputs ``~/label`` etc."""

    def __init__(self, node, name: str, values: dict, on_frame):
        self.name = name
        self._node = node
        compressed = values["image_transport"] == "compressed"
        base = node.resolve_topic_name(f"{name}/image" if name else "image")
        self.input_topic = base + "/compressed" if compressed else base
        self._msg_type = CompressedImage if compressed else Image
        self._parse = parse_compressed if compressed else parse_image
        self._decode = decode_compressed if compressed else decode_image
        self._reliability_setting = values["qos.reliability"]
        self._reliability = ""  # of the subscription that exists now
        self._on_frame = on_frame
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=values["qos.depth"],
            reliability=ReliabilityPolicy.RELIABLE,
        )
        prefix = f"~/{name}/" if name else "~/"
        self.outputs = {
            output: node.create_publisher(Image, prefix + output, out_qos) for output in OUTPUTS
        }
        self.stats = NodeStats()
        self.pending: tuple[bytes, float] | None = None  # guarded by the node's condition
        self.subscription = None

    def wants(self, output: str, values: dict) -> bool:
        return values[f"publish.{output}"] and self.outputs[output].get_subscription_count() > 0

    def wanted(self, values: dict) -> bool:
        return any(self.wants(output, values) for output in OUTPUTS)

    def _offered_reliability(self) -> str:
        """Return the reliability the input's publishers call for (seg_ros.dds)."""
        offered = [
            "reliable"
            if info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
            else "best_effort"
            for info in self._node.get_publishers_info_by_topic(self.input_topic)
        ]
        return matched_reliability(self._reliability_setting, offered)

    def update_subscription(self, needed: bool) -> bool:
        """Subscribe or unsubscribe to match ``needed``; True when that changed anything.

        A subscription whose reliability no longer matches the publishers (a reliable camera
        appeared after the node subscribed best effort) is made again.
        """
        reliability = self._offered_reliability() if needed else ""
        changed = False
        if self.subscription is not None and reliability != self._reliability:
            self._node.destroy_subscription(self.subscription)
            self.subscription, self._reliability, changed = None, "", True
        if needed and self.subscription is None:
            self.subscription = self._node.create_subscription(
                self._msg_type,
                self.input_topic,
                self._received_with_info if WITH_MESSAGE_INFO else self._received,
                input_qos(reliability),
                raw=True,
            )
            self._reliability, changed = reliability, True
            self._node.get_logger().info(f"subscribed to {self.input_topic} ({reliability})")
        return changed

    def _received(self, data: bytes) -> None:
        self._on_frame(self, data)

    def _received_with_info(self, data: bytes, info) -> None:
        sequence = info.get("publication_sequence_number")
        if sequence:  # 0 / None: the RMW does not number its samples
            self.stats.sequence_seen(str(info.get("publisher_gid")), sequence)
        self._on_frame(self, data)

    def decode(self, data: bytes):
        """Parse and decode a serialised frame: (header bytes, pixels); ImageDecodeError if bad."""
        message = self._parse(data)
        return message.header, self._decode(message)

    def publish(self, header: bytes, image: np.ndarray, result, values: dict, palette) -> None:
        """Publish the outputs somebody subscribes to; colour and overlay share one lookup."""
        if self.wants("label", values):
            encoding = "mono8" if result.label.dtype == np.uint8 else "mono16"
            self.outputs["label"].publish(serialize_image(result.label, encoding, header))
        if self.wants("confidence", values):
            self.outputs["confidence"].publish(serialize_image(result.confidence, "32FC1", header))
        want_color, want_overlay = self.wants("color", values), self.wants("overlay", values)
        if want_color or want_overlay:
            color = result.color_mask(palette)
            if want_color:
                self.outputs["color"].publish(serialize_image(color, "rgb8", header))
            if want_overlay:
                blended = overlay(image, color, values["overlay_alpha"])
                self.outputs["overlay"].publish(serialize_image(blended, "rgb8", header))
        if result.probabilities is not None and self.wants("probabilities", values):
            encoding = f"32FC{result.probabilities.shape[2]}"
            self.outputs["probabilities"].publish(
                serialize_image(result.probabilities, encoding, header)
            )

    def destroy(self) -> None:
        self.update_subscription(False)
        for publisher in self.outputs.values():
            self._node.destroy_publisher(publisher)
        self.outputs = {}
