"""`seg_ros segment`: the pipeline on images, a video or a bag; label, colour, overlay PNGs."""

from __future__ import annotations

import argparse

from seg_ros.commands.options import add_pipeline_arguments
from seg_ros.sizes import format_size


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment image files, a folder, a video or a bag and write PNGs",
        description="Runs the same pipeline as the node on every input image and writes, per "
        "image, "
        "<name>_label.png (class index per pixel: 8-bit, 16-bit above 254 classes), "
        "<name>_color.png (class colours), legend.png (colour -> class) and with --overlay "
        "<name>_overlay.png. "
        "Prints each image's latency and a p50/p95 summary.",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="an image, a folder of images, a video file, or a rosbag2 folder / ROS 1 .bag",
    )
    parser.add_argument("--output", required=True, help="folder for the PNGs (created if missing)")
    parser.add_argument(
        "--topic", default="", help="image topic when --input is a bag with several image topics"
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="stop after this many images (default 0: all)"
    )
    parser.add_argument(
        "--overlay", action="store_true", help="also write the colour mask blended over the image"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="opacity of the colour mask in the overlay, 0..1 (default 0.5)",
    )
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import cv2
    from tqdm import tqdm

    from seg_ros.commands.options import pipeline_config_from_args
    from seg_ros.image_sources import open_image_source
    from seg_ros.pipeline import build_pipeline
    from seg_ros.timing import p50_p95
    from seg_ros.visualize import legend_image, overlay

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    source = open_image_source(args.input, topic=args.topic, limit=args.limit)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    built = build_pipeline(pipeline_config_from_args(args))
    palette = built.class_table.palette()
    table = built.class_table
    legend = legend_image(list(table.names), table.colors)
    _write_png(output / "legend.png", cv2.cvtColor(legend, cv2.COLOR_RGB2BGR))
    print(
        f"{built.spec.name} ({built.spec.family}) on {built.backend_name}, "
        f"{format_size(built.pipeline.input_height, built.pipeline.input_width)} (HxW); "
        f"input: {source.describe()}"
    )

    latencies, seen = [], set()
    for frame in tqdm(source, total=source.count or None, unit="img", desc="segment"):
        start = time.perf_counter()
        result = built.pipeline.process(frame.image)
        total_ms = (time.perf_counter() - start) * 1e3
        latencies.append(total_ms)
        name = frame.name if frame.name not in seen else f"{frame.name}_{len(latencies)}"
        seen.add(name)
        color = result.color_mask(palette)
        _write_png(output / f"{name}_label.png", result.label)
        _write_png(output / f"{name}_color.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        if args.overlay:
            blended = overlay(frame.image, color, args.alpha)
            _write_png(output / f"{name}_overlay.png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
        stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items())
        tqdm.write(f"{name}: {total_ms:.1f} ms ({stages})")

    if not latencies:
        raise ValueError(f"no images came out of {source.describe()}")
    p50, p95 = p50_p95(latencies)
    print(
        f"{len(latencies)} images -> {output}: latency p50 {p50:.1f} ms, p95 {p95:.1f} ms "
        f"({built.backend_name})"
    )
    return 0


def _write_png(path, image) -> None:
    import cv2

    if not cv2.imwrite(str(path), image):
        raise RuntimeError(f"cannot write {path} (is the output folder writable?)")
