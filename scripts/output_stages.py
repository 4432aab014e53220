#!/usr/bin/env python3
"""Time the node's output stages on one frame size, with OpenCV on one thread and on several.

    .venv/bin/python scripts/output_stages.py --frame-size 1080x1920 --network-size 240x320

For each OpenCV thread count (alternated, --rounds times) prints the p50 wall-clock time, the
calling thread's CPU time (what the node's ``node_cpu`` counts) and the process's CPU time (what
OpenCV's worker threads add) of: resizing label and confidence back, the colour mask looked up on
the resized label, the same looked up at network size and resized, and the overlay.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from seg_ros.classes import load_class_table
from seg_ros.sizes import parse_size
from seg_ros.timing import percentiles
from seg_ros.visualize import colorize, overlay


def stages(height: int, width: int, small_h: int, small_w: int) -> dict:
    rng = np.random.default_rng(0)
    palette = np.zeros((256, 3), np.uint8)
    colors = load_class_table("camvid").colors
    palette[: len(colors)] = colors
    small = rng.integers(0, len(colors), (small_h, small_w)).astype(np.uint8)
    confidence = rng.random((small_h, small_w), dtype=np.float32)
    label = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    color = colorize(label, palette)
    return {
        "resize label": lambda: cv2.resize(
            small, (width, height), interpolation=cv2.INTER_NEAREST
        ),
        "resize confidence": lambda: cv2.resize(
            confidence, (width, height), interpolation=cv2.INTER_LINEAR
        ),
        "colour, full size": lambda: colorize(label, palette),
        "colour, network size + resize": lambda: colorize(small, palette, size=(height, width)),
        "overlay": lambda: overlay(image, color, 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame-size", default="1080x1920", help="HEIGHTxWIDTH of the camera")
    parser.add_argument("--network-size", default="240x320", help="HEIGHTxWIDTH of the network")
    parser.add_argument("--threads", default="1,2", help="OpenCV thread counts to compare")
    parser.add_argument("--calls", type=int, default=40, help="calls per stage per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cases = stages(*parse_size(args.frame_size), *parse_size(args.network_size))
    counts = [int(t) for t in args.threads.split(",")]
    samples = {(n, name): [] for n in counts for name in cases}
    for _ in range(args.rounds):
        for n in counts:
            cv2.setNumThreads(n)
            for name, call in cases.items():
                for _ in range(args.calls):
                    w, c, p = time.perf_counter(), time.thread_time(), time.process_time()
                    call()
                    samples[n, name].append(
                        (time.perf_counter() - w, time.thread_time() - c, time.process_time() - p)
                    )
    print(f"{'stage':32s} {'threads':>7s} {'wall':>7s} {'thread':>7s} {'process':>7s}  (ms, p50)")
    for name in cases:
        for n in counts:
            wall, thread, process = (
                percentiles(np.asarray(samples[n, name])[:, i] * 1e3, (50,))[0] for i in range(3)
            )
            print(f"{name:32s} {n:7d} {wall:7.2f} {thread:7.2f} {process:7.2f}")


if __name__ == "__main__":
    main()
