"""The ROS side of `seg_ros demo`: start the node process, play frames to it, collect its outputs.

Plays the roles a robot has around the node: a camera driver publishing
``sensor_msgs/Image`` with fresh header stamps, and viewers subscribed to
the outputs (the node computes only what someone subscribes to). Outputs are
matched to inputs by header stamp, which the node copies unchanged.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from seg_ros.timing import p50_p95

NODE_LOG_LINES = 40  # the node's last lines, shown when it fails
DIAGNOSTICS_WAIT_S = 1.2  # the node publishes /diagnostics once a second
WARMUP_RESEND_S = 3.0


class DemoSession:
    """Context manager owning the node process, an rclpy context and the demo's own node."""

    def __init__(self, node_command: list[str], input_topic: str, output_topics: list[str]):
        self.node_command = node_command
        self.input_topic = input_topic
        self.output_topics = output_topics
        self._lock = threading.Lock()
        self._sent: dict[tuple[int, int], float] = {}  # header stamp -> monotonic send time
        self._received = {
            topic: {} for topic in output_topics
        }  # topic -> stamp -> monotonic receive time
        self._overlays: list[tuple[tuple[int, int], object]] = []
        self._warmup: dict[tuple[int, int], float] = {}  # untimed first frames: stamp -> send time
        self._first_output: float | None = (
            None  # seconds from the warm-up frame to its first output
        )
        self._warmed_up: set[str] = set()  # output topics that delivered a warm-up frame
        self._diagnostics: dict[str, str] = {}
        self._log: collections.deque[str] = collections.deque(maxlen=NODE_LOG_LINES)
        self._last_activity = time.monotonic()

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> DemoSession:
        try:
            import rclpy
            from diagnostic_msgs.msg import DiagnosticArray
            from rclpy.executors import SingleThreadedExecutor
            from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
            from sensor_msgs.msg import Image
        except ImportError as exc:
            raise RuntimeError(
                f"seg_ros demo needs ROS 2's Python packages ({exc}): source your ROS 2 setup "
                "or run `make setup`, which installs them from PyPI"
            ) from exc

        self._process = subprocess.Popen(
            self.node_command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._forward_node_output, name="node_log", daemon=True
        )
        self._reader.start()
        self._context = rclpy.Context()
        rclpy.init(
            args=["seg_ros_demo"], context=self._context
        )  # not sys.argv: its flags are not ROS arguments
        self._node = rclpy.create_node("seg_ros_demo", context=self._context)
        reliable = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
        )
        self._publisher = self._node.create_publisher(Image, self.input_topic, reliable)
        for topic in self.output_topics:
            self._node.create_subscription(
                Image, topic, lambda msg, t=topic: self._on_output(t, msg), reliable
            )
        self._node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._spinner = threading.Thread(target=self._executor.spin, name="demo_spin", daemon=True)
        self._spinner.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_node()
        self._executor.shutdown()
        self._node.destroy_node()
        self._context.try_shutdown()
        self._spinner.join(timeout=5.0)
        self._reader.join(timeout=5.0)

    def _stop_node(self) -> None:
        """SIGINT first (the node shuts down cleanly), then harder."""
        if self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=15.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _forward_node_output(self) -> None:
        for line in self._process.stdout:
            line = line.rstrip()
            with self._lock:
                self._log.append(line)
            print(f"[node] {line}", file=sys.stderr, flush=True)

    def node_output(self) -> list[str]:
        """Return the node process's last lines of output."""
        with self._lock:
            return list(self._log)

    def _node_failed(self) -> RuntimeError:
        self._reader.join(timeout=5.0)
        tail = "\n".join(self._log)
        return RuntimeError(
            f"the segmentation node exited with code {self._process.returncode} before the demo "
            f"finished; its last output:\n{tail}"
        )

    # --- callbacks ----------------------------------------------------------------------------

    def _on_output(self, topic: str, msg) -> None:
        now = time.monotonic()
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            if stamp in self._warmup:
                if self._first_output is None:
                    self._first_output = now - self._warmup[stamp]
                self._warmed_up.add(topic)
                return
            self._received[topic][stamp] = now
            self._last_activity = now
            if topic.endswith("/overlay"):
                self._overlays.append((stamp, msg))

    def _on_diagnostics(self, array) -> None:
        """Keep the node's latest key/values: its backend status and its camera's, merged."""
        merged = {
            kv.key: kv.value
            for status in array.status
            if "segmentation" in status.name
            for kv in status.values
        }
        if merged:
            with self._lock:
                self._diagnostics = merged

    # --- the demo -----------------------------------------------------------------------------

    def load(self, source) -> list:
        """Turn every frame of ``source`` into an Image message (decoding stays out of timing)."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header
        from tqdm import tqdm

        from seg_ros.image_codec import to_ros_image

        messages = []
        for frame in tqdm(
            source, total=source.count or None, unit="frame", desc="loading", leave=False
        ):
            encoding = "rgb8" if frame.image.ndim == 3 else "mono8"
            messages.append(to_ros_image(frame.image, encoding, Header(frame_id="camera"), Image))
        if not messages:
            raise ValueError(f"no frames in {source.describe()}")
        return messages

    def wait_ready(self, first: object, timeout_s: float) -> None:
        """Until the node is up and an untimed frame came back on every output.

        The first inference is the slowest, and DDS matches each topic on its
        own time (the node skips outputs it has not seen a subscriber for), so
        the warm-up frame goes out again every few seconds until all arrived.
        """
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while True:
            with self._lock:
                if len(self._warmed_up) == len(self.output_topics):
                    return
            if self._process.poll() is not None:
                raise self._node_failed()
            now = time.monotonic()
            if now > deadline:
                missing = sorted(set(self.output_topics) - self._warmed_up)
                raise RuntimeError(
                    f"nothing on {', '.join(missing)} within {timeout_s:.0f} s of starting the "
                    "segmentation node (still loading its model? raise --startup-timeout)"
                )
            if now >= next_send and self._node.count_subscribers(self.input_topic) > 0:
                first.header.stamp = self._node.get_clock().now().to_msg()
                with self._lock:
                    self._warmup[(first.header.stamp.sec, first.header.stamp.nanosec)] = now
                self._publisher.publish(first)
                next_send = now + WARMUP_RESEND_S
            time.sleep(0.05)

    def send(self, messages: list, count: int, rate_hz: float) -> None:
        """Publish ``count`` frames at ``rate_hz`` with fresh stamps, then let the outputs settle.

        The frames cycle through ``messages``.
        """
        period = 1.0 / rate_hz
        start = time.monotonic()
        for index in range(count):
            msg = messages[index % len(messages)]
            delay = start + index * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self._process.poll() is not None:
                raise self._node_failed()
            msg.header.stamp = self._node.get_clock().now().to_msg()
            stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            with self._lock:
                self._sent[stamp] = time.monotonic()
                self._last_activity = self._sent[stamp]
            self._publisher.publish(msg)
        # Done when every frame came back on every output, or when nothing happened for a while.
        while True:
            with self._lock:
                complete = all(len(got) >= len(self._sent) for got in self._received.values())
                idle = time.monotonic() - self._last_activity
                latencies = [
                    t - self._sent[s]
                    for s, t in self._received[self.output_topics[0]].items()
                    if s in self._sent
                ]
            if complete or idle > max(5.0, 3 * max(latencies, default=0.0)):
                break
            if self._process.poll() is not None:
                raise self._node_failed()
            time.sleep(0.05)
        time.sleep(DIAGNOSTICS_WAIT_S)  # one more /diagnostics message with the final counters

    def report(self) -> dict:
        label_topic = self.output_topics[0]
        with self._lock:
            received = {topic.rsplit("/", 1)[1]: len(got) for topic, got in self._received.items()}
            matched = sorted(
                (t, t - self._sent[s])
                for s, t in self._received[label_topic].items()
                if s in self._sent
            )
            node = dict(self._diagnostics)
        latencies = np.array([lat for _, lat in matched]) * 1e3
        times = [t for t, _ in matched]
        rate = (
            (len(times) - 1) / (times[-1] - times[0])
            if len(times) > 1 and times[-1] > times[0]
            else 0.0
        )
        if latencies.size:
            p50, p95 = p50_p95(latencies)
            latency = {"p50": p50, "p95": p95, "max": float(latencies.max())}
        else:  # nothing came back: no figures (None, so the JSON stays strict)
            latency = {"p50": None, "p95": None, "max": None}
        first = None if self._first_output is None else self._first_output * 1e3
        return {
            "frames_sent": len(self._sent),
            "warmup_frames_sent": len(self._warmup),  # untimed, but the node counts them too
            "received": received,
            "output_rate_hz": rate,
            "latency_ms": latency,
            "first_frame_ms": first,
            "node": node,
            "input_topic": self.input_topic,
        }

    def save_overlays(self, folder: Path, count: int) -> list[Path]:
        """Write up to ``count`` received overlays, spread over the sequence, as PNGs."""
        import cv2

        from seg_ros.image_codec import decode_image

        with self._lock:
            overlays = sorted(self._overlays, key=lambda item: item[0])
        if not overlays or count <= 0:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        picks = sorted(
            {int(round(i)) for i in np.linspace(0, len(overlays) - 1, min(count, len(overlays)))}
        )
        paths = []
        for index in picks:
            _, msg = overlays[index]
            path = folder / f"overlay_{index:03d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(decode_image(msg), cv2.COLOR_RGB2BGR)):
                raise RuntimeError(f"cannot write {path} (is {folder} writable?)")
            paths.append(path)
        return paths
