"""Inputs for the segment and demo tests: a small seeded model and two real (or synthetic) images.

The model is seeded, so every test that writes it gets the same bytes, hence
the same weights hash and one shared ONNX export in the test cache.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from conftest import camvid_root


def write_tiny_checkpoint(folder: Path) -> Path:
    """SegNet-Basic, 11 CamVid classes, trained size 64x96, seeded random weights."""
    import torch

    from seg_ros.models import ModelSpec, build_model, resolve_options, save_checkpoint

    torch.manual_seed(0)
    module = build_model("segnet", 11, backbone="basic").eval()
    spec = ModelSpec(
        name="segnet_basic_test",
        family="segnet",
        options=resolve_options("segnet", backbone="basic"),
        num_classes=11,
        class_table="camvid",
        input_height=64,
        input_width=96,
    )
    return save_checkpoint(folder / "segnet_basic_test.safetensors", module, spec)


def two_images(folder: Path) -> list[Path]:
    """Two CamVid val images linked into ``folder`` (never copied) when CamVid is here, else two synthetic ones."""
    val = camvid_root() / "val"
    sources = sorted(val.glob("*.png"))[:2] if val.is_dir() else []
    for src in sources:
        (folder / src.name).symlink_to(src)
    if not sources:
        rng = np.random.default_rng(5)
        for i in range(2):
            cv2.imwrite(
                str(folder / f"scene_{i}.png"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
            )
    return sorted(folder.iterdir())
