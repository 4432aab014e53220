#!/usr/bin/env python3
"""Soak the node: thousands of camera frames, resident memory and frame accounting checked.

Starts the real ``segmentation_node`` (default model and parameters), plays the package's
sample frames resized to the camera size at a fixed rate, and samples the node process's
resident memory (VmRSS) after the warm-up part and at the end. Every frame sent must be
accounted for in the node's /diagnostics: received = sent, and received = published + dropped
+ skipped + bad (nothing lost silently).

    .venv/bin/python scripts/soak.py --frames 3000 --warmup-frames 200 --rate 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2

from seg_ros.commands import demo
from seg_ros.demo_session import DemoSession
from seg_ros.image_sources import open_image_source
from seg_ros.sizes import format_size


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


class ResizedSamples:
    """The shipped sample frames at the camera's size (what DemoSession.load expects)."""

    def __init__(self, width: int, height: int):
        source = open_image_source(demo.default_data())
        self.frames = [cv2.resize(f.image, (width, height)) for f in source]
        self.count = len(self.frames)

    def __iter__(self):
        for image in self.frames:
            yield argparse.Namespace(image=image)

    def describe(self) -> str:
        height, width = self.frames[0].shape[:2]
        return f"{self.count} sample frames resized to {format_size(height, width)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames after the warm-up")
    parser.add_argument(
        "--warmup-frames", type=int, default=200, help="frames before the baseline"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--json", default="", help="write the results as JSON")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    commands = argparse.ArgumentParser().add_subparsers()
    demo.register(commands)
    command = demo.node_command(commands.choices["demo"].parse_args([]))
    outputs = [f"/{demo.NODE_NAME}/{name}" for name in demo.OUTPUTS]
    with DemoSession(command, demo.INPUT_TOPIC, outputs) as session:
        frames = session.load(ResizedSamples(args.width, args.height))
        session.wait_ready(frames[0], 300.0)
        pid = session._process.pid
        session.send(frames, args.warmup_frames, args.rate)
        baseline = rss_mib(pid)
        print(f"after {args.warmup_frames} frames: node RSS {baseline:.1f} MiB", flush=True)
        session.send(frames, args.frames, args.rate)
        final = rss_mib(pid)
        report = session.report()
    node = report.get("node", {})
    growth = 100.0 * (final - baseline) / baseline
    result = {
        "frames_sent": args.warmup_frames + args.frames,
        "rate_hz": args.rate,
        "size": format_size(args.height, args.width),
        "rss_after_warmup_mib": round(baseline, 1),
        "rss_final_mib": round(final, 1),
        "rss_growth_percent": round(growth, 2),
        "node": node,
        "outputs_received": report["received"],
    }
    print(
        f"after {result['frames_sent']} frames: node RSS {final:.1f} MiB ({growth:+.2f} %); "
        f"node counted {node.get('frames_received')} received, "
        f"{node.get('frames_published')} published, {node.get('frames_dropped')} dropped, "
        f"{node.get('frames_skipped_no_subscriber')} skipped, {node.get('frames_bad')} bad"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
