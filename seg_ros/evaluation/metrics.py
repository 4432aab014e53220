"""Segmentation metrics shared by the offline evaluator and the live evaluator node.

One set of definitions, so `seg_ros evaluate` on a bag and `evaluator_node`
during its replay report the same numbers:

- ``ConfusionMatrix``: counts per (ground-truth class, predicted class), from
  which IoU, mIoU, pixel accuracy and class accuracy follow.
- ``BoundaryF1``: the boundary F1 (BF) score of Csurka et al. (2013) as used in
  the SegNet paper.
- ``LatencyStats``: p50 / p95 / mean per pipeline stage.
- ``FrameCounter``: frames used and skipped, with the reason.

All ratios are fractions in [0, 1]; a class that can not be scored (absent from
both ground truth and prediction) is NaN and left out of the means (``None``
in JSON).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import cv2
import numpy as np

from seg_ros.timing import p50_p95

BOUNDARY_TOLERANCE = 0.0075  # fraction of the image diagonal (SegNet paper)


def _check_pair(ground_truth: np.ndarray, prediction: np.ndarray) -> None:
    if ground_truth.ndim != 2 or prediction.ndim != 2:
        raise ValueError(
            f"label images must be 2-D (H×W), got ground truth {ground_truth.shape} and "
            f"prediction {prediction.shape}"
        )
    if ground_truth.shape != prediction.shape:
        raise ValueError(
            f"ground truth is {ground_truth.shape[1]}x{ground_truth.shape[0]} but the "
            f"prediction is {prediction.shape[1]}x{prediction.shape[0]} (width x height)"
        )


def _nan_mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


class ConfusionMatrix:
    """Pixel counts ``counts[g, p]`` for ground-truth class g and predicted class p.

    The matrix has ``num_classes + 1`` columns: the last counts pixels whose
    prediction is not a class (e.g. 255, "unlabelled"); they are wrong for
    every metric. Ground-truth pixels equal to ``ignore_index`` are not
    counted at all. Ground-truth values that are neither a class nor
    ``ignore_index`` are an error (a label image from another class table).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.counts = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def valid_mask(self, ground_truth: np.ndarray) -> np.ndarray:
        """Pixels that count: ground truth is not ``ignore_index``."""
        if self.ignore_index is None:
            return np.ones(ground_truth.shape, bool)
        return ground_truth != self.ignore_index

    def frame_counts(self, ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Return the confusion matrix of one frame (does not change this one)."""
        _check_pair(ground_truth, prediction)
        valid = self.valid_mask(ground_truth)
        gt = ground_truth[valid].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            bad = np.unique(gt[(gt < 0) | (gt >= self.num_classes)])
            raise ValueError(
                f"ground truth holds labels {bad[:10].tolist()} outside the "
                f"{self.num_classes} classes (ignore_index is {self.ignore_index})"
            )
        pred = prediction[valid].astype(np.int64)
        pred = np.where((pred < 0) | (pred >= self.num_classes), self.num_classes, pred)
        flat = np.bincount(
            gt * (self.num_classes + 1) + pred, minlength=self.num_classes * (self.num_classes + 1)
        )
        return flat.reshape(self.num_classes, self.num_classes + 1)

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Add one frame; returns that frame's own counts (for per-frame scores)."""
        frame = self.frame_counts(ground_truth, prediction)
        self.counts += frame
        return frame

    @staticmethod
    def scores(counts: np.ndarray) -> dict:
        """IoU, accuracy and their means from a counts matrix (num_classes × num_classes+1)."""
        counts = counts.astype(np.float64)
        num_classes = counts.shape[0]
        true_pos = np.diag(counts[:, :num_classes])
        gt_total = counts.sum(axis=1)  # includes "unlabelled" predictions
        pred_total = counts[:, :num_classes].sum(axis=0)
        union = gt_total + pred_total - true_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, true_pos / union, np.nan)
            class_accuracy = np.where(gt_total > 0, true_pos / gt_total, np.nan)
        total = counts.sum()
        return {
            "iou": iou,
            "class_accuracy": class_accuracy,
            "miou": _nan_mean(iou),
            "mean_class_accuracy": _nan_mean(class_accuracy),
            "pixel_accuracy": float(true_pos.sum() / total) if total else math.nan,
            "pixels": int(total),
        }

    def summary(self) -> dict:
        return self.scores(self.counts)

    def normalized(self) -> np.ndarray:
        """Return the matrix with rows summing to 1; empty rows stay 0.

        Each row holds the fraction of that ground-truth class predicted as each class.
        """
        rows = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, rows, out=np.zeros(self.counts.shape), where=rows > 0)


def _boundary(mask: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Return the pixels of ``mask`` with an 8-neighbour outside it that is not ignored.

    The image border is not a boundary.
    """
    grown = (mask | ignored).astype(np.uint8)  # ignored neighbours never make a boundary
    eroded = cv2.erode(grown, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return mask & ~ignored & (eroded == 0)


def _disk(radius: float) -> np.ndarray:
    """Build the structuring element of all offsets within Euclidean distance ``radius``.

    Dilating by it means "within θ".
    """
    r = int(math.floor(radius))
    offsets = np.arange(-r, r + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


class BoundaryF1:
    """Boundary F1 (BF) score, Csurka et al. 2013, as the SegNet paper uses it.

    Exact definition, per image of size H×W:

    - tolerance θ = 0.75 % of the image diagonal, sqrt(H² + W²) (``tolerance``).
    - for each class c present in the ground truth (outside ``ignore_index``):
      the boundary of a binary mask is its pixels with an 8-neighbour outside
      the mask that is not ignored ground truth (so neither the image border
      nor the edge of a void region is a boundary), and which is not itself
      ignored; B_gt = boundary of (gt == c), B_pred = boundary of
      (prediction == c).
      precision = share of B_pred pixels within Euclidean distance θ of B_gt,
      recall = share of B_gt pixels within θ of B_pred,
      F1_c = 2PR / (P + R) (0 when P + R = 0). Both boundaries empty (the
      class fills the image in both) scores 1; only one empty scores 0.
    - the image's BF is the mean of F1_c over those classes.

    The dataset BF is the mean of the image BFs (images with no scored pixel
    are left out); ``per_class`` averages F1_c over the images containing c.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        tolerance: float = BOUNDARY_TOLERANCE,
    ):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.tolerance = float(tolerance)
        self.image_scores: list[float] = []
        self._class_sum = np.zeros(self.num_classes)
        self._class_count = np.zeros(self.num_classes, np.int64)

    def image_score(
        self, ground_truth: np.ndarray, prediction: np.ndarray
    ) -> tuple[float, dict[int, float]]:
        """Return (image BF, {class: F1}) for one frame, without accumulating.

        The image BF is NaN when nothing is scored.
        """
        _check_pair(ground_truth, prediction)
        height, width = ground_truth.shape
        disk = _disk(self.tolerance * math.hypot(height, width))
        valid = (
            (ground_truth != self.ignore_index)
            if self.ignore_index is not None
            else np.ones(ground_truth.shape, bool)
        )
        present = [int(c) for c in np.unique(ground_truth[valid]) if 0 <= c < self.num_classes]
        ignored = ~valid
        per_class: dict[int, float] = {}
        for c in present:
            gt_c, pred_c = ground_truth == c, prediction == c
            # Work in the class's bounding box (+2 px so its edge is never a boundary):
            # small classes are cheap.
            either = gt_c | pred_c
            rows, cols = np.flatnonzero(either.any(axis=1)), np.flatnonzero(either.any(axis=0))
            box = (
                slice(max(rows[0] - 2, 0), rows[-1] + 3),
                slice(max(cols[0] - 2, 0), cols[-1] + 3),
            )
            gt_edge = _boundary(gt_c[box], ignored[box])
            pred_edge = _boundary(pred_c[box], ignored[box])
            n_gt, n_pred = int(gt_edge.sum()), int(pred_edge.sum())
            if n_gt == 0 and n_pred == 0:
                per_class[c] = 1.0
                continue
            if n_gt == 0 or n_pred == 0:
                per_class[c] = 0.0
                continue
            near_gt = cv2.dilate(gt_edge.view(np.uint8), disk).view(bool)
            near_pred = cv2.dilate(pred_edge.view(np.uint8), disk).view(bool)
            precision = float(near_gt[pred_edge].mean())
            recall = float(near_pred[gt_edge].mean())
            total = precision + recall
            per_class[c] = 2 * precision * recall / total if total > 0 else 0.0
        score = float(np.mean(list(per_class.values()))) if per_class else math.nan
        return score, per_class

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> float:
        score, per_class = self.image_score(ground_truth, prediction)
        if not math.isnan(score):
            self.image_scores.append(score)
        for c, value in per_class.items():
            self._class_sum[c] += value
            self._class_count[c] += 1
        return score

    @property
    def score(self) -> float:
        return float(np.mean(self.image_scores)) if self.image_scores else math.nan

    @property
    def per_class(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self._class_count > 0, self._class_sum / np.maximum(self._class_count, 1), np.nan
            )


class LatencyStats:
    """Per-stage latency samples in milliseconds -> p50 / p95 / mean."""

    def __init__(self):
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, timings_ms: dict[str, float]) -> None:
        for stage, value in timings_ms.items():
            self.samples[stage].append(float(value))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.samples.items():
            arr = np.asarray(values)
            p50, p95 = p50_p95(arr)
            out[stage] = {
                "p50": p50,
                "p95": p95,
                "mean": float(arr.mean()),
                "count": int(arr.size),
            }
        return out


class FrameCounter:
    """Frames used and skipped, keyed by a short reason."""

    def __init__(self):
        self.used = 0
        self.skipped: Counter[str] = Counter()

    def use(self) -> None:
        self.used += 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> dict:
        return {
            "used": self.used,
            "skipped": dict(sorted(self.skipped.items())),
            "total": self.used + sum(self.skipped.values()),
        }


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class Evaluation:
    """Everything one evaluation accumulates; ``to_dict`` gives the JSON both evaluators write.

    JSON keys: ``miou``, ``per_class_iou`` {name: IoU}, ``pixel_accuracy``,
    ``mean_class_accuracy``, ``per_class_accuracy``, ``boundary_f1``,
    ``per_class_boundary_f1``, ``latency_ms`` {stage: {p50, p95, mean, count}},
    ``frames`` {used, skipped: {reason: n}, total}, ``confusion_matrix``
    (rows: ground truth, columns: prediction, last column "unlabelled"),
    ``classes``, ``ignore_index``. Ratios are fractions in [0, 1]; null where
    a class can not be scored.
    """

    def __init__(
        self,
        class_names: list[str] | tuple[str, ...],
        ignore_index: int | None = 255,
        boundary_tolerance: float = BOUNDARY_TOLERANCE,
    ):
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.confusion = ConfusionMatrix(len(self.class_names), ignore_index)
        self.boundary = BoundaryF1(len(self.class_names), ignore_index, boundary_tolerance)
        self.latency = LatencyStats()
        self.frames = FrameCounter()

    def add_frame(
        self,
        ground_truth: np.ndarray,
        prediction: np.ndarray,
        timings_ms: dict[str, float] | None = None,
    ) -> dict:
        """Score one frame and accumulate it; return the frame's own scores.

        The scores are miou, pixel_accuracy and boundary_f1. Raises ValueError
        (nothing accumulated) for mismatched sizes or foreign labels.
        """
        frame_counts = self.confusion.frame_counts(ground_truth, prediction)
        frame_bf = self.boundary.update(ground_truth, prediction)
        self.confusion.counts += frame_counts
        if timings_ms:
            self.latency.add(timings_ms)
        self.frames.use()
        scores = ConfusionMatrix.scores(frame_counts)
        return {
            "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "boundary_f1": frame_bf,
        }

    def skip(self, reason: str) -> None:
        self.frames.skip(reason)

    def to_dict(self) -> dict:
        scores = self.confusion.summary()
        names = self.class_names
        return {
            "miou": _json_number(scores["miou"]),
            "per_class_iou": {n: _json_number(v) for n, v in zip(names, scores["iou"])},
            "pixel_accuracy": _json_number(scores["pixel_accuracy"]),
            "mean_class_accuracy": _json_number(scores["mean_class_accuracy"]),
            "per_class_accuracy": {
                n: _json_number(v) for n, v in zip(names, scores["class_accuracy"])
            },
            "boundary_f1": _json_number(self.boundary.score),
            "per_class_boundary_f1": {
                n: _json_number(v) for n, v in zip(names, self.boundary.per_class)
            },
            "latency_ms": self.latency.summary(),
            "frames": self.frames.summary(),
            "pixels": scores["pixels"],
            "classes": names,
            "ignore_index": self.ignore_index,
            "confusion_matrix": self.confusion.counts.tolist(),
        }
