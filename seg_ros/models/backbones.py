"""Backbones as feature extractors (torchvision's and ESPNet-C), atrous strides, local weights.

The feature extractors keep torchvision's module names, so torchvision's
classification checkpoints (ImageNet) and segmentation checkpoints load by key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter

# Tap points per backbone: (module name, nominal stride, channels), shallow to deep.
TAPS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "resnet50": (
        ("layer1", 4, 256),
        ("layer2", 8, 512),
        ("layer3", 16, 1024),
        ("layer4", 32, 2048),
    ),
    "resnet101": (
        ("layer1", 4, 256),
        ("layer2", 8, 512),
        ("layer3", 16, 1024),
        ("layer4", 32, 2048),
    ),
    "mobilenet_v3_large": (("3", 4, 24), ("6", 8, 40), ("12", 16, 112), ("16", 32, 960)),
    # torchvision's features[:18]: the 320->1280 conv that only serves the classifier is left out.
    "mobilenet_v2": (
        ("3", 4, 24),
        ("6", 8, 32),
        ("10", 16, 64),
        ("13", 16, 96),
        ("16", 32, 160),
        ("17", 32, 320),
    ),
    # ESPNet-C (seg_ros.models.espnet) ends at stride 8; its stride-2 tap is left to the decoders
    # that want it.
    "espnet_c": (("level2", 4, 131), ("level3", 8, 256)),
}

# Where the backbone's weights sit in torchvision's ImageNet classification checkpoints.
IMAGENET_PREFIX = {
    "resnet50": "",
    "resnet101": "",
    "mobilenet_v3_large": "features.",
    "mobilenet_v2": "features.",
    "espnet_c": "",  # the authors' Cityscapes encoder file (sacmehta/ESPNet)
}


def make_atrous(features: nn.Sequential, output_stride: int) -> None:
    """Replace the strides that would take ``features`` below ``output_stride`` by dilation.

    The block that would have downsampled already uses the new rate, as
    torchvision's ``mobilenet_v3_large(dilated=True)`` does. Parameter shapes
    do not change, so checkpoints still load.
    """
    stride, dilation = 1, 1
    for block in features:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        block_stride = max((c.stride[0] for c in convs), default=1)
        if stride * block_stride > output_stride:
            dilation *= block_stride
            for conv in convs:
                conv.stride = (1, 1)
        else:
            stride *= block_stride
        if dilation > 1:
            for conv in convs:
                k = conv.kernel_size[0]
                if k > 1:
                    conv.dilation = (dilation, dilation)
                    conv.padding = ((k - 1) // 2 * dilation,) * 2


def feature_extractor(
    name: str, return_layers: dict[str, str], output_stride: int = 32
) -> nn.Module:
    """Build backbone ``name`` returning the named taps (a dict) at ``output_stride``."""
    if name not in TAPS:
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(TAPS)}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if name == "espnet_c":
        from seg_ros.models.espnet import EspNetC

        return EspNetC(return_layers)  # stride 8 by design: its blocks are already dilated
    if name.startswith("resnet"):
        dilate = [False, output_stride <= 8, output_stride <= 16]  # layer2, layer3, layer4
        net = getattr(tvm, name)(weights=None, replace_stride_with_dilation=dilate)
        return IntermediateLayerGetter(net, return_layers=return_layers)
    features = getattr(tvm, name)(weights=None).features
    if name == "mobilenet_v2":
        features = features[:18]
    make_atrous(features, output_stride)
    return IntermediateLayerGetter(features, return_layers=return_layers)


def read_tensor_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint's state_dict, tensors only (``weights_only=True``/safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        raise ValueError(f"{path}: not a loadable tensor checkpoint ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}"
        )
    return state


def load_imagenet_weights(
    module: nn.Module, path: str | Path, prefix: str, state: dict | None = None
) -> None:
    """Load a backbone's weights from a local torchvision classification checkpoint.

    Keys under ``prefix`` that the module has are loaded, and every key the module needs must be
    there. ``state``: the checkpoint already read by ``read_tensor_checkpoint``.
    """
    if state is None:
        state = read_tensor_checkpoint(path)
    wanted = module.state_dict()
    picked = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and k[len(prefix) :] in wanted
    }
    # BatchNorm's step counters are not weights; files from PyTorch < 0.4.1 have none.
    missing = sorted(k for k in set(wanted) - set(picked) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(
            f"{path}: does not fit this backbone, {len(missing)} weights missing "
            f"(first: {missing[:3]})"
        )
    wrong = [k for k, v in picked.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: does not fit this backbone, {k} has shape {tuple(picked[k].shape)}, "
            f"expected {tuple(wanted[k].shape)}"
        )
    picked.update({k: wanted[k] for k in set(wanted) - set(picked)})  # the counters left out
    module.load_state_dict(picked, strict=True)
