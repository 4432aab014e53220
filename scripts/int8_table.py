#!/usr/bin/env python3
"""Print the README's INT8 table: fp32 vs int8 on ONNX Runtime's CPU provider, every bundled model.

    nice -n 19 .venv/bin/python scripts/int8_table.py [--camvid DIR] [--threads 2] [--runs 30]
        [--only NAME[,NAME...]]

One run, side by side, per bundled model at its own network size: backend
latency of fp32 and int8 (median of --runs calls each, fp32 and int8
interleaved so load on a shared machine hits both alike, after 3 warm-up
calls), the speed-up, the share of labels int8 leaves unchanged, and mIoU of
both on the held-out CamVid drive 0006R0 (`seg_ros evaluate --split
new-drive`'s frames, scored at full image size as `seg_ros evaluate` does).
INT8 uses the table shipped with the weights (32 train frames of other
drives) and the CPU profile seg_ros picks on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    """Measure every bundled model and print one markdown table."""
    from seg_ros.backends import create_backend
    from seg_ros.backends.quantize import cpu_profile
    from seg_ros.classes import load_class_table
    from seg_ros.datasets import split_pairs
    from seg_ros.evaluation.metrics import ConfusionMatrix
    from seg_ros.evaluation.sources import read_label_file
    from seg_ros.image_sources import read_image
    from seg_ros.models import bundled_models, load_model
    from seg_ros.pipeline import SegmentationPipeline
    from seg_ros.timing import percentiles

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
    parser.add_argument("--camvid", default=os.environ.get("SEG_ROS_CAMVID", str(default)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated bundled model names")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}

    pairs = split_pairs("camvid", args.camvid, "new-drive")[1]
    frames = [(read_image(image), read_label_file(label)) for image, label in pairs]
    print(f"{len(frames)} frames of drive 0006R0; INT8 profile {cpu_profile()}")
    rows = []
    for spec in bundled_models():
        if only and spec.name not in only:
            continue
        loaded = load_model(weights=spec.weights_path)
        height, width = spec.input_height, spec.input_width
        table = load_class_table(spec.class_table)
        backends = {
            precision: create_backend(
                "onnxruntime",
                loaded,
                height=height,
                width=width,
                precision=precision,
                threads=args.threads,
            )
            for precision in ("fp32", "int8")
        }
        pipelines = {
            p: SegmentationPipeline(
                b,
                num_classes=spec.num_classes,
                input_size=(height, width),
                mean=spec.mean,
                std=spec.std,
            )
            for p, b in backends.items()
        }
        matrices = {p: ConfusionMatrix(spec.num_classes, table.ignore_index) for p in backends}
        same = total = 0
        for image, label in frames:
            labels = {p: pipe.process(image).label for p, pipe in pipelines.items()}
            for p, prediction in labels.items():
                matrices[p].update(label, prediction)
            same += int((labels["fp32"] == labels["int8"]).sum())
            total += labels["fp32"].size
        batch = pipelines["fp32"].preprocess(frames[0][0])[1]
        times = {p: [] for p in backends}
        for backend in backends.values():
            for _ in range(3):
                backend.infer(batch)
        for _ in range(args.runs):
            for p, backend in backends.items():
                start = time.perf_counter()
                backend.infer(batch)
                times[p].append((time.perf_counter() - start) * 1e3)
        ms = {p: percentiles(t, (50,))[0] for p, t in times.items()}
        miou = {p: 100 * m.summary()["miou"] for p, m in matrices.items()}
        rows.append(
            f"| {spec.name} | {width}x{height} | {ms['fp32']:.1f} | {ms['int8']:.1f} | "
            f"{ms['fp32'] / ms['int8']:.2f}x | {100 * same / total:.1f} % | "
            f"{miou['fp32']:.1f} | {miou['int8']:.1f} | {miou['int8'] - miou['fp32']:+.1f} |"
        )
        for backend in backends.values():
            backend.close()
        print(rows[-1], flush=True)
    print()
    print(
        "| model | size | fp32 ms | int8 ms | speed-up | labels unchanged | "
        "mIoU fp32 | mIoU int8 | change |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
