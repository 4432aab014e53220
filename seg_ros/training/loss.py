"""The training loss: cross-entropy with class balancing and optional hard-pixel mining (OHEM)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros.datasets import IGNORE, SegmentationDataset, median_frequency_weights


def class_weights(dataset: SegmentationDataset, weighting: str) -> np.ndarray:
    """Per-class loss weights: median frequency, its square root (milder), or all ones."""
    if weighting == "none":
        return np.ones(dataset.num_classes, np.float32)
    weights = median_frequency_weights(dataset)
    return np.sqrt(weights) if weighting == "sqrt" else weights


class SegmentationLoss(torch.nn.Module):
    """Weighted cross-entropy over the labelled pixels; with `ohem` > 0 only the hardest ones.

    OHEM keeps the `ohem` fraction of labelled pixels with the highest loss
    (at least one), so the easy road and sky pixels stop dominating the
    gradient and thin classes (poles, signs) get more of it.
    """

    def __init__(self, weights: np.ndarray, ohem: float = 0.0):
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights, np.float32)))
        self.ohem = float(ohem)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of N×C×H×W logits against N×H×W labels (IGNORE skipped)."""
        if not self.ohem:
            return F.cross_entropy(logits, labels, weight=self.weights, ignore_index=IGNORE)
        pixel = F.cross_entropy(
            logits, labels, weight=self.weights, ignore_index=IGNORE, reduction="none"
        )
        valid = labels != IGNORE
        losses = pixel[valid]
        if losses.numel() == 0:
            return pixel.sum() * 0.0
        keep = max(1, int(self.ohem * losses.numel()))
        return torch.topk(losses, keep, sorted=False).values.mean()
