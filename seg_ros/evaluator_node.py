"""Live evaluator: scores the segmentation node's labels against ground truth during a bag replay.

Subscribes to ``label`` (remap to the segmentation node's ``~/label``) and
``ground_truth`` (the bag's label topic), pairs them by exact header stamp in
a bounded buffer, and accumulates the same metrics as ``seg_ros evaluate``
(seg_ros.evaluation.metrics). End-to-end latency is the label's arrival time
minus the ground truth's (published by the player together with the image);
a ground-truth frame that never gets a label is a dropped frame. A JSON
summary goes to ``~/metrics`` (std_msgs/String) every ``publish_period``
seconds, and at shutdown to the log and to ``json_path``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from seg_ros.classes import generic_table, load_class_table
from seg_ros.evaluation.metrics import Evaluation
from seg_ros.evaluation.sources import decode_label_message
from seg_ros.image_codec import message_to_array

NODE_NAME = "evaluator_node"


def _stamp(msg) -> tuple[int, int]:
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)


class EvaluatorNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        p = self._declare
        table_name = p(
            "class_table",
            "camvid",
            "Class table (camvid, cityscapes, voc or a YAML file) naming the "
            "classes; empty = generic names for num_classes.",
        )
        num_classes = p(
            "num_classes", 0, "Number of classes when class_table is empty.", int_range=(0, 65535)
        )
        ignore_index = p(
            "ignore_index",
            -1,
            "Ground-truth label left out of the scores; -1 = the class table's.",
            int_range=(-1, 65535),
        )
        self._json_path = p(
            "json_path", "", "Write the final metrics as JSON here at shutdown; empty = only log."
        )
        period = p(
            "publish_period",
            2.0,
            "Seconds between summaries on ~/metrics.",
            float_range=(0.1, 3600.0),
        )
        self._max_pending = p(
            "max_pending",
            100,
            "Frames waiting for their partner before counting as dropped.",
            int_range=(1, 100000),
        )
        reliable = p(
            "qos.reliability",
            "reliable",
            "Reliability of both subscriptions: reliable or best_effort.",
        )
        depth = p("qos.depth", 50, "History depth of both subscriptions.", int_range=(1, 1000))
        if reliable not in ("reliable", "best_effort"):
            raise ValueError(
                f"qos.reliability must be 'reliable' or 'best_effort', got {reliable!r}"
            )

        if table_name:
            table = load_class_table(table_name)
        elif num_classes > 0:
            table = generic_table(num_classes)
        else:
            raise ValueError("set class_table, or num_classes when class_table is empty")
        ignore = table.ignore_index if ignore_index < 0 else ignore_index
        self.evaluation = Evaluation(table.names, ignore)
        self._pending_labels: dict[tuple[int, int], tuple[Image, float]] = {}
        self._pending_truth: dict[tuple[int, int], tuple[Image, float]] = {}
        self._last_published_total = -1

        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE
            if reliable == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
        )
        self.create_subscription(Image, "label", self._on_label, qos)
        self.create_subscription(Image, "ground_truth", self._on_truth, qos)
        self._metrics = self.create_publisher(String, "~/metrics", 10)
        self.create_timer(period, self._publish)
        self.get_logger().info(
            f"scoring {self.resolve_topic_name('label')} against "
            f"{self.resolve_topic_name('ground_truth')} "
            f"({table.name}, {table.num_classes} classes, ignore {ignore})"
        )

    def _declare(self, name, default, description, int_range=None, float_range=None):
        descriptor = ParameterDescriptor(description=description, read_only=True)
        if int_range:
            descriptor.integer_range = [
                IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)
            ]
        if float_range:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)
            ]
        return self.declare_parameter(name, default, descriptor).value

    # --- matching -------------------------------------------------------------------------------

    def _on_label(self, msg: Image) -> None:
        now = time.monotonic()
        stamp = _stamp(msg)
        if stamp in self._pending_truth:
            truth, truth_arrival = self._pending_truth.pop(stamp)
            self._score(msg, truth, (now - truth_arrival) * 1e3)
        else:
            self._pending_labels[stamp] = (msg, now)
            self._trim(self._pending_labels, "label_without_ground_truth")

    def _on_truth(self, msg: Image) -> None:
        now = time.monotonic()
        stamp = _stamp(msg)
        if stamp in self._pending_labels:
            label, _ = self._pending_labels.pop(stamp)
            self._score(label, msg, None)  # the label came first: no meaningful end-to-end latency
        else:
            self._pending_truth[stamp] = (msg, now)
            self._trim(self._pending_truth, "dropped")

    def _trim(self, pending: dict, reason: str) -> None:
        while len(pending) > self._max_pending:
            pending.pop(next(iter(pending)))
            self.evaluation.skip(reason)

    def _score(self, label_msg: Image, truth_msg: Image, latency_ms: float | None) -> None:
        key = "%010d_%09d" % _stamp(truth_msg)
        try:
            truth = decode_label_message(truth_msg, compressed=False)
            label = message_to_array(label_msg)
        except ValueError as exc:
            self.evaluation.skip("undecodable_label")
            self.get_logger().warning(f"frame {key}: {exc}", throttle_duration_sec=5.0)
            return
        if truth.shape != label.shape:
            self.evaluation.skip("size_mismatch")
            self.get_logger().warning(
                f"frame {key}: ground truth is {truth.shape[1]}x{truth.shape[0]} but the label is "
                f"{label.shape[1]}x{label.shape[0]}",
                throttle_duration_sec=5.0,
            )
            return
        try:
            self.evaluation.add_frame(
                truth, label, {"end_to_end": latency_ms} if latency_ms is not None else None
            )
        except ValueError as exc:
            self.evaluation.skip("invalid_ground_truth")
            self.get_logger().warning(f"frame {key}: {exc}", throttle_duration_sec=5.0)

    # --- reporting ------------------------------------------------------------------------------

    def summary(self, final: bool = False) -> dict:
        """Return the metrics so far; ``final`` counts ground truth still waiting as dropped."""
        out = self.evaluation.to_dict()
        frames = out["frames"]
        if final:
            for reason, pending in (
                ("dropped", self._pending_truth),
                ("label_without_ground_truth", self._pending_labels),
            ):
                if pending:
                    frames["skipped"][reason] = frames["skipped"].get(reason, 0) + len(pending)
                    frames["total"] += len(pending)
        out["dropped_frames"] = frames["skipped"].get("dropped", 0)
        out["pending"] = 0 if final else len(self._pending_truth)
        return out

    def _publish(self) -> None:
        total = self.evaluation.frames.used + sum(self.evaluation.frames.skipped.values())
        if total == self._last_published_total:
            return
        self._last_published_total = total
        self._metrics.publish(String(data=json.dumps(self.summary())))

    def finish(self) -> dict:
        """Log the final summary, write it to json_path when set, and return it."""
        result = self.summary(final=True)
        miou = result["miou"]
        frames = result["frames"]
        e2e = result["latency_ms"].get("end_to_end")
        self.get_logger().info(
            f"final: mIoU {'n/a' if miou is None else f'{100 * miou:.2f}%'}, "
            f"{frames['used']} frames scored, {result['dropped_frames']} dropped, "
            f"skipped {frames['skipped']}"
            + (
                f", end-to-end latency p50 {e2e['p50']:.1f} ms p95 {e2e['p95']:.1f} ms"
                if e2e
                else ""
            )
        )
        if self._json_path:
            path = Path(self._json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
        return result


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = EvaluatorNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError) as exc:
        print(f"evaluator_node: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.finish()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
