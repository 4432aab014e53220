"""Fitting the dense CRF's parameters on labelled frames (ROS-free; `seg_ros tune-crf` runs it).

The network runs once per frame; its probabilities at network size are kept
and every candidate CRF setting refines them, as the pipeline would, and is
scored against the labels (mIoU and boundary F1). The search is coordinate
descent over a grid per parameter, starting from the current settings: a
handful of passes find the best grid point of objectives that are close to
separable, as the CRF's are, at a fraction of the full grid's cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from seg_ros.crf import dense_crf

# The CRF parameters tune-crf searches and the grid of each (names as in CrfSettings).
SEARCH_SPACE: dict[str, tuple] = {
    "iterations": (1, 2, 3, 5, 8, 10),
    "gaussian_sxy": (1.0, 2.0, 3.0, 5.0),
    "gaussian_weight": (0.0, 1.0, 3.0, 5.0),
    "bilateral_sxy": (10.0, 20.0, 40.0, 60.0, 80.0, 120.0),
    "bilateral_srgb": (3.0, 5.0, 8.0, 13.0, 20.0, 30.0),
    "bilateral_weight": (0.0, 1.0, 2.0, 4.0, 6.0, 10.0, 15.0),
}
OBJECTIVES = ("miou-keep-bf1", "miou", "boundary_f1", "mean")


@dataclass
class TuningFrame:
    """One labelled frame as the CRF sees it: network-size image and probabilities, full label."""

    image: np.ndarray  # h×w×3 uint8 RGB at the network size
    probabilities: np.ndarray  # C×h×w float32
    label: np.ndarray  # H×W ground truth at the frame's own size


@dataclass
class Trial:
    """One setting tried (None: the CRF off) and its scores."""

    params: dict | None
    miou: float
    boundary_f1: float
    feasible: bool = True
    objective: float = field(default=-math.inf)

    def row(self) -> dict:
        """Plain form for the table and --json."""
        return {
            "crf": "off" if self.params is None else self.params,
            "miou": round(self.miou, 5),
            "boundary_f1": round(self.boundary_f1, 5),
            "feasible": self.feasible,
            "objective": round(self.objective, 5),
        }


@dataclass
class TuningResult:
    """The setting chosen (None: none beats the CRF off), the baseline and every trial."""

    best: dict | None
    baseline: Trial
    chosen: Trial
    trials: list[Trial]
    objective: str


def network_frames(
    pipeline, pairs, class_count: int, ignore_index: int, *, progress: bool = True
) -> list[TuningFrame]:
    """Run the pipeline's network once per (image, label) file pair; keep its probabilities."""
    from seg_ros.datasets import IGNORE, read_label, read_rgb
    from seg_ros.pipeline import FULL_OUTPUTS

    frames = []
    bar = tqdm(pairs, desc="network", unit="img", leave=False, disable=not progress)
    for image_path, label_path in bar:
        image = read_rgb(image_path)
        small, batch = pipeline.preprocess(image)
        probabilities = pipeline.backend.infer(batch, FULL_OUTPUTS)["probabilities"][0]
        label = read_label(label_path, class_count, ignore_index)  # void -> IGNORE
        label[label == IGNORE] = ignore_index  # the metrics take the table's own void value
        frames.append(TuningFrame(small, np.asarray(probabilities, np.float32), label))
    return frames


def score(
    frames: Sequence[TuningFrame], params: dict | None, class_count: int, ignore_index: int
) -> tuple[float, float]:
    """Return (mIoU, boundary F1) over the frames with this CRF setting (None: CRF off)."""
    from seg_ros.evaluation.metrics import BoundaryF1, ConfusionMatrix

    confusion = ConfusionMatrix(class_count, ignore_index)
    boundary = BoundaryF1(class_count, ignore_index)
    for frame in frames:
        probabilities = frame.probabilities
        if params is not None:
            probabilities = dense_crf(frame.image, probabilities, **params)
        prediction = probabilities.argmax(axis=0).astype(np.uint8)
        height, width = frame.label.shape
        if prediction.shape != (height, width):  # as the pipeline resizes labels back
            prediction = cv2.resize(prediction, (width, height), interpolation=cv2.INTER_NEAREST)
        confusion.update(frame.label, prediction)
        boundary.update(frame.label, prediction)
    miou = confusion.summary()["miou"]
    bf1 = boundary.score
    return (0.0 if math.isnan(miou) else miou), (0.0 if math.isnan(bf1) else bf1)


def objective_value(
    objective: str, miou: float, bf1: float, baseline: Trial
) -> tuple[bool, float]:
    """Return (feasible, value to maximise) of scores under a named objective."""
    if objective == "miou-keep-bf1":
        return bf1 >= baseline.boundary_f1, miou
    if objective == "miou":
        return True, miou
    if objective == "boundary_f1":
        return True, bf1
    if objective == "mean":
        return True, 0.5 * (miou + bf1)
    raise ValueError(f"unknown objective {objective!r}: expected one of {OBJECTIVES}")


def coordinate_search(
    evaluate: Callable[[dict], tuple[float, float]],
    start: dict,
    space: dict[str, Sequence],
    *,
    objective: str,
    baseline: Trial,
    passes: int = 2,
    progress: bool = True,
) -> list[Trial]:
    """Try each grid value of one parameter at a time, keep the best feasible; `passes` rounds.

    Returns every distinct setting tried, in order; a setting is scored once.
    """
    tried: dict[tuple, Trial] = {}
    trials: list[Trial] = []
    current = dict(start)
    best: Trial | None = None
    total = passes * sum(len(values) for values in space.values()) + 1
    bar = tqdm(total=total, desc="tune-crf", unit="setting", disable=not progress)

    def attempt(params: dict) -> Trial:
        key = tuple(sorted(params.items()))
        if key not in tried:
            miou, bf1 = evaluate(params)
            feasible, value = objective_value(objective, miou, bf1, baseline)
            tried[key] = Trial(dict(params), miou, bf1, feasible, value)
            trials.append(tried[key])
            bar.set_postfix(miou=f"{miou:.4f}", bf1=f"{bf1:.4f}", refresh=False)
        bar.update(1)
        return tried[key]

    def better(trial: Trial) -> bool:
        return trial.feasible and (best is None or trial.objective > best.objective)

    first = attempt(current)
    best = first if first.feasible else None
    for _ in range(passes):
        changed = False
        for name, values in space.items():
            for value in values:
                trial = attempt({**current, name: value})
                if better(trial):
                    best, changed = trial, True
            if best is not None:
                current = dict(best.params)
        if not changed:
            break
    bar.close()
    return trials


def tune(
    frames: Sequence[TuningFrame],
    class_count: int,
    ignore_index: int,
    *,
    start: dict,
    space: dict[str, Sequence] | None = None,
    objective: str = "miou-keep-bf1",
    passes: int = 2,
    downsample: int = 0,
    progress: bool = True,
) -> TuningResult:
    """Search CRF settings on the frames; the best must beat the CRF off under the objective."""
    space = dict(SEARCH_SPACE if space is None else space)
    miou, bf1 = score(frames, None, class_count, ignore_index)
    baseline = Trial(None, miou, bf1)
    baseline.feasible, baseline.objective = objective_value(objective, miou, bf1, baseline)

    def evaluate(params: dict) -> tuple[float, float]:
        return score(frames, {**params, "downsample": downsample}, class_count, ignore_index)

    trials = coordinate_search(
        evaluate,
        {k: start[k] for k in space},
        space,
        objective=objective,
        baseline=baseline,
        passes=passes,
        progress=progress,
    )
    feasible = [t for t in trials if t.feasible]
    chosen = max(feasible, key=lambda t: t.objective) if feasible else baseline
    if chosen.objective <= baseline.objective:
        chosen = baseline
    best = None if chosen is baseline else {**start, **chosen.params}
    return TuningResult(best, baseline, chosen, [baseline, *trials], objective)


def format_table(result: TuningResult, limit: int = 0) -> str:
    """Return the trials as a text table, best objective first (all, or the top `limit`)."""
    order = sorted(result.trials, key=lambda t: (t.feasible, t.objective), reverse=True)
    if limit:
        order = order[:limit]
    names = list(SEARCH_SPACE)
    header = ["mIoU", "BF1", "ok"] + [n.replace("bilateral_", "bi_") for n in names]
    lines = ["  ".join(f"{h:>9}" for h in header)]
    for trial in order:
        cells = [f"{100 * trial.miou:9.2f}", f"{100 * trial.boundary_f1:9.2f}"]
        cells.append(f"{'yes' if trial.feasible else 'no':>9}")
        if trial.params is None:
            cells.append(f"{'CRF off':>9}")
        else:
            cells += [f"{trial.params.get(n, '-'):>9}" for n in names]
        lines.append("  ".join(cells))
    return "\n".join(lines)
