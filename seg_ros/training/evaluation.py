"""Scoring a network during training, and BatchNorm recalibration (precise BN) before it."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_ros.datasets import IGNORE, SegmentationDataset
from seg_ros.models.head import segmentation_head
from seg_ros.training.device import memory_format


def tqdm_interval() -> float:
    """Redraw often on a terminal, rarely into a log file."""
    return 0.1 if sys.stderr.isatty() else 30.0


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict:
    """Predict each image at the dataset's network size, upsample to the label's resolution, score.

    Returns fractions: miou, per_class_iou (None for a class absent from labels and predictions),
    pixel_accuracy, mean_class_accuracy.
    """
    from seg_ros.evaluation import ConfusionMatrix

    module.eval()
    confusion = ConfusionMatrix(dataset.num_classes, ignore_index=IGNORE)
    for index in tqdm(
        range(len(dataset)),
        desc="validating",
        unit="img",
        leave=False,
        disable=not progress,
        mininterval=tqdm_interval(),
    ):
        image, label = dataset[index]
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            logits = module(image[None].to(device, memory_format=memory_format(device, amp_dtype)))
        logits = F.interpolate(
            logits.float(), size=label.shape, mode="bilinear", align_corners=False
        )
        confusion.update(label.numpy(), segmentation_head(logits, False)[0][0].cpu().numpy())
    summary = confusion.summary()
    return {
        "miou": 0.0 if math.isnan(summary["miou"]) else summary["miou"],
        "per_class_iou": [None if math.isnan(v) else float(v) for v in summary["iou"]],
        "pixel_accuracy": summary["pixel_accuracy"],
        "mean_class_accuracy": summary["mean_class_accuracy"],
    }


@torch.no_grad()
def recalibrate_batchnorm(
    module: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    *,
    batches: int,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> None:
    """Precise BN: set every BatchNorm's running mean/var to a plain average over training batches.

    Short runs need it: with a small BN momentum (torchvision's MobileNetV3
    uses 0.01) the running statistics lag far behind weights that change
    fast, and eval-mode predictions collapse to one or two classes (seen here:
    DeepLab v3+ at 1 % val mIoU after two epochs, fine in train mode). The
    weights' moving average needs it too: averaged weights with averaged
    statistics do not match.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    was_training = module.training
    module.train()
    loader = DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for index, (images, _) in enumerate(loader):
        if index >= batches:
            break
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            module(images.to(device, memory_format=memory_format(device, amp_dtype)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    module.train(was_training)
