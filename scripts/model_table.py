#!/usr/bin/env python3
"""Print the README's model table: parameters, GFLOPs and ONNX Runtime CPU latency per variant.

    .venv/bin/python scripts/model_table.py                 # latency of the bundled-size variants
    .venv/bin/python scripts/model_table.py --latency all   # every variant (slow on a small CPU)
    .venv/bin/python scripts/model_table.py --family fcn --latency none  # one family's rows

GFLOPs are counted by torch.utils.flop_counter.FlopCounterMode (2 FLOPs per
multiply-add, convolutions and matmuls) at 1x3xHxW. Latency: the variant is
exported with the node's head (seg_ros.export) and run by ONNX Runtime's CPU
provider with --threads intra-op threads (no spinning); median and fastest of
--runs runs after one warm-up, on random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (family, options, small): small = the size class that ships with bundled weights.
VARIANTS = [
    ("segnet", {"backbone": "basic"}, True),
    ("segnet", {"backbone": "vgg16_bn"}, False),
    ("deeplab", {"version": "v3plus", "backbone": "mobilenet_v3_large"}, True),
    ("deeplab", {"version": "v3", "backbone": "mobilenet_v3_large"}, True),
    ("deeplab", {"version": "v3", "backbone": "resnet50"}, False),
    ("deeplab", {"version": "v3", "backbone": "resnet101"}, False),
    ("deeplab", {"version": "v3plus", "backbone": "resnet101"}, False),
    ("deeplab", {"version": "v3plus", "backbone": "espnet_c"}, True),
    ("refinenet", {"light_weight": True, "backbone": "mobilenet_v2"}, True),
    ("refinenet", {"light_weight": True, "backbone": "espnet_c"}, True),
    ("refinenet", {"light_weight": True, "backbone": "resnet50"}, False),
    ("refinenet", {"light_weight": True, "backbone": "resnet101"}, False),
    ("refinenet", {"light_weight": False, "backbone": "resnet101"}, False),
    ("fcn", {"backbone": "vgg16", "variant": "32s"}, False),
    ("fcn", {"backbone": "vgg16", "variant": "16s"}, False),
    ("fcn", {"backbone": "vgg16", "variant": "8s"}, False),
    ("fcn", {"backbone": "resnet50"}, False),
    ("fcn", {"backbone": "resnet101"}, False),
]


def count_gflops(
    family: str, options: dict, num_classes: int, height: int, width: int
) -> tuple[float, float]:
    """(parameters in millions, GFLOPs) without allocating weights (meta tensors)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seg_ros.export import tensorrt_friendly
    from seg_ros.models import build_model

    with torch.device("meta"):
        model = build_model(family, num_classes, **options).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with tensorrt_friendly(model), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    return params, counter.get_total_flops() / 1e9


def ort_latency_ms(
    family: str, options: dict, num_classes: int, height: int, width: int, threads: int, runs: int
) -> tuple[float, float]:
    """(median, fastest) milliseconds per frame for label + confidence."""
    import numpy as np
    import onnxruntime as ort

    from seg_ros.export import export_onnx
    from seg_ros.models import build_model

    model = build_model(family, num_classes, **options).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", height, width, head=True)
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = threads
        settings.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: on a CPU shared with other processes (a robot's
        # other nodes, or this development machine) spinning threads slow everyone down.
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    feed = {"image": image}
    wanted = ["label", "confidence"]  # what the node asks for without CRF
    session.run(wanted, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(wanted, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def weights_note(family: str, options: dict, bundled) -> str:
    from seg_ros.models import resolve_options

    resolved = resolve_options(family, **options)
    for spec in bundled:
        if spec.family == family and spec.options == resolved:
            miou = spec.metrics.get("val_miou")
            return f"bundled `{Path(spec.weights_path).name}`" + (
                f", CamVid val mIoU {miou:.3f}" if miou else ""
            )
    if family == "deeplab" and resolved["version"] == "v3":
        return "random; torchvision COCO-VOC `deeplabv3_*` weights load"
    if family == "segnet" and resolved["backbone"] == "basic":
        return "random"
    if family == "fcn" and resolved["backbone"] != "vgg16":
        return "random; torchvision `fcn_resnet*` weights load"
    return "random; ImageNet backbone via `pretrained_backbone`"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--latency",
        choices=("small", "all", "none"),
        default="small",
        help="which variants to time (small: the bundled-size ones)",
    )
    parser.add_argument(
        "--family", action="append", default=None, help="only this family's rows (repeatable)"
    )
    args = parser.parse_args()

    from tqdm import tqdm

    from seg_ros.models import bundled_models, variant_name

    bundled = bundled_models()
    rows = []
    variants = [v for v in VARIANTS if not args.family or v[0] in args.family]
    for family, options, small in tqdm(variants, desc="variants", file=sys.stderr):
        params, gflops = count_gflops(family, options, args.num_classes, args.height, args.width)
        timed = args.latency == "all" or (args.latency == "small" and small)
        latency = "–"
        if timed:
            median, fastest = ort_latency_ms(
                family, options, args.num_classes, args.height, args.width, args.threads, args.runs
            )
            latency = f"{median:.0f} ({fastest:.0f})"
        rows.append(
            (
                family,
                variant_name(family, options),
                f"{params:.2f}",
                f"{gflops:.1f}",
                latency,
                weights_note(family, options, bundled),
            )
        )
    print(
        f"| family | variant | params (M, {args.num_classes} classes) "
        f"| GFLOPs @{args.width}x{args.height} "
        f"| ORT CPU ms ({args.threads} threads, median (fastest) of {args.runs}) | weights |"
    )
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
