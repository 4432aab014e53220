"""`seg_ros benchmark`: frame rate and latency of the backend alone and of the whole pipeline.

The backend is timed on one fixed preprocessed batch asking for the compact
outputs (label, confidence); the pipeline is timed on a real frame through
``SegmentationPipeline.process`` (preprocess, inference, label/confidence,
optional CRF, resize back), exactly as the node runs it. Warm-up frames are
excluded. ``--compare`` runs every family's small variant on ONNX Runtime and
eager PyTorch in one run and prints the speed-up (the README's table).
"""

from __future__ import annotations

import argparse

from seg_ros.commands.options import add_pipeline_arguments
from seg_ros.sizes import format_size

# The variant of each family that is small enough for a CPU (and the ones that ship with weights).
SMALL_VARIANTS = {
    "segnet": {"backbone": "basic"},
    "deeplab": {"backbone": "mobilenet_v3_large"},
    "refinenet": {"light_weight": True, "backbone": "mobilenet_v2"},
}
COMPARE_BACKENDS = ("onnxruntime", "torch")

JSON_KEYS = """\
JSON written by --json FILE:
  configuration        model (name, family, options, weights), backend (name, requested,
                       reason), precision, input [h, w], frame [h, w], frame_source, threads,
                       crf, frames, warmup, versions, cpu_count, platform, time
  backend.fps          frames per second of backend.infer alone (compact outputs)
  backend.latency_ms   mean, p50, p95, min, max (milliseconds)
  pipeline.fps         frames per second of the whole pipeline.process()
  pipeline.latency_ms  mean, p50, p95, min, max
  pipeline.stages_ms   mean preprocess, inference, crf (if on), postprocess (wall clock),
                       preprocess_cpu, postprocess_cpu (CPU time of the calling thread)
With --compare: configuration, "results": a list of {family, variant, options,
backend_kind, backend_name, backend: {...}, pipeline: {...}} (keys as above), and
"speedup": {family: {backend, pipeline}} = onnxruntime fps / torch fps.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="time a backend alone and the whole pipeline; print a table, write JSON",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=JSON_KEYS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--frames", type=int, default=50, help="timed frames per measurement (default 50)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    parser.add_argument(
        "--image",
        default="",
        help="frame to time (default: the first CamVid validation image when present, "
        "else a synthetic 480x360 image)",
    )
    parser.add_argument(
        "--json", default="", metavar="FILE", help="write the results as JSON (keys below)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run every family's small variant on onnxruntime and torch side by side "
        "(--model limits it to one family; --backend is ignored)",
    )
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run)


def summarize(latencies_ms: list[float]) -> dict:
    """Fps and latency statistics of a list of per-frame times."""
    import numpy as np

    from seg_ros.timing import p50_p95

    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95 = p50_p95(values)
    return {
        "frames": int(values.size),
        "fps": float(values.size / values.sum() * 1e3),
        "latency_ms": {
            "mean": float(values.mean()),
            "p50": p50,
            "p95": p95,
            "min": float(values.min()),
            "max": float(values.max()),
        },
    }


def measure(pipeline, frame, frames: int, warmup: int, label: str = "") -> dict:
    """{'backend': summary, 'pipeline': summary + stages_ms} for one pipeline on one frame."""
    from seg_ros.pipeline import COMPACT_OUTPUTS
    from seg_ros.timing import time_calls

    _, batch = pipeline.preprocess(frame)
    backend_ms = time_calls(
        lambda: pipeline.backend.infer(batch, COMPACT_OUTPUTS),
        frames,
        warmup,
        f"{label} backend".strip(),
    )
    stages: dict[str, list[float]] = {}

    def process():
        for name, value in pipeline.process(frame).timings_ms.items():
            stages.setdefault(name, []).append(value)

    pipeline_ms = time_calls(process, frames, warmup, f"{label} pipeline".strip())
    pipeline_summary = summarize(pipeline_ms)
    pipeline_summary["stages_ms"] = {name: sum(v[-frames:]) / frames for name, v in stages.items()}
    return {"backend": summarize(backend_ms), "pipeline": pipeline_summary}


def benchmark_frame(path: str):
    """Return (RGB uint8 frame, its source): --image, else a shipped sample frame."""
    import cv2
    import numpy as np

    from seg_ros.commands.demo import default_data
    from seg_ros.image_sources import IMAGE_SUFFIXES

    if path:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read --image {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), path
    samples = default_data()
    files = sorted(p for p in samples.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if files:
        return cv2.cvtColor(cv2.imread(str(files[0]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), str(
            files[0]
        )
    # Smooth random structure, so nothing is special about a constant image.
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (480, 360), interpolation=cv2.INTER_CUBIC), "synthetic 480x360"


def _environment(args, frame, frame_source: str) -> dict:
    import os
    import platform
    import time

    import numpy as np
    import torch

    from seg_ros import __version__

    versions = {"seg_ros": __version__, "torch": torch.__version__, "numpy": np.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {
        "frame": list(frame.shape[:2]),
        "frame_source": frame_source,
        "threads": args.threads,
        "crf": bool(args.crf),
        "frames": args.frames,
        "warmup": args.warmup,
        "versions": versions,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(rows: list[tuple[str, str, dict]]) -> str:
    """Rows of (model, backend, measure() result) as an aligned text table."""
    name_w = max([len("model")] + [len(r[0]) for r in rows])
    backend_w = max([len("backend")] + [len(r[1]) for r in rows])
    numbers = f"{'fps':>7} {'p50 ms':>8} {'p95 ms':>8}"
    lines = [
        f"{'':<{name_w}}  {'':<{backend_w}}  {'---- backend alone ----':>25}  "
        f"{'--- whole pipeline ---':>25}",
        f"{'model':<{name_w}}  {'backend':<{backend_w}}  {numbers}  {numbers}",
    ]
    for name, backend, result in rows:
        cells = []
        for part in ("backend", "pipeline"):
            summary = result[part]
            cells.append(
                f"{summary['fps']:>7.2f} {summary['latency_ms']['p50']:>8.1f} "
                f"{summary['latency_ms']['p95']:>8.1f}"
            )
        lines.append(f"{name:<{name_w}}  {backend:<{backend_w}}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.frames <= 0 or args.warmup < 0:
        raise ValueError(
            f"--frames must be positive and --warmup >= 0, got {args.frames} and {args.warmup}"
        )
    frame, frame_source = benchmark_frame(args.image)
    import torch

    # Without bundled weights the networks are random: seeded, so a repeated benchmark reuses
    # the exported graph.
    torch.manual_seed(0)
    report = (
        run_compare(args, frame, frame_source)
        if args.compare
        else run_single(args, frame, frame_source)
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def run_single(args, frame, frame_source: str) -> dict:
    from seg_ros.commands.options import pipeline_config_from_args
    from seg_ros.pipeline import build_pipeline

    config = pipeline_config_from_args(args)
    built = build_pipeline(config)
    pipeline, spec = built.pipeline, built.spec
    try:
        result = measure(pipeline, frame, args.frames, args.warmup)
    finally:
        pipeline.backend.close()
    configuration = {
        "model": {
            "name": spec.name,
            "family": spec.family,
            "options": spec.options,
            "weights": spec.weights_path or "random initialisation",
        },
        "backend": {
            "name": built.backend_name,
            "requested": config.backend,
            "reason": pipeline.backend.reason,
        },
        "precision": pipeline.backend.precision,
        "input": [pipeline.input_height, pipeline.input_width],
        **_environment(args, frame, frame_source),
    }
    print(
        f"{spec.name} at {format_size(pipeline.input_height, pipeline.input_width)} (HxW) on "
        f"{built.backend_name} "
        f"({pipeline.backend.precision}; {pipeline.backend.reason}); frame: {frame_source}, "
        f"{args.frames} frames after {args.warmup} warm-up"
    )
    print(table([(spec.name, built.backend_name, result)]))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result["pipeline"]["stages_ms"].items())
    print(f"pipeline stages (mean ms): {stages}")
    return {"configuration": configuration, **result}


def run_compare(args, frame, frame_source: str) -> dict:
    """Every family's small variant on onnxruntime and torch, same frame, same run."""
    from seg_ros.backends import create_backend
    from seg_ros.models import load_model
    from seg_ros.commands.options import crf_explicit_from_args, crf_settings_from_args
    from seg_ros.pipeline import SegmentationPipeline

    families = [args.model] if args.model else list(SMALL_VARIANTS)
    results, speedup, rows = [], {}, []
    height = width = 0
    for family in families:
        loaded = load_model(
            family,
            weights=args.weights,
            num_classes=args.num_classes,
            class_table=args.class_table,
            **SMALL_VARIANTS[family],
        )
        spec = loaded.spec
        height, width = args.height or spec.input_height, args.width or spec.input_width
        fps = {}
        for kind in COMPARE_BACKENDS:
            backend = create_backend(
                kind, loaded, height=height, width=width, precision="fp32", threads=args.threads
            )
            pipeline = SegmentationPipeline(
                backend,
                num_classes=spec.num_classes,
                input_size=(height, width),
                mean=spec.mean,
                std=spec.std,
                crf=crf_settings_from_args(args).with_model_parameters(
                    spec.crf, crf_explicit_from_args(args)
                ),
            )
            try:
                result = measure(pipeline, frame, args.frames, args.warmup, f"{family} {kind}")
            finally:
                backend.close()
            fps[kind] = (result["backend"]["fps"], result["pipeline"]["fps"])
            results.append(
                {
                    "family": family,
                    "variant": spec.name,
                    "options": spec.options,
                    "backend_kind": kind,
                    "backend_name": backend.name,
                    **result,
                }
            )
            rows.append((f"{spec.name} @{format_size(height, width)}", backend.name, result))
            print(
                f"{spec.name} on {backend.name}: backend {result['backend']['fps']:.2f} fps, "
                f"pipeline {result['pipeline']['fps']:.2f} fps",
                flush=True,
            )
        speedup[family] = {
            "backend": fps["onnxruntime"][0] / fps["torch"][0],
            "pipeline": fps["onnxruntime"][1] / fps["torch"][1],
        }
    print()
    print(
        f"ONNX Runtime vs eager PyTorch, each model at its network size (HxW after @), "
        f"{args.frames} frames after {args.warmup} warm-up, threads={args.threads or 'default'}, "
        f"frame: {frame_source}"
    )
    print(table(rows))
    for family, ratio in speedup.items():
        print(
            f"speed-up {family:<10} onnxruntime/torch: backend {ratio['backend']:.2f}x, "
            f"pipeline {ratio['pipeline']:.2f}x"
        )
    configuration = {
        "input": [height, width],
        "precision": "fp32",
        **_environment(args, frame, frame_source),
    }
    return {"configuration": configuration, "results": results, "speedup": speedup}
