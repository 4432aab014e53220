"""Segmentation networks (pure torch): SegNet, DeepLab v3/v3+, RefineNet, FCN; their checkpoints.

``build_model`` makes a network; ``load_model`` makes one and loads weights
(bundled, a seg_ros checkpoint or a torchvision state_dict); ``save_checkpoint``
writes self-describing .safetensors files that ``bundled_models`` finds in models/.
"""

from __future__ import annotations

from seg_ros.models.checkpoint import (
    LoadedModel,
    ModelSpec,
    bundled_models,
    load_model,
    read_spec,
    save_checkpoint,
)
from seg_ros.models.zoo import CHOICES, FAMILIES, build_model, resolve_options, variant_name

__all__ = [
    "CHOICES",
    "FAMILIES",
    "LoadedModel",
    "ModelSpec",
    "build_model",
    "bundled_models",
    "load_model",
    "read_spec",
    "resolve_options",
    "save_checkpoint",
    "variant_name",
]
