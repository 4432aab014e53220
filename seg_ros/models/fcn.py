"""FCN (Long, Shelhamer & Darrell, CVPR 2015): the classifier's dense layers as convolutions.

``backbone='vgg16'`` is the paper's network: torchvision's VGG16 ``features``,
fc6/fc7 as 7x7 and 1x1 convolutions, a 1x1 score layer, and for FCN-16s/8s
score layers on pool4/pool3 fused after learned 2x transposed-convolution
upsampling (initialised to bilinear; the skip scores start at zero, as in the
paper's staged training). The paper pads the input by 100 and crops; here the
input is zero-padded (at the normalised mean) to a multiple of 32, every
upsampling is exact, and the output is cropped to the input: any HxW works.

``backbone='resnet50'|'resnet101'`` is torchvision's ``fcn_resnet*`` layout
(dilated ResNet at output stride 8, ``FCNHead``, optional ``aux_classifier``
on layer3), so torchvision's state_dicts load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from seg_ros.models.backbones import (
    IMAGENET_PREFIX,
    feature_extractor,
    load_imagenet_weights,
    read_tensor_checkpoint,
)

# Index after each of VGG16's pooling layers in torchvision's ``features`` (pool3, pool4, pool5).
VGG16_POOL_ENDS = (17, 24, 31)
VGG16_STRIDE = 32
FC_CHANNELS = 4096


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """Return per-channel bilinear upsampling weights for a ConvTranspose2d (C × C × size²)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    steps = torch.arange(size, dtype=torch.float32)
    profile = 1 - (steps - centre).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = profile[:, None] * profile[None, :]
    return weight


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Make a learned x``factor`` upsampling, exact in size (kernel 2f, padding f/2), bilinear."""
    layer = nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    if layer.weight.device.type != "meta":
        with torch.no_grad():
            layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return layer


def _zero_score(cin: int, num_classes: int) -> nn.Conv2d:
    layer = nn.Conv2d(cin, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FCNVGG16(nn.Module):
    """FCN-32s/16s/8s on VGG16 (the paper's networks)."""

    CLASSIFIER = "score_fr"

    def __init__(self, num_classes: int, variant: str):
        super().__init__()
        self.variant = variant
        self.features = tvm.vgg16(weights=None).features
        self.fc6 = nn.Sequential(
            nn.Conv2d(512, FC_CHANNELS, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout()
        )
        self.fc7 = nn.Sequential(
            nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1), nn.ReLU(inplace=True), nn.Dropout()
        )
        self.score_fr = nn.Conv2d(FC_CHANNELS, num_classes, 1)
        if variant == "32s":
            self.upscore = _upsampler(num_classes, 32)
            return
        self.score_pool4 = _zero_score(512, num_classes)
        self.upscore2 = _upsampler(num_classes, 2)
        if variant == "16s":
            self.upscore = _upsampler(num_classes, 16)
            return
        self.score_pool3 = _zero_score(256, num_classes)
        self.upscore_pool4 = _upsampler(num_classes, 2)
        self.upscore = _upsampler(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, -width % VGG16_STRIDE, 0, -height % VGG16_STRIDE))
        pool3_end, pool4_end, _ = VGG16_POOL_ENDS
        pool3 = self.features[:pool3_end](padded)
        pool4 = self.features[pool3_end:pool4_end](pool3)
        pool5 = self.features[pool4_end:](pool4)
        score = self.score_fr(self.fc7(self.fc6(pool5)))
        if self.variant != "32s":
            score = self.upscore2(score) + self.score_pool4(pool4)
        if self.variant == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore(score)[..., :height, :width]


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: 3x3 conv to a quarter of the channels, BN, ReLU, dropout, score."""

    def __init__(self, cin: int, num_classes: int):
        hidden = cin // 4
        super().__init__(
            nn.Conv2d(cin, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(hidden, num_classes, 1),
        )


class FCNResNet(nn.Module):
    """torchvision's fcn_resnet50/101: dilated ResNet (stride 8), FCNHead, bilinear upsampling.

    ``aux_classifier`` (on layer3) only exists so torchvision checkpoints that carry it load
    strictly; torchvision uses it as a training loss, the network's output never depends on it.
    """

    CLASSIFIER = "classifier.4"

    def __init__(self, num_classes: int, backbone: str, aux_head: bool):
        super().__init__()
        layers = {"layer4": "out", "layer3": "aux"} if aux_head else {"layer4": "out"}
        self.backbone = feature_extractor(backbone, layers, output_stride=8)
        self.classifier = FCNHead(2048, num_classes)
        self.aux_classifier = FCNHead(1024, num_classes) if aux_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def fcn(
    num_classes: int,
    *,
    backbone: str,
    variant: str,
    aux_head: bool,
    pretrained_backbone: str = "",
) -> nn.Module:
    """FCN-``variant`` on ``backbone`` (vgg16: 32s | 16s | 8s; resnet50/101: torchvision's 8s).

    The combinations are checked by seg_ros.models.zoo.resolve_options.
    """
    if backbone == "vgg16":
        model: nn.Module = FCNVGG16(num_classes, variant)
        if pretrained_backbone:
            _load_vgg16_classifier_weights(model, pretrained_backbone)
        return model
    model = FCNResNet(num_classes, backbone, aux_head)
    if pretrained_backbone:
        load_imagenet_weights(model.backbone, pretrained_backbone, IMAGENET_PREFIX[backbone])
    return model


def _load_vgg16_classifier_weights(model: FCNVGG16, path: str) -> None:
    """Load VGG16's ImageNet convolutions, and its fc6/fc7 reshaped into convolutions (paper)."""
    state = read_tensor_checkpoint(path)
    load_imagenet_weights(model.features, path, "features.", state)
    for conv, key in ((model.fc6[0], "classifier.0"), (model.fc7[0], "classifier.3")):
        weight = state.get(f"{key}.weight")
        if weight is None or weight.numel() != conv.weight.numel():
            raise ValueError(f"{path}: no VGG16 {key}.weight to convert into FCN's {conv}")
        with torch.no_grad():
            conv.weight.copy_(weight.reshape(conv.weight.shape))
            conv.bias.copy_(state[f"{key}.bias"])
