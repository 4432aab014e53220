#!/usr/bin/env python3
"""Measure whether camera-sized frames reach the node and come back, with nothing set by hand.

Plays a camera driver with ROS's default publisher QoS (reliable, depth 10) and an empty DDS
environment, publishing rgb8 frames at a fixed rate into a real ``segmentation_node`` process,
and subscribes to its four outputs like RViz. For each size and each node set-up it prints the
frames sent, what the node's /diagnostics counted (received, dropped, processed) and what came
back on each output. Set-ups:

- ``seg_ros``: the node as shipped (qos.reliability auto, config/fastdds_node.xml);
- ``best_effort``: the sensor-data input profile and Fast DDS's defaults (the old behaviour);
- ``large_data_node``: FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in the node's process only.

The network runs at a small input size: this measures transport, not the model.

    .venv/bin/python scripts/camera_transport.py --sizes 480x640,720x1280,1080x1920 --rate 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from seg_ros.commands import demo
from seg_ros.demo_session import DemoSession
from seg_ros.dds import USER_SETTINGS
from seg_ros.sizes import format_size, parse_size

SETUPS = {
    "seg_ros": ({}, []),
    "best_effort": ({"SEG_ROS_FASTDDS_PROFILE": "none"}, ["qos.reliability:=best_effort"]),
    "large_data_node": ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, []),
}


class SyntheticCamera:
    """A few random frames of one size, cycled; what DemoSession.load expects of a source."""

    def __init__(self, width: int, height: int, count: int = 4):
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 255, (height, width, 3), np.uint8) for _ in range(count)]
        self.count = count

    def __iter__(self):
        for image in self.frames:
            yield argparse.Namespace(image=image)

    def describe(self) -> str:
        height, width = self.frames[0].shape[:2]
        return f"synthetic {format_size(height, width)} rgb8"


def measure(size: tuple[int, int], setup: str, args: argparse.Namespace) -> dict:
    height, width = size
    node_env, params = SETUPS[setup]
    commands = argparse.ArgumentParser().add_subparsers()
    demo.register(commands)
    node_args = commands.choices["demo"].parse_args(
        ["--height", str(args.net_height), "--width", str(args.net_width)]
        + [item for p in params for item in ("--param", p)]
    )
    command = ["env"] + [f"{k}={v}" for k, v in node_env.items()] + demo.node_command(node_args)
    with DemoSession(
        command, demo.INPUT_TOPIC, [f"/{demo.NODE_NAME}/{name}" for name in demo.OUTPUTS]
    ) as session:
        frames = session.load(SyntheticCamera(width, height))
        sent = int(args.seconds * args.rate)
        try:
            session.wait_ready(frames[0], args.startup_timeout)
        except RuntimeError as exc:  # the warm-up frame never came back: nothing gets through
            print(f"{format_size(height, width)} {setup}: {exc}", flush=True)
            sent = 0
        else:
            session.send(frames, sent, args.rate)
        report = session.report()
    node = report.get("node", {})
    return {
        "size": format_size(height, width),
        "setup": setup,
        "rate_hz": args.rate,
        "sent": sent,
        "node_received": node.get("frames_received"),
        "node_dropped": node.get("frames_dropped"),
        "node_lost_in_transport": node.get("frames_lost_in_transport"),
        "outputs": report["received"],
        "latency_p50_ms": report["latency_ms"]["p50"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="480x640,720x1280,1080x1920", help="camera sizes, HEIGHTxWIDTH"
    )
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--rate", type=float, default=5.0, help="camera rate in Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="frames = rate x seconds")
    parser.add_argument("--net-height", type=int, default=96, help="network input height")
    parser.add_argument("--net-width", type=int, default=128, help="network input width")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        help="seconds for the first frame to come back before a set-up counts as passing nothing",
    )
    parser.add_argument("--json", default="", help="write the rows as JSON")
    args = parser.parse_args()
    for name in USER_SETTINGS:  # a camera with nothing set by hand
        os.environ.pop(name, None)
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    rows = []
    for text in args.sizes.split(","):
        for setup in args.setups.split(","):
            row = measure(parse_size(text), setup, args)
            rows.append(row)
            outputs = " ".join(f"{k} {v}" for k, v in row["outputs"].items())
            print(
                f"{row['size']:>9} {setup:<16} sent {row['sent']:>4}  node received "
                f"{row['node_received']} dropped {row['node_dropped']} lost "
                f"{row['node_lost_in_transport']}  back: {outputs}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
