#!/usr/bin/env python3
"""Print the README's INT8 table: fp32 vs int8 on ONNX Runtime's CPU provider, every bundled model.

    nice -n 19 .venv/bin/python scripts/int8_table.py [--camvid DIR] [--threads 2] [--runs 30]
        [--only NAME[,NAME...]] [--score-weights NAME=FILE ...] [--write-cards]

One run, side by side, per bundled model at its own network size: backend
latency of fp32 and int8 (median of --runs calls each, fp32 and int8
interleaved so load on a shared machine hits both alike, after 3 warm-up
calls), the speed-up, the share of labels int8 leaves unchanged, and mIoU of
both on the held-out CamVid drive 0006R0 (`seg_ros evaluate --split
new-drive`'s frames, scored at full image size as `seg_ros evaluate` does).
INT8 uses the table shipped with the weights (32 train frames of other
drives) and the CPU profile seg_ros picks on this machine.

--score-weights NAME=FILE scores FILE instead of NAME's shipped weights (for a
model trained on 0006R0 too: its recipe's new-drive weights), calibrated on the
frames the shipped table lists; the latency stays the shipped weights'.
--write-cards stores each row in the weights' metadata (``metrics["int8"]``),
re-measures the card's ONNX Runtime pipeline latency in fp32 and int8 and
rewrites the model card (only for bundles that record their recipe).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _calibration_folder(table_file: Path, camvid: Path, folder: Path) -> dict:
    """Link the frames a shipped table was calibrated on into ``folder``; backend options."""
    from seg_ros.backends.quantize import RangeTable

    files = RangeTable.load(table_file).info["files"]
    for name in files:
        (folder / name).symlink_to(camvid / "train" / name)
    return {"calibration_images": str(folder), "calibration_frames": len(files)}


def _write_card(spec, row: dict, image, threads: int) -> None:
    """Store ``row`` in the weights, re-measure the card's ONNX Runtime rows, rewrite the card.

    The card's fp32 and int8 pipeline latencies then come from one run; its
    PyTorch row stays as bundled.
    """
    from seg_ros.models import load_model, save_checkpoint
    from seg_ros.training import measure_cpu_latency, write_model_card

    latencies = [
        measure_cpu_latency(
            spec.weights_path, image, backend="onnxruntime", precision=precision, threads=threads
        )
        for precision in ("fp32", "int8")
    ]
    loaded = load_model(weights=spec.weights_path)
    metrics = loaded.spec.metrics
    metrics["int8"] = row
    kept = [e for e in metrics.get("cpu_latency", []) if not e["backend"].startswith("onnxrun")]
    metrics["cpu_latency"] = latencies + kept
    save_checkpoint(spec.weights_path, loaded.module, loaded.spec, half=True)
    print(f"  card: {write_model_card(spec.weights_path, metrics['cpu_latency'])}", flush=True)


def main() -> int:
    """Measure every bundled model and print one markdown table."""
    import onnxruntime

    from seg_ros.backends import create_backend
    from seg_ros.backends.calibration import table_path
    from seg_ros.backends.quantize import cpu_profile
    from seg_ros.classes import load_class_table
    from seg_ros.datasets import split_pairs
    from seg_ros.evaluation.metrics import ConfusionMatrix
    from seg_ros.evaluation.sources import read_label_file
    from seg_ros.image_sources import read_image
    from seg_ros.models import bundled_models, load_model
    from seg_ros.models.checkpoint import file_sha256
    from seg_ros.pipeline import SegmentationPipeline
    from seg_ros.timing import percentiles
    from seg_ros.training import records_recipe
    from seg_ros.training.device import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
    parser.add_argument("--camvid", default=os.environ.get("SEG_ROS_CAMVID", str(default)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated bundled model names")
    parser.add_argument("--score-weights", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--write-cards", action="store_true")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    scored_files = dict(item.split("=", 1) for item in args.score_weights)

    pairs = split_pairs("camvid", args.camvid, "new-drive")[1]
    frames = [(read_image(image), read_label_file(label)) for image, label in pairs]
    print(f"{len(frames)} frames of drive 0006R0; INT8 profile {cpu_profile()}")
    rows = []
    for spec in bundled_models():
        if only and spec.name not in only:
            continue
        height, width = spec.input_height, spec.input_width
        table = load_class_table(spec.class_table)
        with tempfile.TemporaryDirectory(prefix="seg_ros-int8-table-") as folder:
            shipped = load_model(weights=spec.weights_path)
            scored, options = shipped, None
            if spec.name in scored_files:
                scored = load_model(weights=scored_files[spec.name])
                options = _calibration_folder(table_path(spec), Path(args.camvid), Path(folder))

            def start(loaded, precision, options=None):
                return create_backend(
                    "onnxruntime",
                    loaded,
                    height=height,
                    width=width,
                    precision=precision,
                    threads=args.threads,
                    options=options,
                )

            backends = {p: start(scored, p, options) for p in ("fp32", "int8")}
            timed = backends if scored is shipped else {p: start(shipped, p) for p in backends}
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
            times = {p: [] for p in timed}
            for backend in timed.values():
                for _ in range(3):
                    backend.infer(batch)
            for _ in range(args.runs):
                for p, backend in timed.items():
                    start_time = time.perf_counter()
                    backend.infer(batch)
                    times[p].append((time.perf_counter() - start_time) * 1e3)
            for backend in {*backends.values(), *timed.values()}:
                backend.close()
        ms = {p: percentiles(t, (50,))[0] for p, t in times.items()}
        miou = {p: m.summary()["miou"] for p, m in matrices.items()}
        rows.append(
            f"| {spec.name} | {width}x{height} | {ms['fp32']:.1f} | {ms['int8']:.1f} | "
            f"{ms['fp32'] / ms['int8']:.2f}x | {100 * same / total:.1f} % | "
            f"{100 * miou['fp32']:.1f} | {100 * miou['int8']:.1f} | "
            f"{100 * (miou['int8'] - miou['fp32']):+.1f} |"
        )
        print(rows[-1], flush=True)
        if args.write_cards:
            row = {
                "fp32_ms": round(ms["fp32"], 1),
                "int8_ms": round(ms["int8"], 1),
                "speedup": round(ms["fp32"] / ms["int8"], 2),
                "labels_unchanged": same / total,
                "fp32_miou": miou["fp32"],
                "int8_miou": miou["int8"],
                "scored_on": f"CamVid drive 0006R0 ({len(frames)} frames)",
                "scored_weights": (
                    f"{Path(scored_files[spec.name]).name} (sha256 "
                    f"{file_sha256(scored_files[spec.name])[:16]}…), this recipe's new-drive "
                    "run (never saw 0006R0), calibrated on the shipped table's frames"
                    if spec.name in scored_files
                    else "the shipped weights"
                ),
                "profile": cpu_profile(),
                "threads": args.threads,
                "onnxruntime": onnxruntime.__version__,
                "cpu": cpu_name(),
            }
            if records_recipe(spec):
                _write_card(spec, row, frames[0][0], args.threads)
            else:  # the card generator cannot restate an older bundle's recipe
                print(f"  card not rewritten: {spec.name} was bundled before recipes recorded")
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
