"""ESPNet-C (Mehta et al., ECCV 2018), the encoder of ESPNet, as a backbone with named taps.

Module names follow the authors' ``ESPNet_Encoder`` (sacmehta/ESPNet, MIT licence), so their
Cityscapes-trained encoder file loads by key as a pretrained backbone. An ESP block reduces
channels with one 1x1 (or strided 3x3) convolution, runs five 3x3 convolutions with dilations
1, 2, 4, 8 and 16 in parallel, sums them hierarchically to avoid gridding, and concatenates.
The image, average-pooled, is fed back in at strides 2 and 4.

The authors trained on BGR pixels normalised with their own Cityscapes statistics; the encoder
takes the package's ImageNet-normalised RGB and converts it first (a fixed per-channel affine
map), so the rest of the package keeps one normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from seg_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD

# The authors' normalisation: (pixel[BGR, 0..255] - mean) / std / 255.
ESPNET_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
ESPNET_STD_BGR = (45.3192215, 46.15289307, 44.91483307)
PRETRAINED_CREDIT = (
    "ESPNet-C encoder (p=2, q=8) trained on Cityscapes by its authors (Mehta et al., ECCV 2018; "
    "github.com/sacmehta/ESPNet, MIT licence, copyright 2018 Sachin Mehta: models/ESPNET_LICENSE)"
)
P_BLOCKS, Q_BLOCKS = 2, 8  # ESP blocks at stride 4 and 8 (the ESPNet-C p=2, q=8 file)
DILATIONS = (1, 2, 4, 8, 16)


class ConvBnPrelu(nn.Module):
    """The authors' CBR: conv, BN (eps 1e-3), PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BnPrelu(nn.Module):
    """The authors' BR: BN (eps 1e-3) and PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-3)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class Conv(nn.Module):
    """A bias-free convolution under the key ``conv`` (the authors' C and CDilated)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (kernel // 2) * dilation
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EspBlock(nn.Module):
    """ESP block: reduce, five dilated 3x3 in parallel, hierarchical sum, concatenate.

    ``downsample``: a strided 3x3 reduction and BN+PReLU under ``bn``/``act`` (the authors'
    DownSamplerB); otherwise a 1x1 reduction, the residual sum and BR under ``bn``
    (DilatedParllelResidualBlockB).
    """

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        n = cout // 5
        first = cout - 4 * n
        self.downsample = downsample
        self.c1 = Conv(cin, n, 3, 2) if downsample else Conv(cin, n, 1)
        self.d1 = Conv(n, first, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)
        if downsample:
            self.bn = nn.BatchNorm2d(cout, eps=1e-3)
            self.act = nn.PReLU(cout)
        else:
            self.bn = BnPrelu(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        sums = [self.d2(reduced)]
        for branch in (self.d4, self.d8, self.d16):
            sums.append(sums[-1] + branch(reduced))
        combined = torch.cat([self.d1(reduced), *sums], dim=1)
        if self.downsample:
            return self.act(self.bn(combined))
        return self.bn(x + combined)


class EspNetC(nn.Module):
    """ESPNet-C encoder; taps level1 (stride 2, 19 ch), level2 (4, 131), level3 (8, 256).

    ``forward`` returns the taps named in ``return_layers`` under their new names, like
    torchvision's ``IntermediateLayerGetter``.
    """

    def __init__(self, return_layers: dict[str, str]):
        super().__init__()
        unknown = set(return_layers) - {"level1", "level2", "level3"}
        if unknown:
            raise ValueError(f"ESPNet-C has no tap {sorted(unknown)}")
        self.return_layers = dict(return_layers)
        self.level1 = ConvBnPrelu(3, 16, 3, 2)
        self.b1 = BnPrelu(16 + 3)
        self.level2_0 = EspBlock(16 + 3, 64, downsample=True)
        self.level2 = nn.ModuleList(EspBlock(64, 64, downsample=False) for _ in range(P_BLOCKS))
        self.b2 = BnPrelu(128 + 3)
        self.level3_0 = EspBlock(128 + 3, 128, downsample=True)
        self.level3 = nn.ModuleList(EspBlock(128, 128, downsample=False) for _ in range(Q_BLOCKS))
        self.b3 = BnPrelu(256)
        scale, shift = _imagenet_to_espnet()
        self.register_buffer("input_scale", scale, persistent=False)
        self.register_buffer("input_shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flip(1) * self.input_scale + self.input_shift  # ImageNet RGB -> the authors' BGR
        half = nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
        quarter = nn.functional.avg_pool2d(half, 3, stride=2, padding=1)
        taps = {"level1": self.b1(torch.cat([self.level1(x), half], dim=1))}
        down = self.level2_0(taps["level1"])
        out = down
        for block in self.level2:
            out = block(out)
        taps["level2"] = self.b2(torch.cat([out, down, quarter], dim=1))
        down = self.level3_0(taps["level2"])
        out = down
        for block in self.level3:
            out = block(out)
        taps["level3"] = self.b3(torch.cat([down, out], dim=1))
        return {new: taps[old] for old, new in self.return_layers.items()}


def _imagenet_to_espnet() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift taking ImageNet-normalised BGR-flipped input to ESPNet's.

    ImageNet: x = (p / 255 - m) / s. ESPNet: y = (p - M) / S / 255 = (x * s + m - M / 255) / S.
    """
    m = torch.tensor(IMAGENET_MEAN[::-1])
    s = torch.tensor(IMAGENET_STD[::-1])
    mean = torch.tensor(ESPNET_MEAN_BGR) / 255.0
    std = torch.tensor(ESPNET_STD_BGR)
    scale = s / std
    shift = (m - mean) / std
    return scale.view(1, 3, 1, 1), shift.view(1, 3, 1, 1)
