"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017) and SegNet-Basic.

The encoder max-pools 2x2 and remembers where each maximum was; the decoder
puts its values back at exactly those places (unpooling) before convolving.

Two interchangeable unpooling implementations, equal to the last bit:
- ``MaxPool2d(return_indices=True)`` + ``MaxUnpool2d`` (the paper's; used for training),
- :func:`unpool_like_max` (``tensorrt_friendly = True``), which finds each window's first
  maximum again from the encoder's pre-pooling map with Equal/MatMul/Where only, because
  TensorRT's ONNX parser supports neither MaxUnpool nor MaxPool's indices output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from seg_ros.models.backbones import load_imagenet_weights


def unpool_like_max(values: torch.Tensor, pre_pool: torch.Tensor) -> torch.Tensor:
    """Unpool ``values`` as ``MaxUnpool2d(2, 2)`` would at ``MaxPool2d(2, 2)``'s indices.

    The indices are those ``MaxPool2d`` would return for ``pre_pool``.

    PyTorch keeps the first maximum of each 2x2 window in row-major order; so
    does this (ties included), using only ops TensorRT parses.
    """
    n, c, h, w = pre_pool.shape
    windows = (
        pre_pool.reshape(n, c, h // 2, 2, w // 2, 2)
        .permute(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h // 2, w // 2, 4)
    )
    is_max = (windows == windows.amax(dim=-1, keepdim=True)).to(values.dtype)
    # earlier[j, k] = 1 for j < k, so (is_max @ earlier)[k] counts the maxima before slot k of a
    # window.
    earlier = torch.ones(4, 4, dtype=values.dtype, device=values.device).triu(diagonal=1)
    earlier_maxima = torch.matmul(is_max, earlier)
    first_max = (is_max > 0) & (earlier_maxima == 0)
    placed = torch.where(first_max, values.unsqueeze(-1), values.new_zeros(()))
    return placed.reshape(n, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _conv_bn(cin: int, cout: int, kernel: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class SegNet(nn.Module):
    """Encoder stages separated by 2x2 max-pooling, decoder stages preceded by unpooling.

    ``features`` holds the encoder as one ``nn.Sequential`` in torchvision's VGG
    layout (``features.N``), so ImageNet VGG16-bn weights load by key.
    """

    CLASSIFIER = "classifier"

    def __init__(
        self, features: nn.Sequential, decoder: list[nn.Sequential], classifier: nn.Conv2d
    ):
        super().__init__()
        self.features = features
        self.decoder = nn.ModuleList(decoder)  # deepest stage first
        self.classifier = classifier
        self.num_pools = sum(isinstance(m, nn.MaxPool2d) for m in features)
        self.tensorrt_friendly = (
            False  # True: unpool_like_max instead of MaxUnpool2d (ONNX export)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.num_pools
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:  # every pooling window must be a full 2x2 so unpooling mirrors it
            x = F.pad(x, (0, pad_w, 0, pad_h))
        memory = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                if self.tensorrt_friendly:
                    memory.append(x)
                    x = F.max_pool2d(x, 2, 2)
                else:
                    x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
                    memory.append(indices)
            else:
                x = layer(x)
        for stage, remembered in zip(self.decoder, reversed(memory)):
            if self.tensorrt_friendly:
                x = unpool_like_max(x, remembered)
            else:
                x = F.max_unpool2d(x, remembered, 2, 2)
            x = stage(x)
        x = self.classifier(x)
        return x[..., :height, :width]


def segnet_vgg16_bn(num_classes: int, pretrained_backbone: str = "") -> SegNet:
    """Build the paper's SegNet: VGG16-bn's 13 conv layers and a mirrored 13-conv decoder.

    29.4M parameters for 11 classes.
    """
    features = make_layers(cfgs["D"], batch_norm=True)
    if pretrained_backbone:
        load_imagenet_weights(features, pretrained_backbone, "features.")
    # Decoder stage widths, deepest first; the last conv of each stage narrows to the next stage's
    # width.
    plan = [
        (512, 512, 512, 512),
        (512, 512, 512, 256),
        (256, 256, 256, 128),
        (128, 128, 64),
        (64, 64),
    ]
    decoder = []
    for widths in plan:
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += _conv_bn(cin, cout, 3)
        decoder.append(nn.Sequential(*layers))
    return SegNet(features, decoder, nn.Conv2d(64, num_classes, 3, padding=1))


def segnet_basic(num_classes: int) -> SegNet:
    """SegNet-Basic: 4 encoders + 4 decoders of one 7x7 conv, 64 channels; no decoder ReLU."""
    layers: list[nn.Module] = []
    for cin in (3, 64, 64, 64):
        layers += _conv_bn(cin, 64, 7) + [nn.MaxPool2d(2, 2)]
    decoder = [nn.Sequential(*_conv_bn(64, 64, 7, relu=False)) for _ in range(4)]
    return SegNet(nn.Sequential(*layers), decoder, nn.Conv2d(64, num_classes, 1))
