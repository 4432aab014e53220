"""The offline evaluation loop: frames -> pipeline -> metrics.

Also saves predictions, writes the output bag and keeps the worst frames.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from seg_ros.evaluation.metrics import Evaluation
from seg_ros.evaluation.sources import Frame
from seg_ros.visualize import overlay

LOG = logging.getLogger(__name__)
LOGGED_PER_REASON = 5  # skipped frames logged one by one per reason; the rest only counted


@dataclass(order=True)
class WorstFrame:
    """A badly segmented frame kept for the report.

    Ordered so the best of the worst is dropped first.
    """

    neg_miou: float
    key: str = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)
    label: np.ndarray = field(compare=False, repr=False)
    prediction: np.ndarray = field(compare=False, repr=False)

    @property
    def miou(self) -> float:
        return -self.neg_miou


@dataclass
class OfflineResult:
    evaluation: Evaluation
    worst: list[WorstFrame]  # lowest frame mIoU first
    frame_totals_ms: list[float]  # whole pipeline time per segmented frame, for the histogram


def evaluate_frames(
    pipeline,
    frames: Iterable[Frame],
    evaluation: Evaluation,
    *,
    total: int | None = None,
    limit: int = 0,
    save_predictions: Path | None = None,
    output_bag=None,
    palette=None,
    worst_count: int = 4,
    progress: bool = True,
) -> OfflineResult:
    """Run ``pipeline`` over ``frames`` and score every frame that has usable ground truth.

    Frames with a decodable image are segmented when they can be scored, or
    when predictions are saved or an output bag is written. ``limit`` stops
    after that many image frames (0: all).
    """
    if save_predictions is not None:
        save_predictions.mkdir(parents=True, exist_ok=True)
    logged: Counter[str] = Counter()
    worst: list[WorstFrame] = []
    totals: list[float] = []
    images_seen = 0
    bar_total = min(total, limit) if (total and limit) else (total or limit or None)
    with tqdm(total=bar_total, unit="frame", desc="evaluate", disable=not progress) as bar:
        for frame in frames:
            is_image = frame.skip_reason != "label_without_image"
            if is_image:
                if limit and images_seen >= limit:
                    break
                images_seen += 1
                bar.update(1)
            if (
                frame.skip_reason is None
                and frame.label is not None
                and frame.image is not None
                and frame.image.shape[:2] != frame.label.shape
            ):
                frame.skip_reason = "size_mismatch"
                frame.problem = (
                    f"frame {frame.key}: image is {frame.image.shape[1]}x{frame.image.shape[0]} "
                    f"but its label is {frame.label.shape[1]}x{frame.label.shape[0]}"
                )
            scorable = frame.skip_reason is None and frame.label is not None
            wants_output = save_predictions is not None or output_bag is not None
            result = None
            if frame.image is not None and (scorable or wants_output):
                result = pipeline.process(frame.image)
                totals.append(result.total_ms)
                if save_predictions is not None:
                    cv2.imwrite(str(save_predictions / f"{frame.key}.png"), result.label)
                if output_bag is not None and frame.header is not None:
                    color = result.color_mask(palette)
                    output_bag.write_outputs(
                        frame.header,
                        frame.log_time,
                        result.label,
                        result.confidence,
                        overlay(frame.image, color, 0.5),
                    )
            if scorable:
                try:
                    scores = evaluation.add_frame(frame.label, result.label, result.timings_ms)
                except ValueError as exc:
                    frame.skip_reason, frame.problem = (
                        "invalid_ground_truth",
                        f"frame {frame.key}: {exc}",
                    )
                else:
                    _keep_worst(worst, worst_count, frame, result.label, scores["miou"])
                    bar.set_postfix(
                        miou=f"{evaluation.confusion.summary()['miou']:.3f}", refresh=False
                    )
            if frame.skip_reason is not None:
                evaluation.skip(frame.skip_reason)
                logged[frame.skip_reason] += 1
                if logged[frame.skip_reason] <= LOGGED_PER_REASON:
                    LOG.warning("skipped (%s): %s", frame.skip_reason, frame.problem)
                elif logged[frame.skip_reason] == LOGGED_PER_REASON + 1:
                    LOG.warning(
                        "more frames skipped for %s; only counting them from now on",
                        frame.skip_reason,
                    )
    return OfflineResult(evaluation, sorted(worst, reverse=True), totals)


def _keep_worst(
    heap: list[WorstFrame], count: int, frame: Frame, prediction: np.ndarray, miou: float
) -> None:
    if count <= 0 or math.isnan(miou):
        return
    item = WorstFrame(-miou, frame.key, frame.image, frame.label, prediction)
    if len(heap) < count:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)
