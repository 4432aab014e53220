"""DeepLab v3 (Chen et al., 2017) and v3+ (Chen et al., ECCV 2018) on torchvision backbones.

Module names follow torchvision's ``deeplabv3_*`` models (``backbone.*``,
``classifier.*``), so their state_dicts load strictly into ``version='v3'``.
v3+ adds a decoder that fuses the ASPP output with stride-4 features and, as
in the v3+ paper, can use depthwise-separable atrous convolutions.
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

# ASPP atrous rates for each output stride (DeepLab v3, Section 3.3).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48  # v3+ reduces the stride-4 features to 48 channels before fusing


def _conv3x3(cin: int, cout: int, dilation: int, separable: bool) -> nn.Sequential:
    """3x3 conv + BN + ReLU; separable: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    if not separable:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch: global average, 1x1 conv, broadcast back to the feature size."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """ASPP: 1x1, three atrous 3x3 and image pooling, concatenated and projected."""

    def __init__(
        self,
        cin: int,
        rates: tuple[int, int, int],
        cout: int = ASPP_CHANNELS,
        separable: bool = False,
    ):
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )
        ]
        branches += [_conv3x3(cin, cout, rate, separable) for rate in rates]
        branches.append(ImagePooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """Backbone -> ASPP head (torchvision's DeepLabHead layout) -> bilinear upsampling."""

    CLASSIFIER = "classifier.4"

    def __init__(self, backbone: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PlusDecoder(nn.Module):
    """v3+ decoder: ASPP output at stride 4 + reduced low-level features, classified."""

    def __init__(self, low_channels: int, num_classes: int, separable: bool):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, LOW_LEVEL_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(LOW_LEVEL_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            _conv3x3(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, ASPP_CHANNELS, 1, separable),
            _conv3x3(ASPP_CHANNELS, ASPP_CHANNELS, 1, separable),
        )
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.reduce(low)], dim=1)))


class DeepLabV3Plus(nn.Module):
    """Backbone -> ASPP on the deepest features -> decoder with stride-4 features -> upsampling."""

    CLASSIFIER = "decoder.classifier"

    def __init__(self, backbone: nn.Module, aspp: ASPP, decoder: PlusDecoder):
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        logits = self.decoder(self.aspp(features["out"]), features["low"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplab(
    num_classes: int,
    *,
    version: str,
    backbone: str,
    output_stride: int,
    separable: bool,
    pretrained_backbone: str = "",
) -> nn.Module:
    """DeepLab ``version`` ('v3' | 'v3plus') on ``backbone`` at ``output_stride`` (16 or 8)."""
    taps = TAPS[backbone]
    deep_name, _, deep_channels = taps[-1]
    rates = ATROUS_RATES[output_stride]
    if version == "v3":
        body = feature_extractor(backbone, {deep_name: "out"}, output_stride)
        head = nn.Sequential(
            ASPP(deep_channels, rates, separable=separable),
            nn.Conv2d(ASPP_CHANNELS, ASPP_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(ASPP_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(ASPP_CHANNELS, num_classes, 1),
        )
        model: nn.Module = DeepLabV3(body, head)
    else:
        low_name, _, low_channels = next(t for t in taps if t[1] == 4)
        body = feature_extractor(backbone, {low_name: "low", deep_name: "out"}, output_stride)
        model = DeepLabV3Plus(
            body,
            ASPP(deep_channels, rates, separable=separable),
            PlusDecoder(low_channels, num_classes, separable),
        )
    if pretrained_backbone:
        load_imagenet_weights(body, pretrained_backbone, IMAGENET_PREFIX[backbone])
    return model
