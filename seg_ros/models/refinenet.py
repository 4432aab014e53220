"""RefineNet (Lin et al., CVPR 2017) and Light-Weight RefineNet (Nekrasov et al., BMVC 2018).

Both refine deep, coarse backbone features with shallower ones, one cascade
level per backbone stride (1/32 -> 1/16 -> 1/8 -> 1/4). A level takes every
backbone tap at its stride plus the coarser level's output.

- RefineNet: each input path gets an adaptive 3x3 conv and two residual conv
  units (RCU); multi-resolution fusion (3x3 conv per path, upsample, sum);
  chained residual pooling (CRP, two 5x5 max-pool + 3x3 conv blocks); one
  output RCU. Two more RCUs and a classifier close the network.
- Light-Weight RefineNet: 1x1 convs instead of 3x3, no RCUs, four CRP blocks
  with 1x1 convs, fusion by sum after 1x1 reductions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models.backbones import (
    IMAGENET_PREFIX,
    TAPS,
    feature_extractor,
    load_imagenet_weights,
)


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ChainedResidualPooling(nn.Module):
    """Chain (5x5 stride-1 max-pool, conv) blocks; every block's output is added to the input."""

    def __init__(self, channels: int, blocks: int, kernel: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's CPU max-pool is 4-8x slower on NCHW tensors than on channels-last ones
        # (it dominated LW-RefineNet's training steps); this chain has no dilated convolution,
        # so the layout that breaks oneDNN's bf16 backward elsewhere is safe here. Eager only:
        # an exported graph has no layout, and the conversion would pin its batch size.
        if not torch.compiler.is_compiling():
            x = x.contiguous(memory_format=torch.channels_last)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, 5, stride=1, padding=2))
            x = x + path
        return x


class ResidualConvUnit(nn.Module):
    """RCU: ReLU, 3x3 conv, ReLU, 3x3 conv, plus the input (a ResNet block without BN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class RefineBlock(nn.Module):
    """One RefineNet block: per path conv + 2 RCUs, multi-resolution fusion, CRP, output RCU."""

    def __init__(self, tap_channels: list[int], previous_channels: int, width: int):
        super().__init__()
        self.adapt = nn.ModuleList(
            nn.Conv2d(c, width, 3, padding=1, bias=False) for c in tap_channels
        )
        path_widths = [width] * len(tap_channels) + (
            [previous_channels] if previous_channels else []
        )
        self.paths = nn.ModuleList(
            nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in path_widths
        )
        fuse_to = min(path_widths)
        self.fuse = (
            nn.ModuleList(nn.Conv2d(c, fuse_to, 3, padding=1, bias=False) for c in path_widths)
            if len(path_widths) > 1
            else None
        )
        self.pool = ChainedResidualPooling(fuse_to, blocks=2, kernel=3)
        self.out = ResidualConvUnit(fuse_to)
        self.out_channels = fuse_to

    def forward(self, taps: list[torch.Tensor], previous: torch.Tensor | None) -> torch.Tensor:
        inputs = [adapt(t) for adapt, t in zip(self.adapt, taps)]
        if previous is not None:
            inputs.append(previous)
        inputs = [path(x) for path, x in zip(self.paths, inputs)]
        if self.fuse is None:
            x = inputs[0]
        else:
            finest = max(inputs, key=lambda t: t.shape[-1])
            x = sum(_upsample(conv(t), finest) for conv, t in zip(self.fuse, inputs))
        return self.out(self.pool(F.relu(x)))


class LightRefineLevel(nn.Module):
    """LW-RefineNet level: 1x1 reductions + upsampled coarser level, ReLU, CRP (4 x 1x1)."""

    def __init__(self, tap_channels: list[int], width: int, out_channels: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c in tap_channels)
        self.pool = ChainedResidualPooling(width, blocks=4, kernel=1)
        # 1x1 conv handing the result to the next (finer) level; the finest level has none.
        self.handover = nn.Conv2d(width, out_channels, 1, bias=False) if out_channels else None

    def forward(self, taps: list[torch.Tensor], previous: torch.Tensor | None) -> torch.Tensor:
        x = sum(reduce(t) for reduce, t in zip(self.reduce, taps))
        if previous is not None:
            x = x + _upsample(previous, x)
        x = self.pool(F.relu(x))
        return self.handover(x) if self.handover is not None else x


class RefineNet(nn.Module):
    """Backbone taps by stride -> cascade from coarse to fine -> classifier -> upsampling."""

    CLASSIFIER = "classifier"

    def __init__(
        self,
        backbone: nn.Module,
        groups: list[list[str]],
        levels: list[nn.Module],
        head: nn.Module,
        classifier: nn.Conv2d,
    ):
        super().__init__()
        self.backbone = backbone
        self.groups = groups  # tap names per level, coarsest first
        self.levels = nn.ModuleList(levels)
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        out = None
        for names, level in zip(self.groups, self.levels):
            out = level([features[n] for n in names], out)
        logits = self.classifier(self.head(out))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def refinenet(
    num_classes: int, *, backbone: str, light_weight: bool, pretrained_backbone: str = ""
) -> RefineNet:
    """4-cascade RefineNet (``light_weight=False``) or Light-Weight RefineNet on ``backbone``."""
    taps = TAPS[backbone]
    strides = sorted({s for _, s, _ in taps}, reverse=True)  # 32, 16, 8, 4
    groups = [[name for name, s, _ in taps if s == stride] for stride in strides]
    channels = {name: c for name, _, c in taps}
    body = feature_extractor(backbone, {name: name for name, _, _ in taps})
    # The ResNet variants give the coarsest level 512 channels, as both papers do; the rest use
    # 256.
    deep_width = 512 if backbone.startswith("resnet") else 256
    levels: list[nn.Module] = []
    previous = 0
    for i, names in enumerate(groups):
        width = deep_width if i == 0 else 256
        tap_channels = [channels[n] for n in names]
        if light_weight:
            levels.append(LightRefineLevel(tap_channels, width, 256 if i < len(groups) - 1 else 0))
        else:
            block = RefineBlock(tap_channels, previous, width)
            previous = block.out_channels
            levels.append(block)
    if light_weight:
        head: nn.Module = nn.Identity()
        classifier = nn.Conv2d(256, num_classes, 3, padding=1)
    else:
        head = nn.Sequential(ResidualConvUnit(256), ResidualConvUnit(256), nn.Dropout(0.5))
        classifier = nn.Conv2d(256, num_classes, 3, padding=1)
    if pretrained_backbone:
        load_imagenet_weights(body, pretrained_backbone, IMAGENET_PREFIX[backbone])
    return RefineNet(body, groups, levels, head, classifier)
