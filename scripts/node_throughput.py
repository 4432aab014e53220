#!/usr/bin/env python3
"""Flood the segmentation node with camera frames and compare its output rate with the backend alone.

    .venv/bin/python scripts/node_throughput.py --seconds 20 --model deeplab --backend onnxruntime

1. starts ``python -m seg_ros.node`` as its own process (the parameters below, via --params-file);
2. times the same model, backend and network size without ROS (``backend.infer`` in a loop,
   the number ``seg_ros benchmark`` reports) while the node waits idle;
3. publishes WIDTHxHEIGHT rgb8 frames at --rate Hz for --seconds with label, confidence, colour
   and overlay all subscribed, and measures the output rate and the output age (receive time
   minus send time) in the first and second half: an age that grows means a queue builds up.

Prints one JSON object (and writes it to --json when given).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

OUTPUTS = ("label", "confidence", "color", "overlay")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="flood duration")
    parser.add_argument(
        "--rate", type=float, default=30.0, help="frames per second sent (above the node's rate)"
    )
    parser.add_argument(
        "--frame-size", default="640x480", help="WIDTHxHEIGHT of the camera frames"
    )
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--weights", default="")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--height", type=int, default=0, help="network input height (0: the model's)"
    )
    parser.add_argument(
        "--width", type=int, default=0, help="network input width (0: the model's)"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--qos-depth", type=int, default=0, help="the node's qos.depth (0: its default)"
    )
    parser.add_argument("--json", default="", help="also write the results here")
    return parser.parse_args()


def node_parameters(args) -> dict:
    parameters = {
        "model": args.model,
        "backbone": args.backbone,
        "weights": args.weights,
        "backend": args.backend,
        "precision": args.precision,
        "input_height": args.height,
        "input_width": args.width,
        "threads": args.threads,
    }
    if args.qos_depth:
        parameters["qos.depth"] = args.qos_depth
    return parameters


def backend_only_rate(parameters: dict, seconds: float) -> tuple[float, str]:
    """Inferences per second of the backend alone, on the node's network input, as the benchmark does it."""
    from seg_ros.node_parameters import pipeline_config, validate
    from seg_ros.pipeline import COMPACT_OUTPUTS, build_pipeline

    built = build_pipeline(pipeline_config(validate(parameters)))
    pipeline = built.pipeline
    _, batch = pipeline.preprocess(
        np.zeros((pipeline.input_height, pipeline.input_width, 3), np.uint8)
    )
    for _ in range(3):  # warm-up
        pipeline.backend.infer(batch, COMPACT_OUTPUTS)
    count, start = 0, time.perf_counter()
    with tqdm(desc="backend only", unit="s", total=int(seconds)) as bar:
        while (elapsed := time.perf_counter() - start) < seconds:
            pipeline.backend.infer(batch, COMPACT_OUTPUTS)
            count += 1
            if int(elapsed) > bar.n:
                bar.update(int(elapsed) - bar.n)
    rate = count / (time.perf_counter() - start)
    pipeline.backend.close()
    return rate, built.backend_name


def main() -> int:
    args = parse_args()
    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 60))
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from seg_ros.node_parameters import NODE_NAME

    parameters = node_parameters(args)
    workdir = Path(tempfile.mkdtemp(prefix="seg_ros_throughput_"))
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": parameters}}))
    log_path = workdir / "node.log"
    with log_path.open("wb") as log:
        node_process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seg_ros.node",
                "--ros-args",
                "--params-file",
                str(params_file),
                "-r",
                "__ns:=/throughput",
                "-r",
                "image:=/throughput/camera",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    rclpy.init()
    probe = rclpy.create_node("throughput_probe")
    sent: dict[int, float] = {}  # frame number -> send time
    received: dict[str, list[tuple[int, float]]] = {
        name: [] for name in OUTPUTS
    }  # (frame number, receive time)
    diagnostics: list[dict] = []
    lock = threading.Lock()

    def collector(name):
        def collect(msg):
            now = time.perf_counter()
            with lock:
                if msg.header.stamp.sec in sent:
                    received[name].append((msg.header.stamp.sec, now))

        return collect

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for name in OUTPUTS:
        probe.create_subscription(
            Image, f"/throughput/{NODE_NAME}/{name}", collector(name), reliable
        )

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith(f"/throughput/{NODE_NAME}"):
                with lock:
                    diagnostics.append({kv.key: kv.value for kv in status.values})

    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    publisher = probe.create_publisher(Image, "/throughput/camera", QoSProfile(depth=1))
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 600
        while not diagnostics or publisher.get_subscription_count() == 0:
            if node_process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        node_setup = dict(diagnostics[-1])

        backend_rate, backend_name = backend_only_rate(parameters, min(args.seconds, 15.0))

        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        data = array.array("B")
        data.frombytes(frame.tobytes())
        start = time.perf_counter()
        period = 1.0 / args.rate
        number = 0
        with tqdm(total=int(args.seconds), desc="flooding the node", unit="s") as bar:
            while (now := time.perf_counter()) - start < args.seconds:
                number += 1
                msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
                msg.data = data
                msg.header.stamp.sec = number
                msg.header.frame_id = "camera"
                with lock:
                    sent[number] = time.perf_counter()
                publisher.publish(msg)
                if int(now - start) > bar.n:
                    bar.update(int(now - start) - bar.n)
                time.sleep(max(0.0, start + number * period - time.perf_counter()))
        flood_end = time.perf_counter()
        time.sleep(2.0)  # the last outputs and one more diagnostics report
        with lock:
            # A frame counts once all its outputs arrived; its age is when the last one did.
            arrivals: dict[int, list[float]] = {}
            for values in received.values():
                for stamp, when in values:
                    arrivals.setdefault(stamp, []).append(when)
            done = sorted(
                (max(times), max(times) - sent[stamp])
                for stamp, times in arrivals.items()
                if len(times) == len(OUTPUTS)
            )
            counts = {name: len(values) for name, values in received.items()}
            final = dict(diagnostics[-1])
        half = start + args.seconds / 2
        ages_first = [age for when, age in done if when < half]
        ages_second = [age for when, age in done if when >= half]
        warm = [
            when for when, _ in done if start + 2.0 <= when <= flood_end
        ]  # skip the first two seconds
        node_rate = (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 1 else 0.0
        result = {
            "model": node_setup.get("model_name"),
            "backend": backend_name,
            "node_backend": node_setup.get("backend"),
            "network_input": node_setup.get("input_size"),
            "frame_size": f"{width}x{height}",
            "sent_rate_hz": round(number / (flood_end - start), 2),
            "backend_only_rate_hz": round(backend_rate, 2),
            "node_output_rate_hz": round(node_rate, 2),
            "ratio": round(node_rate / backend_rate, 3) if backend_rate else None,
            "outputs_received": counts,
            "frames_complete": len(done),
            "frames_sent": number,
            "age_ms_first_half_median": round(1e3 * statistics.median(ages_first), 1)
            if ages_first
            else None,
            "age_ms_second_half_median": round(1e3 * statistics.median(ages_second), 1)
            if ages_second
            else None,
            "age_ms_second_half_p95": round(1e3 * float(np.percentile(ages_second, 95)), 1)
            if ages_second
            else None,
            "node_diagnostics": {
                k: final[k] for k in final if k.endswith("_ms") or k.startswith("frames_")
            },
        }
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()
        if node_process.poll() is None:
            node_process.send_signal(signal.SIGINT)
            try:
                node_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node_process.kill()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
