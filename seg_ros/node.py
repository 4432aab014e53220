"""The segmentation node: camera images in; label, confidence, colour and overlay images out.

Threads, so the node adds almost nothing to the network's own time:

- the executor's subscription callback only puts the newest message in a
  one-slot mailbox (an unprocessed message it overwrites counts as dropped);
- the inference worker decodes and segments the newest frame;
- the publisher thread turns the previous result into messages and publishes
  them while the worker already runs the next inference.

Outputs nobody subscribes to are not computed. Everything ROS-free (parameter
table, pipeline, codec, statistics) lives in its own module.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from seg_ros import node_parameters as params
from seg_ros.image_codec import ImageDecodeError, decode_compressed, decode_image, to_ros_image
from seg_ros.pipeline import SegmentationResult, build_pipeline
from seg_ros.stats import NodeStats
from seg_ros.visualize import colorize, overlay

try:  # only on a full ROS install
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

WARN_PERIOD_S = 5.0  # the same bad-input warning at most this often
DIAGNOSTICS_PERIOD_S = 1.0


def _descriptor(spec: params.ParameterSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if isinstance(spec.default, float):
        descriptor.floating_point_range = [
            FloatingPointRange(
                from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0
            )
        ]
    elif (
        isinstance(spec.default, int)
        and not isinstance(spec.default, bool)
        and spec.minimum is not None
    ):
        descriptor.integer_range = [
            IntegerRange(
                from_value=int(spec.minimum), to_value=int(spec.maximum), step=max(spec.step, 1)
            )
        ]
    return descriptor


@dataclass
class _Frame:
    """One segmented frame on its way to the publisher thread."""

    header: object
    image: np.ndarray  # decoded input (RGB or mono), for the overlay
    result: SegmentationResult
    arrival: float  # time.monotonic() when the message arrived
    timings_ms: dict


class SegmentationNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self._cond = threading.Condition()
        self._pending: tuple[object, float] | None = None  # newest message, arrival time
        self._ready: _Frame | None = None  # segmented, waiting for the publisher thread
        self._running = True
        self._threads: list[threading.Thread] = []
        self._pipeline = None
        self._values = self._declare_parameters()
        built = build_pipeline(params.pipeline_config(self._values))
        self._pipeline = built.pipeline
        self._spec = built.spec
        self._table = built.class_table
        self._backend_name = built.backend_name
        self._palette = self._table.palette()
        self._declare_class_parameters()

        self._stats = NodeStats()
        self._warned: dict[str, float] = {}

        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._values["qos.depth"],
            reliability=ReliabilityPolicy.RELIABLE,
        )
        self._outputs = {
            name: self.create_publisher(Image, f"~/{name}", out_qos) for name in params.OUTPUTS
        }
        self._publish_label_info()
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subscribe()

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._threads = [
            threading.Thread(target=self._inference_loop, name="seg_inference", daemon=True),
            threading.Thread(target=self._publish_loop, name="seg_publish", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.get_logger().info(
            f"segmenting {self._input_topic} with {self._spec.family} ({self._spec.name}) on {self._backend_name} "
            f"at {self._pipeline.input_width}x{self._pipeline.input_height}, {self._table.num_classes} classes "
            f"({self._table.name})"
        )

    # --- set-up -----------------------------------------------------------------------------

    def _declare_parameters(self) -> dict:
        try:
            for spec in params.PARAMETERS:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        except ParameterException as exc:  # wrong type or out of range in the params file
            raise ValueError(f"bad parameter: {exc}") from exc
        return params.validate(
            {spec.name: self.get_parameter(spec.name).value for spec in params.PARAMETERS}
        )

    def _declare_class_parameters(self) -> None:
        """Class names and colours from the class table, for tools without vision_msgs."""
        self.declare_parameter(
            "classes.names",
            list(self._table.names),
            ParameterDescriptor(read_only=True, description="Class names, index = label value."),
            ignore_override=True,
        )
        self.declare_parameter(
            "classes.colors",
            [int(v) for v in self._table.colors.reshape(-1)],
            ParameterDescriptor(
                read_only=True,
                description="Class colours as flattened [R, G, B, ...], index = label value.",
            ),
            ignore_override=True,
        )

    def _publish_label_info(self) -> None:
        if LabelInfo is None:
            return
        latched = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._label_info = self.create_publisher(LabelInfo, "~/label_info", latched)
        info = LabelInfo()
        info.header.stamp = self.get_clock().now().to_msg()
        info.class_map = [
            VisionClass(class_id=i, class_name=name) for i, name in enumerate(self._table.names)
        ]
        info.threshold = 0.0
        self._label_info.publish(info)

    def _subscribe(self) -> None:
        depth_one = dict(history=HistoryPolicy.KEEP_LAST, depth=1)
        if self._values["qos.reliability"] == "reliable":
            qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, **depth_one)
        else:  # the sensor-data profile, newest frame only
            qos = QoSProfile(
                reliability=ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.VOLATILE,
                **depth_one,
            )
        if self._values["image_transport"] == "compressed":
            # image_transport style: the (remapped) base topic + /compressed.
            self._input_topic = self.resolve_topic_name("image") + "/compressed"
            self._decode = decode_compressed
            msg_type = CompressedImage
        else:
            self._input_topic = self.resolve_topic_name("image")
            self._decode = decode_image
            msg_type = Image
        self._subscription = self.create_subscription(
            msg_type, self._input_topic, self._on_image, qos
        )

    # --- parameters at run time ---------------------------------------------------------------

    def _on_set_parameters(self, changes) -> SetParametersResult:
        for change in changes:
            reason = params.check_change(change.name, change.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        values = dict(self._values)
        values.update({change.name: change.value for change in changes})
        self._values = values  # one reference swap: the worker threads see old or new, never half
        self._pipeline.set_crf(params.crf_settings(values))
        return SetParametersResult(successful=True)

    # --- frames -------------------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        arrival = time.monotonic()
        self._stats.frame_received()
        with self._cond:
            if self._pending is not None:
                self._stats.frame_dropped()
            self._pending = (msg, arrival)
            self._cond.notify_all()

    def _wants(self, output: str, values: dict) -> bool:
        return values[f"publish.{output}"] and self._outputs[output].get_subscription_count() > 0

    def _inference_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and self._pending is None:
                    self._cond.wait()
                if not self._running:
                    return
                msg, arrival = self._pending
                self._pending = None
            frame = self._segment(msg, arrival)
            if frame is None:
                continue
            with self._cond:
                while self._running and self._ready is not None:
                    self._cond.wait()
                self._ready = frame
                self._cond.notify_all()

    def _segment(self, msg, arrival: float) -> _Frame | None:
        values = self._values
        if not any(self._wants(name, values) for name in params.OUTPUTS):
            self._stats.frame_skipped()
            return None
        t0 = time.perf_counter()
        try:
            image = self._decode(msg)
            t1 = time.perf_counter()
            result = self._pipeline.process(
                image, want_probabilities=self._wants("probabilities", values)
            )
        except ImageDecodeError as exc:
            return self._bad_frame(str(exc))
        except Exception as exc:  # a bad frame must never stop the node
            return self._bad_frame(f"segmentation failed ({type(exc).__name__}: {exc})")
        return _Frame(
            msg.header, image, result, arrival, {"decode": (t1 - t0) * 1e3, **result.timings_ms}
        )

    def _bad_frame(self, reason: str) -> None:
        self._stats.frame_bad()
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            if len(self._warned) > 100:
                self._warned.clear()
            self._warned[reason] = now
            self.get_logger().warning(f"skipping a frame on {self._input_topic}: {reason}")
        return None

    def _publish_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and self._ready is None:
                    self._cond.wait()
                if not self._running:
                    return
                frame, self._ready = self._ready, None
                self._cond.notify_all()
            t0 = time.perf_counter()
            try:
                self._publish(frame)
            except Exception as exc:  # e.g. the context shut down under us
                if self._running:
                    self.get_logger().error(f"publishing failed: {type(exc).__name__}: {exc}")
                continue
            timings = dict(frame.timings_ms)
            timings["publish"] = (time.perf_counter() - t0) * 1e3
            timings["age"] = (time.monotonic() - frame.arrival) * 1e3
            self._stats.frame_published(timings)

    def _publish(self, frame: _Frame) -> None:
        values = self._values
        result, header = frame.result, frame.header
        if self._wants("label", values):
            encoding = "mono8" if result.label.dtype == np.uint8 else "mono16"
            self._outputs["label"].publish(to_ros_image(result.label, encoding, header, Image))
        if self._wants("confidence", values):
            self._outputs["confidence"].publish(
                to_ros_image(result.confidence, "32FC1", header, Image)
            )
        want_color, want_overlay = self._wants("color", values), self._wants("overlay", values)
        if want_color or want_overlay:
            color = colorize(result.label, self._palette)
            if want_color:
                self._outputs["color"].publish(to_ros_image(color, "rgb8", header, Image))
            if want_overlay:
                blended = overlay(frame.image, color, values["overlay_alpha"])
                self._outputs["overlay"].publish(to_ros_image(blended, "rgb8", header, Image))
        if result.probabilities is not None and self._wants("probabilities", values):
            encoding = f"32FC{result.probabilities.shape[2]}"
            self._outputs["probabilities"].publish(
                to_ros_image(result.probabilities, encoding, header, Image)
            )

    # --- diagnostics --------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        snap = self._stats.snapshot()
        status = DiagnosticStatus(
            name=f"{self.get_fully_qualified_name()}: segmentation", hardware_id=self._backend_name
        )
        if snap["input_rate"] > 0 and snap["output_rate"] == 0 and snap["skipped"] == 0:
            status.level, status.message = (
                DiagnosticStatus.WARN,
                "frames arrive but none is published",
            )
        elif snap["bad_recent"]:
            status.level, status.message = (
                DiagnosticStatus.WARN,
                f"{snap['bad_recent']} bad frames in the last second",
            )
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{snap['output_rate']:.1f} Hz out of {snap['input_rate']:.1f} Hz in"
        values = self._values
        entries = {
            "model": self._spec.family,
            "model_name": self._spec.name,
            "weights": self._spec.weights_path or "random initialisation",
            "backend": self._backend_name,
            "precision": str(getattr(self._pipeline.backend, "precision", values["precision"])),
            "input_size": f"{self._pipeline.input_width}x{self._pipeline.input_height}",
            "classes": f"{self._table.num_classes} ({self._table.name})",
            "crf": "on" if values["crf.enabled"] else "off",
            "input_topic": self._input_topic,
            "input_rate_hz": f"{snap['input_rate']:.2f}",
            "output_rate_hz": f"{snap['output_rate']:.2f}",
            "frames_received": str(snap["received"]),
            "frames_published": str(snap["published"]),
            "frames_dropped": str(snap["dropped"]),
            "frames_bad": str(snap["bad"]),
            "frames_skipped_no_subscriber": str(snap["skipped"]),
        }
        for stage, (p50, p95) in snap["latency_ms"].items():
            entries[f"{stage}_p50_ms"] = f"{p50:.2f}"
            entries[f"{stage}_p95_ms"] = f"{p95:.2f}"
        status.values = [KeyValue(key=key, value=value) for key, value in entries.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)

    # --- shutdown -----------------------------------------------------------------------------

    def destroy_node(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5.0)
        if self._pipeline is not None:
            self._pipeline.backend.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``segmentation_node``: 0 after a clean shutdown, 1 when it cannot start."""
    rclpy.init(args=args)
    logger = get_logger(params.NODE_NAME)
    try:
        node = SegmentationNode()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Missing or corrupt weights, bad parameters, a backend that cannot start: one clear line.
        logger.fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
