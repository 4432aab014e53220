"""The segmentation node: camera images in; label, confidence, colour and overlay images out.

One model serves one camera (input ``image``) or several (parameter
``cameras``: ``<name>/image`` in, ``~/<name>/label`` etc. out). Threads, so the
node adds almost nothing to the network's own time:

- the executor's subscription callbacks only keep each camera's newest
  serialised frame (one that is overwritten before use counts as dropped);
- the inference worker parses and decodes the waiting frames and segments
  them as one batch;
- the publisher thread publishes the previous batch's outputs while the
  worker already runs the next one where the network runs on a GPU; on a
  CPU backend the worker waits for it instead (parameter ``pipelining``),
  since the network's threads need every core.

Outputs nobody subscribes to are not computed, and a camera nobody listens to
is not subscribed to. ``SegmentationCore`` holds all of it so the plain node
(here) and the lifecycle node (seg_ros.lifecycle_node) share one
implementation; everything ROS-free (parameter table, pipeline, codec,
statistics) lives in its own module.
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
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool

from seg_ros.sizes import format_size
from seg_ros.dds import apply_default_transport
from seg_ros import node_parameters as params
from seg_ros.camera_inputs import Camera
from seg_ros.image_codec import ImageDecodeError
from seg_ros.pipeline import SegmentationResult, build_pipeline
from seg_ros.stats import BackendStats

try:  # only on a full ROS install
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

WARN_PERIOD_S = 5.0  # the same bad-input warning at most this often
DIAGNOSTICS_PERIOD_S = 1.0
SUBSCRIBER_POLL_S = 0.5  # how often output subscriber counts decide the input subscriptions


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


def declare_parameters(node) -> None:
    """Declare every parameter of the table on ``node``; ValueError for a bad params file."""
    try:
        for spec in params.PARAMETERS:
            if isinstance(spec.default, tuple):  # rclpy cannot tell an empty list's type
                node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, _descriptor(spec))
            else:
                node.declare_parameter(spec.name, spec.default, _descriptor(spec))
    except ParameterException as exc:  # wrong type or out of range in the params file
        raise ValueError(f"bad parameter: {exc}") from exc
    _refuse_renamed(node)


def _refuse_renamed(node) -> None:
    """ValueError naming the new name when the params file sets a former one.

    rclpy ignores values for names nobody declares, so each former name is
    declared (any type) just long enough to see whether a value came for it.
    """
    for name in params.RENAMED:
        given = node.declare_parameter(name, None, ParameterDescriptor(dynamic_typing=True))
        node.undeclare_parameter(name)
        if given.type_ != Parameter.Type.NOT_SET:
            raise ValueError(params.unknown_reason(name))


def parameter_values(node) -> dict:
    """Read the declared parameters' values and validate them (ValueError naming every problem)."""
    values = {}
    for spec in params.PARAMETERS:
        try:
            values[spec.name] = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            values[spec.name] = spec.default
    return params.validate(values)


@dataclass
class _Frame:
    """One frame of a batch on its way from the worker to the publisher thread."""

    camera: Camera
    header: bytes  # the input's serialised header, copied into every output
    image: np.ndarray  # decoded input (RGB or mono), for the overlay
    arrival: float  # time.monotonic() when the message arrived
    timings_ms: dict
    result: SegmentationResult | None = None


class SegmentationCore:
    """Parameters, model, cameras, worker threads, ``~/enable`` and /diagnostics of one node.

    ``load`` builds the model, ``start`` creates the cameras' topics and the
    threads, ``stop`` undoes ``start``, ``unload`` frees the model: the plain
    node calls the first two at once, the lifecycle node one per transition.
    """

    def __init__(self, node):
        self.node = node
        self._logger = node.get_logger()
        self._cond = threading.Condition()
        self._running = False
        self._threads: list[threading.Thread] = []
        self._ready: list[_Frame] | None = None  # segmented, waiting for the publisher thread
        self._publishing = False  # the publisher thread is publishing a batch
        self.cameras: list[Camera] = []
        self.pipeline = None
        self.enabled = True
        self.state = "unconfigured"
        self.error = ""  # why the last transition failed, shown in /diagnostics
        self._warned: dict[str, float] = {}
        self._backend_stats = BackendStats()
        declare_parameters(node)
        self.values = parameter_values(node)
        node.add_on_set_parameters_callback(self._check_parameters)
        if hasattr(node, "add_post_set_parameters_callback"):  # Iron and later
            node.add_post_set_parameters_callback(self._apply_parameters)
            self._apply_in_check = False
        else:  # Humble: apply once validated, inside the validating callback
            self._apply_in_check = True
        node.create_service(SetBool, "~/enable", self._on_enable)
        self._diagnostics = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(DIAGNOSTICS_PERIOD_S, self.publish_diagnostics)
        node.create_timer(SUBSCRIBER_POLL_S, self.update_subscriptions)

    # --- transitions ------------------------------------------------------------------------

    def load(self) -> None:
        """Build the model and backend; ValueError, FileNotFoundError or RuntimeError say why."""
        self.values = parameter_values(self.node)
        built = build_pipeline(params.pipeline_config(self.values))
        self.pipeline = built.pipeline
        self.spec = built.spec
        self.table = built.class_table
        self.backend_name = built.backend_name
        self.palette = self.table.palette()
        self._declare_class_parameters()
        self._publish_label_info()
        self.state = "inactive"
        self.error = ""
        self._logger.info(
            f"{self.spec.family} ({self.spec.name}) on {self.backend_name} at "
            f"{format_size(self.pipeline.input_height, self.pipeline.input_width)} (HxW), "
            f"{self.table.num_classes} classes ({self.table.name})"
        )

    def start(self) -> None:
        """Create every camera's publishers, start the worker threads, subscribe where wanted."""
        self.cameras = [
            Camera(self.node, name, self.values, self._on_frame)
            for name in (self.values["cameras"] or ("",))
        ]
        self._running = True
        self._threads = [
            threading.Thread(target=self._inference_loop, name="seg_inference", daemon=True),
            threading.Thread(target=self._publish_loop, name="seg_publish", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.state = "active"
        self.update_subscriptions()
        self._logger.info("segmenting " + ", ".join(camera.input_topic for camera in self.cameras))

    def stop(self) -> None:
        """Stop the threads, remove the cameras' subscriptions and publishers; keep the model."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10.0)
        self._threads = []
        self._ready = None
        for camera in self.cameras:
            camera.destroy()
        self.cameras = []
        self.state = "inactive"

    def unload(self) -> None:
        """Free the model and its GPU memory."""
        if self.pipeline is not None:
            self.pipeline.backend.close()
        self.pipeline = None
        if getattr(self, "_label_info", None) is not None:
            self.node.destroy_publisher(self._label_info)
            self._label_info = None
        try:  # cached GPU blocks go back to the driver
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        self.state = "unconfigured"

    def shutdown(self) -> None:
        if self._running:
            self.stop()
        self.unload()

    # --- set-up -------------------------------------------------------------------------------

    def _declare_class_parameters(self) -> None:
        """Class names and colours from the class table, for tools without vision_msgs."""
        if self.node.has_parameter("classes.names"):  # a second configure of a lifecycle node
            return
        self.node.declare_parameter(
            "classes.names",
            list(self.table.names),
            ParameterDescriptor(read_only=True, description="Class names, index = label value."),
            ignore_override=True,
        )
        self.node.declare_parameter(
            "classes.colors",
            [int(v) for v in self.table.colors.reshape(-1)],
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
        self._label_info = self.node.create_publisher(LabelInfo, "~/label_info", latched)
        info = LabelInfo()
        info.header.stamp = self.node.get_clock().now().to_msg()
        info.class_map = [
            VisionClass(class_id=i, class_name=name) for i, name in enumerate(self.table.names)
        ]
        info.threshold = 0.0
        self._label_info.publish(info)

    # --- run-time control ---------------------------------------------------------------------

    def _check_parameters(self, changes) -> SetParametersResult:
        for change in changes:
            if not self.node.has_parameter(change.name):
                continue  # being declared (the class table's read-only parameters)
            if self.pipeline is None and change.name in params.SPECS:
                reason = params.SPECS[change.name].check(change.value)  # applied at configure
            else:
                reason = params.check_change(change.name, change.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if self._apply_in_check:
            self._apply_parameters(changes)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes) -> None:
        values = dict(self.values)
        values.update({c.name: c.value for c in changes if c.name in params.SPECS})
        values["cameras"] = tuple(values["cameras"] or ())
        self.values = values  # one reference swap: the worker threads see old or new, never half
        if self.pipeline is not None:
            self.pipeline.set_crf(params.crf_settings(values))
        self.update_subscriptions()

    def _on_enable(self, request, response):
        self.enabled = bool(request.data)
        self.update_subscriptions()
        response.success = True
        response.message = "enabled" if self.enabled else "disabled: no subscriptions, no work"
        self._logger.info(f"~/enable: {response.message}")
        return response

    def update_subscriptions(self) -> None:
        """Subscribe to a camera only while the node runs, is enabled and an output is wanted."""
        values = self.values
        for camera in self.cameras:
            needed = self._running and self.enabled and camera.wanted(values)
            if camera.update_subscription(needed) and not needed:
                with self._cond:
                    camera.pending = None

    # --- frames -------------------------------------------------------------------------------

    def _on_frame(self, camera: Camera, data: bytes) -> None:
        arrival = time.monotonic()
        camera.stats.frame_received()
        with self._cond:
            if camera.pending is not None:
                camera.stats.frame_dropped()
            camera.pending = (data, arrival)
            self._cond.notify_all()

    def serial_publishing(self) -> bool:
        """Whether the next inference waits for the previous batch to be published."""
        mode = self.values["pipelining"]
        if mode == "auto":
            return self.pipeline is not None and self.pipeline.backend.computes_on_cpu
        return mode == "serial"

    def _inference_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and (
                    not any(c.pending for c in self.cameras)
                    or self.serial_publishing()
                    and (self._ready is not None or self._publishing)
                ):
                    self._cond.wait()
                if not self._running:
                    return
                waiting = [(camera, camera.pending) for camera in self.cameras if camera.pending]
                for camera, _ in waiting:
                    camera.pending = None
            frames = self._segment(waiting)
            if not frames:
                continue
            with self._cond:
                while self._running and self._ready is not None:
                    self._cond.wait()
                self._ready = frames
                self._cond.notify_all()

    def _segment(self, waiting) -> list[_Frame]:
        values = self.values
        frames = []
        for camera, (data, arrival) in waiting:
            if not (self.enabled and camera.wanted(values)):
                camera.stats.frame_skipped()
                continue
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                header, image = camera.decode(data)
            except ImageDecodeError as exc:
                self._bad_frame(camera, str(exc))
                continue
            timings = {
                "decode": (time.perf_counter() - t0) * 1e3,
                "decode_cpu": (time.thread_time() - c0) * 1e3,
            }
            frames.append(_Frame(camera, header, image, arrival, timings))
        if not frames:
            return []
        want_probabilities = any(f.camera.wants("probabilities", values) for f in frames)
        try:
            results = self.pipeline.process_batch([f.image for f in frames], want_probabilities)
        except Exception as exc:  # a bad frame must never stop the node
            for frame in frames:
                self._bad_frame(frame.camera, f"segmentation failed ({type(exc).__name__}: {exc})")
            return []
        self._backend_stats.batch_done(len(frames), results[0].timings_ms["inference"])
        for frame, result in zip(frames, results):
            frame.result = result
            frame.timings_ms.update(result.timings_ms)
        return frames

    def _bad_frame(self, camera: Camera, reason: str) -> None:
        camera.stats.frame_bad()
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            if len(self._warned) > 100:
                self._warned.clear()
            self._warned[reason] = now
            self._logger.warning(f"skipping a frame on {camera.input_topic}: {reason}")

    def _publish_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and self._ready is None:
                    self._cond.wait()
                if not self._running:
                    return
                frames, self._ready = self._ready, None
                self._publishing = True
                self._cond.notify_all()
            values = self.values
            for frame in frames:
                t0, c0 = time.perf_counter(), time.thread_time()
                try:
                    frame.camera.publish(
                        frame.header, frame.image, frame.result, values, self.palette
                    )
                except Exception as exc:  # e.g. the context shut down under us
                    if self._running:
                        self._logger.error(f"publishing failed: {type(exc).__name__}: {exc}")
                    continue
                timings = frame.timings_ms
                timings["publish"] = (time.perf_counter() - t0) * 1e3
                timings["age"] = (time.monotonic() - frame.arrival) * 1e3
                # CPU the node itself spent on the frame, beside the network.
                timings["node_cpu"] = (time.thread_time() - c0) * 1e3 + sum(
                    timings.get(f"{stage}_cpu", 0.0)
                    for stage in ("decode", "preprocess", "postprocess")
                )
                frame.camera.stats.frame_published(timings)
            with self._cond:
                self._publishing = False
                self._cond.notify_all()

    # --- diagnostics --------------------------------------------------------------------------

    def _state_line(self) -> tuple[int, str] | None:
        """(level, message) when the node is not segmenting for a reason of its own."""
        if self.error:
            return DiagnosticStatus.ERROR, self.error
        if self.state != "active":
            return DiagnosticStatus.OK, f"{self.state} (lifecycle)"
        if not self.enabled:
            return DiagnosticStatus.OK, "disabled by ~/enable: no work"
        return None

    def _backend_entries(self) -> dict:
        values = self.values
        entries = {
            "state": self.state,
            "enabled": "true" if self.enabled else "false",
        }
        if self.pipeline is None:
            return entries
        batches = self._backend_stats.snapshot()
        entries.update(
            {
                "model": self.spec.family,
                "model_name": self.spec.name,
                "weights": self.spec.weights_path or "random initialisation",
                "backend": self.backend_name,
                "precision": str(getattr(self.pipeline.backend, "precision", values["precision"])),
                "input_size": format_size(self.pipeline.input_height, self.pipeline.input_width),
                "classes": f"{self.table.num_classes} ({self.table.name})",
                "crf": "on" if values["crf.enabled"] else "off",
                "pipelining": "serial" if self.serial_publishing() else "overlap",
                "cameras": str(len(self.cameras)),
                "batch_size_mean": f"{batches['batch_size_mean']:.2f}",
                "batch_rate_hz": f"{batches['batch_rate']:.2f}",
            }
        )
        if batches["frames"]:
            entries["batch_inference_p50_ms"] = f"{batches['inference_ms'][0]:.2f}"
            entries["batch_inference_p95_ms"] = f"{batches['inference_ms'][1]:.2f}"
        return entries

    @staticmethod
    def _camera_entries(camera: Camera) -> tuple[dict, dict]:
        snap = camera.stats.snapshot()
        entries = {
            "camera": camera.name or "image",
            "input_topic": camera.input_topic,
            "subscribed": "true" if camera.subscription is not None else "false",
            "input_rate_hz": f"{snap['input_rate']:.2f}",
            "output_rate_hz": f"{snap['output_rate']:.2f}",
            "frames_received": str(snap["received"]),
            "frames_published": str(snap["published"]),
            "frames_dropped": str(snap["dropped"]),
            "frames_bad": str(snap["bad"]),
            "frames_skipped_no_subscriber": str(snap["skipped"]),
            "frames_lost_in_transport": str(snap["lost"]),
        }
        for stage, (p50, p95) in snap["latency_ms"].items():
            entries[f"{stage}_p50_ms"] = f"{p50:.2f}"
            entries[f"{stage}_p95_ms"] = f"{p95:.2f}"
        return entries, snap

    @staticmethod
    def _camera_level(snap: dict) -> tuple[int, str]:
        if snap["input_rate"] > 0 and snap["output_rate"] == 0 and snap["skipped"] == 0:
            return DiagnosticStatus.WARN, "frames arrive but none is published"
        if snap["bad_recent"]:
            return DiagnosticStatus.WARN, f"{snap['bad_recent']} bad frames in the last second"
        return (
            DiagnosticStatus.OK,
            f"{snap['output_rate']:.1f} Hz out of {snap['input_rate']:.1f} Hz in",
        )

    def publish_diagnostics(self) -> None:
        """Publish a status per camera plus the shared backend (one in all for one camera)."""
        name = self.node.get_fully_qualified_name()
        hardware = getattr(self, "backend_name", "") or "none"
        state = self._state_line()
        backend = DiagnosticStatus(name=f"{name}: segmentation", hardware_id=hardware)
        backend.level, backend.message = state or (DiagnosticStatus.OK, "segmenting")
        entries = self._backend_entries()
        statuses = [backend]
        single = not self.values["cameras"]
        for camera in self.cameras:
            camera_entries, snap = self._camera_entries(camera)
            level, message = state or self._camera_level(snap)
            if single:
                backend.level, backend.message = level, message
                entries.update(camera_entries)
                continue
            status = DiagnosticStatus(
                name=f"{name}: camera {camera.name}",
                hardware_id=hardware,
                level=level,
                message=message,
            )
            status.values = [KeyValue(key=k, value=v) for k, v in camera_entries.items()]
            statuses.append(status)
        if not single:
            backend.name = f"{name}: backend"
        backend.values = [KeyValue(key=k, value=v) for k, v in entries.items()]
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.node.get_clock().now().to_msg()
        self._diagnostics.publish(array)


class SegmentationNode(Node):
    """The plain node: loads the model and starts segmenting in its constructor."""

    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self.core = None  # rclpy's shutdown destroys the node even when the constructor failed
        self.core = SegmentationCore(self)
        self.core.load()
        self.core.start()

    def destroy_node(self) -> None:
        if self.core is not None:
            self.core.shutdown()
        super().destroy_node()


def init_ros(args: list[str] | None) -> str | None:
    """Apply seg_ros's DDS defaults, then ``rclpy.init``; the transport line, None on failure.

    Fast DDS reads its settings when the participant is made, so they go first. rcl's own
    start-up errors (a ``--params-file`` that does not exist, a malformed remap) become one line.
    """
    transport = apply_default_transport()
    try:
        rclpy.init(args=args)
    except Exception as exc:  # rclpy raises its RCLError, not importable from a public module
        print(f"{params.NODE_NAME}: cannot start: {exc}", file=sys.stderr)
        return None
    get_logger(params.NODE_NAME).info(f"transport: {transport}")
    return transport


def run_node(make_node, args: list[str] | None, start_errors: tuple) -> int:
    """Start ROS, make the node and spin: 0 after a clean shutdown, 1 when it cannot start.

    ``start_errors`` are the failures that get one clear line instead of a traceback.
    """
    if init_ros(args) is None:
        return 1
    try:
        node = make_node()
    except start_errors as exc:
        get_logger(params.NODE_NAME).fatal(f"cannot start: {exc}")
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


def main(args: list[str] | None = None) -> int:
    """Console script ``segmentation_node``: 0 after a clean shutdown, 1 when it cannot start."""
    # Missing or corrupt weights, bad parameters, a backend that cannot start: one clear line.
    return run_node(SegmentationNode, args, (ValueError, FileNotFoundError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
