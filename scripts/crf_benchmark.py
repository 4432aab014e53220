#!/usr/bin/env python3
"""Dense CRF: seg_ros.crf vs Krähenbühl's permutohedral implementation (pydensecrf2), side by side.

On real CamVid frames, each method refines the same per-pixel class
probabilities with the same CRF parameters; the script reports, per method,
the median time per frame (the methods alternate frame by frame, so they see
the same machine load), pixel accuracy, mIoU and boundary F1 against the
ground truth, and how often our labels agree with the reference's.

Probabilities come from one of two sources:

* ``corrupted`` (default): the ground truth made to look like a network's soft
  output: one-hot labels blurred (boundaries uncertain over ``--blur`` px),
  smooth per-class noise (``--noise``, spatial scale 12 px), a few blobs of a
  wrong class, softmax at temperature 3. Void pixels start uniform.
* ``model``: the output of a trained network through seg_ros.pipeline
  (``--model``/``--weights``), as `seg_ros evaluate --crf` sees it.

``--window 11:4`` adds the truncated-window kernel of the CRF-as-RNN layer
(window cells : grid factor) with the same parameters, and every method is
also compared with pydensecrf2 by the mean absolute difference of the refined
probabilities.

Example (the figures in the README):
    .venv/bin/python scripts/crf_benchmark.py --frames 12 --downsample 0,1,4 --json crf.json
    .venv/bin/python scripts/crf_benchmark.py --source model --frames 6 --downsample 0 \
        --window 11:4,11:2,21:4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NUM_CLASSES = 11
CAMVID_VOID = 11


def default_camvid() -> Path:
    return Path(os.environ.get("SEG_ROS_CAMVID", REPO.parent / "shared/datasets/camvid"))


def corrupted_probabilities(
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    blur: float,
    noise: float,
    blobs: int,
    temperature: float = 3.0,
) -> np.ndarray:
    """Make C×H×W float32 probabilities that look like a network's.

    Soft boundaries, smooth confusions, wrong blobs.
    """
    height, width = label.shape
    onehot = np.eye(NUM_CLASSES + 1, dtype=np.float32)[np.minimum(label, NUM_CLASSES)][
        ..., :NUM_CLASSES
    ]
    onehot[label >= NUM_CLASSES] = 1.0 / NUM_CLASSES
    logits = np.log(cv2.GaussianBlur(onehot, (0, 0), blur) + 1e-3)
    smooth = cv2.GaussianBlur(rng.normal(size=onehot.shape).astype(np.float32), (0, 0), 12.0)
    logits += smooth * (noise / (smooth.std() + 1e-6))
    for _ in range(blobs):
        mask = np.zeros((height, width), np.uint8)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(5, 30)), int(rng.integers(5, 30)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        logits[..., rng.integers(0, NUM_CLASSES)] += 2.0 * cv2.GaussianBlur(
            mask.astype(np.float32), (0, 0), 3.0
        )
    logits *= temperature
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return np.ascontiguousarray(probabilities.transpose(2, 0, 1), dtype=np.float32)


def reference_crf(image: np.ndarray, probabilities: np.ndarray, params: dict) -> np.ndarray:
    """Run pydensecrf2 with the same model.

    Unary -log(p) clipped at 1e-5, Potts weights, symmetric normalisation.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    classes, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities)))
    if params["gaussian_weight"] > 0:
        crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_weight"])
    if params["bilateral_weight"] > 0:
        crf.addPairwiseBilateral(
            sxy=params["bilateral_sxy"],
            srgb=params["bilateral_srgb"],
            rgbim=np.ascontiguousarray(image),
            compat=params["bilateral_weight"],
        )
    return np.asarray(crf.inference(params["iterations"]), np.float32).reshape(
        classes, height, width
    )


class Scores:
    """Accumulated accuracy, mIoU, boundary F1 and timings of one method."""

    def __init__(self):
        from seg_ros.evaluation.metrics import BoundaryF1, ConfusionMatrix

        self.confusion = ConfusionMatrix(NUM_CLASSES, ignore_index=255)
        self.boundary = BoundaryF1(NUM_CLASSES, ignore_index=255)
        self.times_ms: list[float] = []  # wall clock
        self.cpu_ms: list[
            float
        ] = []  # this process's CPU time: what the method costs, whatever the load
        self.agreement: list[float] = []
        self.probability_diff: list[float] = []  # mean |p - p_reference|

    def add(self, label: np.ndarray, prediction: np.ndarray) -> None:
        self.confusion.update(label, prediction)
        self.boundary.update(label, prediction)

    def summary(self) -> dict:
        scores = self.confusion.summary()
        out = {
            "pixel_accuracy": scores["pixel_accuracy"],
            "miou": scores["miou"],
            "boundary_f1": self.boundary.score,
        }
        if self.times_ms:
            out["median_ms"] = statistics.median(self.times_ms)
            out["mean_ms"] = statistics.fmean(self.times_ms)
            out["median_cpu_ms"] = statistics.median(self.cpu_ms)
        if self.agreement:
            out["label_agreement_with_reference"] = statistics.fmean(self.agreement)
        if self.probability_diff:
            out["mean_abs_probability_diff_with_reference"] = statistics.fmean(
                self.probability_diff
            )
        return out


class Timer:
    """Adds the wall-clock and CPU time of a block to a method's scores."""

    def __init__(self, scores: Scores):
        self.scores = scores

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.scores.times_ms.append((time.perf_counter() - self.wall) * 1e3)
        self.scores.cpu_ms.append((time.process_time() - self.cpu) * 1e3)


def model_probabilities(args):
    """Return a function image -> C×H×W probabilities from a trained network (seg_ros.pipeline)."""
    from seg_ros.pipeline import PipelineConfig, build_pipeline

    built = build_pipeline(
        PipelineConfig(
            model=args.model, weights=args.weights, backend=args.backend, threads=args.threads
        )
    )
    if built.spec.num_classes != NUM_CLASSES:
        raise ValueError(
            f"the model predicts {built.spec.num_classes} classes; CamVid has {NUM_CLASSES}"
        )

    def run(image: np.ndarray) -> np.ndarray:
        hwc = built.pipeline.process(image, want_probabilities=True).probabilities
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))

    return run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--camvid", type=Path, default=default_camvid(), help="CamVid root (SegNet layout)"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--frames", type=int, default=8, help="frames, evenly spaced over the split"
    )
    parser.add_argument("--source", choices=("corrupted", "model"), default="corrupted")
    parser.add_argument("--blur", type=float, default=8.0, help="corrupted: boundary blur (px)")
    parser.add_argument(
        "--noise", type=float, default=1.5, help="corrupted: smooth noise amplitude (logits)"
    )
    parser.add_argument(
        "--blobs", type=int, default=6, help="corrupted: wrong-class blobs per frame"
    )
    parser.add_argument(
        "--model", default="", help="model: family (segnet|deeplab|refinenet), '' = best bundled"
    )
    parser.add_argument("--weights", default="", help="model: checkpoint (.safetensors)")
    parser.add_argument("--backend", default="auto", help="model: backend")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--gaussian-sxy", type=float, default=3.0)
    parser.add_argument("--gaussian-weight", type=float, default=3.0)
    parser.add_argument("--bilateral-sxy", type=float, default=80.0)
    parser.add_argument("--bilateral-srgb", type=float, default=13.0)
    parser.add_argument("--bilateral-weight", type=float, default=10.0)
    parser.add_argument(
        "--downsample",
        default="0",
        help="comma-separated seg_ros.crf grid factors to compare (0 = automatic)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenCV threads for seg_ros.crf (the reference is single-threaded)",
    )
    parser.add_argument(
        "--window",
        default="",
        help="comma-separated WINDOW:DOWNSAMPLE settings of the windowed (CRF-as-RNN) kernel",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip pydensecrf2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    try:
        args.downsample = [int(v) for v in args.downsample.split(",")]
    except ValueError:
        parser.error(f"--downsample must be comma-separated integers, got {args.downsample!r}")
    try:
        args.window = [tuple(int(v) for v in w.split(":")) for w in args.window.split(",") if w]
    except ValueError:
        parser.error(f"--window must be WINDOW:DOWNSAMPLE pairs, got {args.window!r}")
    if any(len(w) != 2 for w in args.window):
        parser.error(f"--window must be WINDOW:DOWNSAMPLE pairs, got {args.window!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from seg_ros.crf import auto_downsample, dense_crf
    from seg_ros.datasets import camvid_pairs, read_label, read_rgb

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    pairs = camvid_pairs(args.camvid, args.split)
    picks = np.unique(
        np.linspace(0, len(pairs) - 1, min(args.frames, len(pairs))).round().astype(int)
    )
    params = {
        "iterations": args.iterations,
        "gaussian_sxy": args.gaussian_sxy,
        "gaussian_weight": args.gaussian_weight,
        "bilateral_sxy": args.bilateral_sxy,
        "bilateral_srgb": args.bilateral_srgb,
        "bilateral_weight": args.bilateral_weight,
    }
    source = model_probabilities(args) if args.source == "model" else None
    rng = np.random.default_rng(args.seed)

    methods = {"input": Scores()}
    if not args.no_reference:
        methods["pydensecrf2"] = Scores()
    ours = {(factor, None): f"seg_ros.crf downsample={factor}" for factor in args.downsample} | {
        (factor, window): f"window {window} downsample={factor}" for window, factor in args.window
    }
    methods.update({name: Scores() for name in ours.values()})
    warmed = False
    for index in tqdm(picks, desc="CRF benchmark", unit="frame"):
        image_path, label_path = pairs[index]
        image, label = read_rgb(image_path), read_label(label_path, NUM_CLASSES, CAMVID_VOID)
        if source is not None:
            probabilities = source(image)
        else:
            probabilities = corrupted_probabilities(
                label, rng, blur=args.blur, noise=args.noise, blobs=args.blobs
            )
        methods["input"].add(label, probabilities.argmax(0))
        if not warmed:  # first-call costs (torch, OpenCV) are not the CRF's
            dense_crf(image, probabilities, **params)
            warmed = True
        reference = None
        if not args.no_reference:
            with Timer(methods["pydensecrf2"]):
                reference_probabilities = reference_crf(image, probabilities, params)
            reference = reference_probabilities.argmax(0)
            methods["pydensecrf2"].add(label, reference)
        for (factor, window), name in ours.items():
            kernel = {} if window is None else {"kernel": "window", "window": window}
            with Timer(methods[name]):
                refined = dense_crf(image, probabilities, **params, downsample=factor, **kernel)
            labels = refined.argmax(0)
            methods[name].add(label, labels)
            if reference is not None:
                methods[name].agreement.append(float((labels == reference).mean()))
                methods[name].probability_diff.append(
                    float(np.abs(refined - reference_probabilities).mean())
                )

    height, width = image.shape[:2]
    results = {name: scores.summary() for name, scores in methods.items()}
    if "pydensecrf2" in results:
        reference = results["pydensecrf2"]
        for name in ours.values():
            results[name]["speedup_vs_reference"] = (
                reference["median_ms"] / results[name]["median_ms"]
            )
            results[name]["cpu_speedup_vs_reference"] = (
                reference["median_cpu_ms"] / results[name]["median_cpu_ms"]
            )
    report = {
        "frames": len(picks),
        "split": args.split,
        "source": args.source,
        "image_size": [width, height],
        "classes": NUM_CLASSES,
        "crf": params,
        "threads": args.threads,
        "auto_downsample": auto_downsample(
            height,
            width,
            args.gaussian_sxy,
            args.gaussian_weight,
            args.bilateral_sxy,
            args.bilateral_weight,
        ),
        "corruption": {
            "blur": args.blur,
            "noise": args.noise,
            "blobs": args.blobs,
            "seed": args.seed,
        }
        if args.source == "corrupted"
        else None,
        "methods": results,
    }
    print(
        f"{len(picks)} CamVid {args.split} frames ({width}x{height}, {NUM_CLASSES} classes, "
        f"{args.iterations} iterations, {args.threads} thread(s), source {args.source})"
    )
    print(
        f"{'method':28s} {'wall ms':>8s} {'speedup':>8s} {'CPU ms':>8s} {'speedup':>8s} "
        f"{'pix acc':>8s} {'mIoU':>7s} {'BF1':>7s} {'agree':>7s} {'|Δp|':>7s}"
    )
    for name, row in results.items():

        def cell(key, fmt):
            return format(row[key], fmt) if key in row else "-"

        print(
            f"{name:28s} {cell('median_ms', '8.1f')} {cell('speedup_vs_reference', '8.2f')} "
            f"{cell('median_cpu_ms', '8.1f')} {cell('cpu_speedup_vs_reference', '8.2f')} "
            f"{cell('pixel_accuracy', '8.4f')} {cell('miou', '7.4f')} "
            f"{cell('boundary_f1', '7.4f')} {cell('label_agreement_with_reference', '7.4f')} "
            f"{cell('mean_abs_probability_diff_with_reference', '7.4f')}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
