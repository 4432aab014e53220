"""The Gaussian smoothness kernel as an exact separable blur (OpenCV on the CPU, torch elsewhere).

Cheaper than a second lattice: the kernel depends on pixel positions only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch


def gaussian_taps(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)


class SeparableBlur:
    """Gaussian blur (zero padding) of pixels × channels values on a height × width grid."""

    def __init__(self, taps: tuple[np.ndarray, np.ndarray], size: tuple[int, int], opencv: bool):
        self.taps_x, self.taps_y = taps
        self.size = size
        # OpenCV's blur is several times faster than torch's depthwise convolution on the CPU.
        self.opencv = opencv

    def filter(self, values):
        height, width = self.size
        channels = values.shape[1]
        if self.opencv and channels <= 512:  # OpenCV's channel limit
            grid = values.numpy().reshape(height, width, channels)
            out = cv2.sepFilter2D(
                grid, -1, self.taps_x, self.taps_y, borderType=cv2.BORDER_CONSTANT
            )
            return torch.from_numpy(out.reshape(-1, channels))
        planes = values.t().reshape(1, channels, height, width)
        kx = torch.from_numpy(self.taps_x).to(values.device).view(1, 1, 1, -1)
        ky = torch.from_numpy(self.taps_y).to(values.device).view(1, 1, -1, 1)
        planes = torch.nn.functional.conv2d(
            planes,
            kx.repeat(channels, 1, 1, 1),
            padding=(0, self.taps_x.size // 2),
            groups=channels,
        )
        planes = torch.nn.functional.conv2d(
            planes,
            ky.repeat(channels, 1, 1, 1),
            padding=(self.taps_y.size // 2, 0),
            groups=channels,
        )
        return planes.reshape(channels, -1).t().contiguous()
