"""Inputs for the segment and demo tests: a small seeded model and two shipped sample frames.

The model is seeded, so every test that writes it gets the same bytes, hence
the same weights hash and one shared ONNX export in the test cache.
"""

from __future__ import annotations

from pathlib import Path


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
    """Link two shipped sample frames into ``folder``: the same inputs on every machine."""
    from seg_ros.paths import samples_dir

    for src in sorted((samples_dir() / "camvid").glob("*.jpg"))[:2]:
        (folder / src.name).symlink_to(src)
    return sorted(folder.iterdir())
