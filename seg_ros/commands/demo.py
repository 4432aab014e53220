"""`seg_ros demo` (what `make demo` runs): the real node, fed a short image sequence over real DDS.

It takes the path `ros2 launch seg_ros segmentation.launch.py` takes on a
robot: ``segmentation_node`` runs as its own process with the launch file's
default parameter file (config/segmentation.yaml) and the default model,
its input ``image`` remapped to the demo's topic. The demo publishes the
frames like a camera driver, subscribes to the node's outputs like RViz,
then prints the output rate and the end-to-end latency (output received
minus input sent, matched by header stamp) and writes a few overlay PNGs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NODE_NAME = "segmentation_node"
INPUT_TOPIC = "/seg_ros_demo/image"
OUTPUTS = ("label", "confidence", "color", "overlay")


def default_data() -> Path:
    """Return the sample frames shipped with the package (six CamVid frames, see LICENSE.md)."""
    from seg_ros.paths import samples_dir

    return samples_dir() / "camvid"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run segmentation_node on a short image sequence over DDS; print rate and latency",
        description="Starts segmentation_node as its own process, as `ros2 launch seg_ros "
        "segmentation.launch.py` does (config/segmentation.yaml, the default model), remaps its "
        f"input image to {INPUT_TOPIC}, publishes the frames there like a camera driver and "
        f"subscribes to /{NODE_NAME}/{{label,confidence,color,overlay}} like RViz. Prints the "
        "output rate and the latency (output received - input sent, matched by header stamp) "
        "and writes a few overlay PNGs. Uses a private ROS_DOMAIN_ID unless one is set.",
        epilog="example: seg_ros demo --data my_bag/ --topic /camera/image_raw --frames 100 "
        "--rate 10",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="a folder of images, an image, a video or a rosbag2 folder or file "
        "(default: the package's sample frames, samples/camvid)",
    )
    parser.add_argument(
        "--topic", default="", help="image topic when --data is a bag with several image topics"
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=30,
        help="number of frames to send, replaying the data from the start if it has fewer "
        "(default 30)",
    )
    parser.add_argument(
        "--rate", type=float, default=5.0, help="publishing rate in Hz (default 5)"
    )
    parser.add_argument(
        "--output",
        default="demo_output",
        help="folder for the overlay PNGs (default ./demo_output)",
    )
    parser.add_argument(
        "--save",
        type=int,
        default=5,
        help="how many overlays to write, spread over the sequence (default 5)",
    )
    parser.add_argument(
        "--params-file",
        default="",
        help="node parameter YAML (default: config/segmentation.yaml, the launch file's default)",
    )
    parser.add_argument(
        "--model", default="", help="node parameter model (default: the params file's)"
    )
    parser.add_argument(
        "--backend", default="", help="node parameter backend (default: the params file's)"
    )
    parser.add_argument(
        "--height", type=int, default=0, help="node parameter input_height (0: the model's)"
    )
    parser.add_argument(
        "--width", type=int, default=0, help="node parameter input_width (0: the model's)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="any other node parameter, as in `ros2 run ... -p NAME:=VALUE` (repeatable)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the node to load its model and answer (default 300)",
    )
    parser.add_argument(
        "--json",
        default="",
        metavar="FILE",
        help="also write the results as JSON: frames_sent, received (per output), "
        "output_rate_hz, latency_ms {p50, p95, max}, first_frame_ms (warm-up), "
        "node (its /diagnostics key/values), "
        "overlays (PNG paths), ros_domain_id, input_topic",
    )
    parser.set_defaults(func=run)


def node_command(args: argparse.Namespace) -> list[str]:
    """Build the node's command line: params file, input remapping, parameter overrides."""
    import sys

    from seg_ros.paths import config_dir

    params_file = (
        Path(args.params_file) if args.params_file else config_dir() / "segmentation.yaml"
    )
    if not params_file.is_file():
        raise FileNotFoundError(f"node parameter file {params_file} does not exist")
    overrides = list(args.param)
    for name, value in (
        ("model", args.model),
        ("backend", args.backend),
        ("input_height", args.height),
        ("input_width", args.width),
    ):
        if value:
            overrides.append(f"{name}:={value}")
    for item in overrides:
        if ":=" not in item:
            raise ValueError(f"--param {item!r}: expected NAME:=VALUE")
    command = [
        sys.executable,
        "-m",
        "seg_ros.node",
        "--ros-args",
        "--params-file",
        str(params_file),
        "-r",
        f"image:={INPUT_TOPIC}",
    ]
    for item in overrides:
        command += ["-p", item]
    return command


def run(args: argparse.Namespace) -> int:
    from seg_ros.image_sources import open_image_source

    if args.frames <= 0:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    if args.rate <= 0:
        raise ValueError(f"--rate must be positive, got {args.rate}")
    data = Path(args.data) if args.data else default_data()
    if not data.exists():
        raise FileNotFoundError(
            f"--data {data} does not exist: pass a folder of images, an image, a video "
            "or a rosbag2"
        )
    source = open_image_source(data, topic=args.topic, limit=args.frames)
    command = node_command(args)
    os.environ.setdefault(
        "ROS_DOMAIN_ID", str(1 + os.getpid() % 100)
    )  # keep off other people's graphs
    # Nothing else is set: the demo is a camera and a viewer with DDS defaults, as on a robot,
    # and the node chooses its own transport settings (seg_ros.dds, logged at start-up).

    from seg_ros.demo_session import DemoSession

    with DemoSession(
        command, INPUT_TOPIC, [f"/{NODE_NAME}/{name}" for name in OUTPUTS]
    ) as session:
        frames = session.load(source)
        print(
            f"demo: {args.frames} frames from {source.describe()} at {args.rate:g} Hz "
            f"-> {INPUT_TOPIC} "
            f"(ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']})"
        )
        print("node: " + " ".join(command))
        session.wait_ready(frames[0], args.startup_timeout)
        session.send(frames, args.frames, args.rate)
        report = session.report()
        report["overlays"] = [str(p) for p in session.save_overlays(Path(args.output), args.save)]
    report["ros_domain_id"] = int(os.environ["ROS_DOMAIN_ID"])
    print(format_report(report))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(report, indent=2))
    if report["received"]["label"] == 0:
        raise RuntimeError("the node published no label for any frame: see its log above")
    return 0


def format_report(report: dict) -> str:
    node = report["node"]
    received = ", ".join(f"{name} {count}" for name, count in report["received"].items())
    lat = {
        key: "-" if value is None else f"{value:.1f}"
        for key, value in report["latency_ms"].items()
    }
    lines = [
        f"node: {node.get('model', '?')} ({node.get('model_name', '?')}) "
        f"on {node.get('backend', '?')} "
        f"at {node.get('input_size', '?')} (HxW)",
        f"first (untimed warm-up) frame came back after {report['first_frame_ms']:.0f} ms",
        f"sent {report['frames_sent']} frames; received {received}",
        f"output rate {report['output_rate_hz']:.2f} Hz; latency (output received - input sent) "
        f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms",
    ]
    if "inference_p50_ms" in node:
        lines.append(
            f"node's own inference p50 {node['inference_p50_ms']} ms, "
            f"p95 {node.get('inference_p95_ms')} ms; "
            f"frames dropped by the node (newer frame waiting): {node.get('frames_dropped', '?')}"
        )
    if report["overlays"]:
        lines.append(
            f"wrote {len(report['overlays'])} overlays to {Path(report['overlays'][0]).parent}/"
        )
    return "\n".join(lines)
