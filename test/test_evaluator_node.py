"""The live evaluator over real DDS, fed from a rosbags-written bag with the original stamps.

1. Known predictions: the test publishes the bag's ground truth and, for each
   image, the red-channel prediction of test_evaluate's scene; the evaluator
   (its own process) must report exactly what the offline loop reports.
2. The real chain: the segmentation node (own process, torch, one thread) and
   the evaluator; its confusion matrix must equal `seg_ros evaluate` on the
   same bag with the same weights.
"""

from __future__ import annotations

import array
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_evaluate import IGNORE, NAMES, NUM_CLASSES, RedChannelPipeline, write_bag

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from seg_ros.evaluation.metrics import Evaluation  # noqa: E402
from seg_ros.evaluation.offline import evaluate_frames  # noqa: E402
from seg_ros.evaluation.sources import BagSource  # noqa: E402
from seg_ros.image_codec import decode_image, encode_fields  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE
)
REPO = Path(__file__).resolve().parents[1]


def to_rclpy(bag_msg) -> Image:
    """Convert a rosbags-deserialised Image to an rclpy Image with the same header and pixels."""
    msg = Image()
    msg.header.stamp.sec = int(bag_msg.header.stamp.sec)
    msg.header.stamp.nanosec = int(bag_msg.header.stamp.nanosec)
    msg.header.frame_id = str(bag_msg.header.frame_id)
    msg.height, msg.width, msg.encoding = (
        int(bag_msg.height),
        int(bag_msg.width),
        str(bag_msg.encoding),
    )
    msg.is_bigendian, msg.step = int(bag_msg.is_bigendian), int(bag_msg.step)
    msg.data = array.array("B", bytes(bag_msg.data))
    return msg


def bag_messages(path):
    """(topic, rosbags message) in bag order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        for conn, _, raw in reader.messages():
            if conn.msgtype == "sensor_msgs/msg/Image":
                yield conn.topic, reader.deserialize(raw, conn.msgtype)


class Process:
    """A node in its own Python process; stopped with SIGINT like Ctrl-C, killed if it hangs."""

    def __init__(self, module: str, ros_args: list[str], log: Path):
        self.log = log
        self._file = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--ros-args", *ros_args],
            cwd=REPO,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def ros_node():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("evaluation_test_player", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    node.spin = lambda seconds: executor.spin_once(timeout_sec=seconds)
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def wait_for(node, condition, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while not condition():
        for p in processes:
            if p.proc.poll() is not None:
                raise AssertionError(
                    f"{p.log.name} exited while waiting for {what}:\n{p.output()[-3000:]}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(p.output()[-2000:] for p in processes)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        node.spin(0.05)


def start_evaluator(tmp_path, label_topic: str, extra=()) -> tuple[Process, Path]:
    json_path = tmp_path / "live.json"
    proc = Process(
        "seg_ros.evaluator_node",
        [
            "-r",
            f"label:={label_topic}",
            "-r",
            "ground_truth:=/cam/labels",
            "-p",
            f"json_path:={json_path}",
            "-p",
            "publish_period:=0.2",
            *extra,
        ],
        tmp_path / "evaluator.log",
    )
    return proc, json_path


def test_live_evaluator_matches_offline_on_known_predictions(ros_node, tmp_path):
    bag = tmp_path / "drive"
    write_bag(bag)
    offline = Evaluation(NAMES, IGNORE)
    evaluate_frames(
        RedChannelPipeline(),
        BagSource(bag, "/cam/image_raw", "/cam/labels"),
        offline,
        progress=False,
    )

    evaluator, json_path = start_evaluator(
        tmp_path,
        "/test/prediction",
        [
            "-p",
            "class_table:=''",
            "-p",
            f"num_classes:={NUM_CLASSES}",
            "-p",
            f"ignore_index:={IGNORE}",
        ],
    )
    summaries = []
    ros_node.create_subscription(
        String, "/evaluator_node/metrics", lambda m: summaries.append(json.loads(m.data)), 10
    )
    truth_pub = ros_node.create_publisher(Image, "/cam/labels", RELIABLE)
    pred_pub = ros_node.create_publisher(Image, "/test/prediction", RELIABLE)
    try:
        wait_for(
            ros_node,
            lambda: truth_pub.get_subscription_count() and pred_pub.get_subscription_count(),
            60,
            "the evaluator to subscribe",
            [evaluator],
        )
        for topic, msg in bag_messages(bag):
            if topic == "/cam/labels":
                truth_pub.publish(to_rclpy(msg))
            else:  # the "segmentation" of this image, same header
                prediction = (decode_image(msg)[..., 0] // 40).astype(np.uint8)
                out = to_rclpy(msg)
                fields = encode_fields(prediction, "mono8")
                out.encoding, out.step = fields["encoding"], fields["step"]
                out.data = array.array("B", fields["data"].tobytes())
                pred_pub.publish(out)
        # 4 scored + 1 size mismatch are settled; frame 3's label and the orphan truth wait
        # until shutdown
        wait_for(
            ros_node,
            lambda: summaries and summaries[-1]["frames"]["total"] == 5,
            60,
            "5 settled frames on ~/metrics",
            [evaluator],
        )
    finally:
        assert evaluator.stop() == 0, evaluator.output()
    live = json.loads(json_path.read_text())
    assert live["confusion_matrix"] == offline.confusion.counts.tolist()
    assert live["miou"] == pytest.approx(offline.to_dict()["miou"])
    assert live["boundary_f1"] == pytest.approx(offline.to_dict()["boundary_f1"])
    assert live["frames"] == {
        "used": 4,
        "skipped": {"dropped": 1, "label_without_ground_truth": 1, "size_mismatch": 1},
        "total": 7,
    }
    assert live["dropped_frames"] == 1
    # the ground truth was sent late; latency exists only for frames whose truth still
    # arrived first
    assert live["latency_ms"].get("end_to_end", {"count": 0})["count"] <= 4
    assert "final: mIoU" in evaluator.output()


def run_offline_cli(argv: list[str]) -> int:
    import argparse

    from seg_ros.commands import evaluate

    parser = argparse.ArgumentParser(prog="seg_ros")
    evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


@pytest.mark.slow
def test_segmentation_node_and_evaluator_agree_with_offline_evaluate(
    ros_node, tmp_path, tiny_weights
):
    bag = tmp_path / "drive"
    write_bag(bag)
    model_args = [
        "--weights",
        str(tiny_weights),
        "--backend",
        "torch",
        "--threads",
        "1",
        "--height",
        "48",
        "--width",
        "64",
        "--ignore-index",
        str(IGNORE),
    ]
    offline_json = tmp_path / "offline.json"
    assert (
        run_offline_cli(
            [
                "--bag",
                str(bag),
                "--image-topic",
                "/cam/image_raw",
                "--label-topic",
                "/cam/labels",
                "--json",
                str(offline_json),
                "--no-progress",
                *model_args,
            ]
        )
        == 0
    )
    offline = json.loads(offline_json.read_text())

    node = Process(
        "seg_ros.node",
        [
            "-r",
            "image:=/cam/image_raw",
            "-p",
            f"weights:={tiny_weights}",
            "-p",
            "backend:=torch",
            "-p",
            "threads:=1",
            "-p",
            "input_height:=48",
            "-p",
            "input_width:=64",
            "-p",
            "qos.reliability:=reliable",
            "-p",
            "qos.depth:=10",
        ],
        tmp_path / "segmentation.log",
    )
    evaluator, json_path = start_evaluator(
        tmp_path,
        "/segmentation_node/label",
        [
            "-p",
            "class_table:=''",
            "-p",
            f"num_classes:={NUM_CLASSES}",
            "-p",
            f"ignore_index:={IGNORE}",
        ],
    )
    seen = set()
    ros_node.create_subscription(
        Image,
        "/segmentation_node/label",
        lambda m: seen.add((m.header.stamp.sec, m.header.stamp.nanosec)),
        RELIABLE,
    )
    image_pub = ros_node.create_publisher(Image, "/cam/image_raw", RELIABLE)
    truth_pub = ros_node.create_publisher(Image, "/cam/labels", RELIABLE)
    try:
        wait_for(
            ros_node,
            lambda: (
                image_pub.get_subscription_count()
                and truth_pub.get_subscription_count()
                and ros_node.count_publishers("/segmentation_node/label")
            ),
            120,
            "the nodes to connect",
            [node, evaluator],
        )
        time.sleep(1.0)  # let the evaluator's label subscription match the node's publisher too
        messages = list(bag_messages(bag))
        truth = {
            (m.header.stamp.sec, m.header.stamp.nanosec): m
            for t, m in messages
            if t == "/cam/labels"
        }
        for topic, msg in messages:
            if topic == "/cam/labels":
                continue
            stamp = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
            if (
                stamp in truth
            ):  # like a player replaying a bag whose labels were recorded with the images
                truth_pub.publish(to_rclpy(truth.pop(stamp)))
            image_pub.publish(to_rclpy(msg))
            # one frame at a time: the node keeps only the newest frame, and this test wants
            # every one
            wait_for(
                ros_node, lambda: stamp in seen, 60, f"the label of {stamp}", [node, evaluator]
            )
        for msg in truth.values():  # the label without an image
            truth_pub.publish(to_rclpy(msg))
        time.sleep(1.0)
    finally:
        node.stop()
        assert evaluator.stop() == 0, evaluator.output()
    live = json.loads(json_path.read_text())
    assert live["frames"]["used"] == offline["frames"]["used"] == 4
    assert live["confusion_matrix"] == offline["confusion_matrix"]
    assert live["miou"] == pytest.approx(offline["miou"])
    assert live["boundary_f1"] == pytest.approx(offline["boundary_f1"])
    # truth is sent before each image, so it normally arrives before the label (DDS does
    # not promise it)
    assert 1 <= live["latency_ms"]["end_to_end"]["count"] <= 4
    assert live["frames"]["skipped"] == {
        "dropped": 1,
        "label_without_ground_truth": 1,
        "size_mismatch": 1,
    }
