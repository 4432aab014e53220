#!/usr/bin/env python3
"""Play cameras into the segmentation node at a fixed rate; compare with the backend alone.

    .venv/bin/python scripts/node_throughput.py --seconds 20 --rate 30 --frame-size 480x640
    .venv/bin/python scripts/node_throughput.py --cameras 1,2,4 --layout both --seconds 20
    .venv/bin/python scripts/node_throughput.py --pipelining auto,overlap  # side by side

1. times the model, backend and network size without ROS (``backend.infer`` on a batch of
   one in a loop: the number ``seg_ros benchmark`` reports);
2. for each camera count and layout starts the node(s) as their own processes:
   ``one-node`` is one node with ``cameras: [cam0, cam1, ...]`` (one model, batched), or the
   single ``image`` input for one camera; ``separate-nodes`` is one single-camera node per
   camera, each with its own model;
3. publishes WIDTHxHEIGHT rgb8 frames on every camera at --rate Hz (paced by the clock, not a
   busy loop) for --seconds with label, confidence, colour and overlay all subscribed, and
   measures the output rate (frames whose four outputs all arrived), the output age (receive
   minus send time) in each half of the run (an age that grows means a queue builds up), the
   node's own per-stage p50s from /diagnostics (decode + preprocess + postprocess + publish:
   what the node adds to the network, in wall-clock time; node_cpu: the CPU time the node's own
   threads spent on a frame, whatever else runs) and the resident memory (VmRSS) of the nodes.

Each run's ``ratio_to_backend_alone`` divides the output rate by the backend-alone rate, and
``ratio_to_reachable`` by the smaller of that and the rate the cameras send.

Prints one JSON object (and writes it to --json when given).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from seg_ros.sizes import format_size, parse_size
from seg_ros.timing import percentiles

OUTPUTS = ("label", "confidence", "color", "overlay")
NODE_STAGES = ("decode", "preprocess", "postprocess", "publish")  # everything but the network
NAMESPACE = "throughput"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each run plays")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    parser.add_argument("--frame-size", default="480x640", help="HEIGHTxWIDTH of the frames")
    parser.add_argument(
        "--cameras", default="1", help="comma-separated camera counts to run, e.g. 1,2,4"
    )
    parser.add_argument(
        "--layout",
        choices=("one-node", "separate-nodes", "both"),
        default="one-node",
        help="several cameras in one node, one node per camera, or both",
    )
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--weights", default="")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--height", type=int, default=0, help="network input height (0: model's)")
    parser.add_argument("--width", type=int, default=0, help="network input width (0: model's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reliability", default="", help="the node's qos.reliability")
    parser.add_argument(
        "--pipelining",
        default="auto",
        help="the node's pipelining, or several comma-separated to run one after the other",
    )
    parser.add_argument(
        "--transport",
        choices=("seg_ros", "default"),
        default="seg_ros",
        help="the nodes' Fast DDS set-up: seg_ros's profile (as the node applies it) or defaults",
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
    if args.reliability:
        parameters["qos.reliability"] = args.reliability
    return parameters


def backend_only_rate(parameters: dict, seconds: float) -> tuple[float, str]:
    """Return inferences per second of the backend alone on the node's network input."""
    from seg_ros.node_parameters import pipeline_config, validate
    from seg_ros.pipeline import COMPACT_OUTPUTS, build_pipeline

    built = build_pipeline(pipeline_config(validate(parameters)))
    pipeline = built.pipeline
    batch = np.zeros((1, 3, pipeline.input_height, pipeline.input_width), np.float32)
    for _ in range(3):  # warm-up
        pipeline.backend.infer(batch, COMPACT_OUTPUTS)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pipeline.backend.infer(batch, COMPACT_OUTPUTS)
        count += 1
    rate = count / (time.perf_counter() - start)
    pipeline.backend.close()
    return rate, built.backend_name


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def start_nodes(
    parameters: dict, cameras: int, layout: str, workdir: Path, transport: str
) -> list:
    """Return [(process, {camera: (input topic, output prefix)}, log path)]."""
    from seg_ros.node_parameters import NODE_NAME

    plans = []
    if layout == "one-node" and cameras > 1:
        names = [f"cam{i}" for i in range(cameras)]
        topics = {n: (f"/{NAMESPACE}/{n}/image", f"/{NAMESPACE}/{NODE_NAME}/{n}") for n in names}
        plans.append(("n0", {**parameters, "cameras": names}, topics, []))
    else:
        for i in range(cameras):
            namespace = f"/{NAMESPACE}/n{i}"
            topics = {f"cam{i}": (f"{namespace}/image", f"{namespace}/{NODE_NAME}")}
            plans.append((f"n{i}", parameters, topics, ["-r", f"__ns:={namespace}"]))
    started = []
    for tag, values, topics, remaps in plans:
        params_file = workdir / f"{tag}.yaml"
        params_file.write_text(yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": values}}))
        log_path = workdir / f"{tag}.log"
        if not remaps:
            remaps = ["-r", f"__ns:=/{NAMESPACE}"]
        env = dict(os.environ)
        if transport == "default":  # else the node's main() applies seg_ros's (seg_ros.dds)
            from seg_ros.dds import PROFILE_OVERRIDE

            env[PROFILE_OVERRIDE] = "none"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "seg_ros.node", "--ros-args", "--params-file"]
                + [str(params_file)]
                + remaps,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        started.append((process, topics, log_path))
    return started


def stop_nodes(started: list) -> None:
    for process, _, _ in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process, _, _ in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _median_ms(values: list[float]) -> float | None:
    return round(1e3 * statistics.median(values), 1) if values else None


def play(args, parameters: dict, cameras: int, layout: str, frame: np.ndarray) -> dict:
    """Run one arrangement; return its measurements."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from seg_ros.image_cdr import cdr_string, parse_image, serialize_image

    workdir = Path(tempfile.mkdtemp(prefix="seg_ros_throughput_"))
    started = start_nodes(parameters, cameras, layout, workdir, args.transport)
    topics = {name: t for _, mapping, _ in started for name, t in mapping.items()}
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("throughput_probe", context=context)
    lock = threading.Lock()
    sent: dict[tuple[str, int], float] = {}
    arrivals: dict[tuple[str, int], list[float]] = {}
    diagnostics: dict[str, dict] = {}

    def collect(data: bytes) -> None:  # raw: only the header is read
        now = time.perf_counter()
        raw = parse_image(data)
        key = (raw.frame_id, raw.stamp[0])
        with lock:
            if key in sent:
                arrivals.setdefault(key, []).append(now)

    def on_diagnostics(msg) -> None:
        with lock:
            for status in msg.status:
                if status.name.startswith(f"/{NAMESPACE}/"):
                    diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for _, prefix in topics.values():
        for name in OUTPUTS:
            probe.create_subscription(Image, f"{prefix}/{name}", collect, reliable, raw=True)
    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    publishers = {
        name: probe.create_publisher(Image, topic, QoSProfile(depth=1))
        for name, (topic, _) in topics.items()
    }
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 900
        while not (
            all(p.get_subscription_count() for p in publishers.values())
            and len(diagnostics) >= len(started)
        ):
            for process, _, log_path in started:
                if process.poll() is not None or time.monotonic() > deadline:
                    time.sleep(1.0)  # its last words reach the log
                    raise RuntimeError(f"a node did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        time.sleep(2.0)  # let every node settle before the clock starts
        start = time.perf_counter()
        period = 1.0 / args.rate
        number = 0
        while time.perf_counter() - start < args.seconds:
            number += 1
            for name, publisher in publishers.items():
                # Serialised once per frame from the array (the camera's cost, kept small).
                header = struct.pack("<iI", number, 0) + cdr_string(name)
                msg = serialize_image(frame, "rgb8", header)
                with lock:
                    sent[(name, number)] = time.perf_counter()
                publisher.publish(msg)
            time.sleep(max(0.0, start + number * period - time.perf_counter()))
        play_end = time.perf_counter()
        time.sleep(2.0)  # the last outputs and one more diagnostics report
        rss = [rss_mib(process.pid) for process, _, _ in started]
        with lock:
            done = sorted(
                (max(times), max(times) - sent[key], key[0])
                for key, times in arrivals.items()
                if len(times) == len(OUTPUTS)
            )
            final = dict(diagnostics)
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_nodes(started)
    half = start + args.seconds / 2
    warm = [when for when, _, _ in done if start + 2.0 <= when <= play_end]
    output_rate = (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 1 else 0.0
    ages = [age for _, age, _ in done]
    stage_p50 = {}
    for name, values in final.items():
        if "input_topic" not in values:
            continue  # the shared backend's status
        stage_p50[values["input_topic"]] = {
            stage: float(values[f"{stage}_p50_ms"])
            for stage in NODE_STAGES + ("inference", "age", "node_cpu")
            if f"{stage}_p50_ms" in values
        }
    node_stages = [sum(s.get(stage, 0.0) for stage in NODE_STAGES) for s in stage_p50.values()]
    return {
        "cameras": cameras,
        "layout": layout if cameras > 1 else "one-node",
        "nodes": len(started),
        "sent_rate_hz_per_camera": round(number / (play_end - start), 2),
        "output_rate_hz_total": round(output_rate, 2),
        "frames_complete": len(done),
        "frames_sent": number * cameras,
        "age_ms_p50": _median_ms(ages),
        "age_ms_p95": round(1e3 * percentiles(ages, (95,))[0], 1) if ages else None,
        "age_ms_first_half_p50": _median_ms([a for w, a, _ in done if w < half]),
        "age_ms_second_half_p50": _median_ms([a for w, a, _ in done if w >= half]),
        "node_stages_p50_ms": round(max(node_stages), 2) if node_stages else None,
        "node_cpu_p50_ms": max((s.get("node_cpu", 0.0) for s in stage_p50.values()), default=None),
        "stage_p50_ms": stage_p50,
        "rss_mib_total": round(sum(rss), 1),
        "rss_mib_per_node": [round(v, 1) for v in rss],
        "node_diagnostics": final,
    }


def main() -> int:
    args = parse_args()
    height, width = parse_size(args.frame_size)
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 60))
    parameters = node_parameters(args)
    backend_rate, backend_name = backend_only_rate(parameters, min(args.seconds, 15.0))
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    layouts = ("one-node", "separate-nodes") if args.layout == "both" else (args.layout,)
    runs = []
    for pipelining in args.pipelining.split(","):
        for count in (int(v) for v in args.cameras.split(",")):
            for layout in layouts if count > 1 else ("one-node",):
                run = play(args, {**parameters, "pipelining": pipelining}, count, layout, frame)
                run["pipelining"] = pipelining
                run["ratio_to_backend_alone"] = round(
                    run["output_rate_hz_total"] / backend_rate, 3
                )
                # A node cannot publish more frames than the cameras send: where the backend
                # alone outruns them, the rate it could reach is theirs.
                reachable = min(backend_rate, args.rate * count)
                run["reachable_rate_hz"] = round(reachable, 2)
                run["ratio_to_reachable"] = round(run["output_rate_hz_total"] / reachable, 3)
                print(json.dumps({k: v for k, v in run.items() if k != "node_diagnostics"}))
                runs.append(run)
    result = {
        "model": args.model,
        "backend": backend_name,
        "frame_size": format_size(height, width),
        "rate_hz_per_camera": args.rate,
        "backend_only_rate_hz": round(backend_rate, 2),
        "transport": args.transport,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
