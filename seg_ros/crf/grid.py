"""The post-hoc CRF's coarse message-passing grid: its factor, cells, and the way back up.

Message passing runs on a grid ``downsample`` times coarser than the image
(automatic: 4 at 480x360 with the default kernels); the coarse unary is the
area mean of the probabilities, and the coarse messages come back to full
resolution edge-aware: each pixel takes its 4 nearest coarse samples, weighted
bilinearly times their colour similarity to the pixel, so labels still snap
to the image's own edges.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from seg_ros.crf.lattice import Csr

MAX_DOWNSAMPLE = 4
MIN_COARSE_SIGMA = 0.75  # automatic grids keep every kernel at least this many coarse pixels wide
MIN_COARSE_SIDE = 90  # ... and at least this many coarse pixels on the image's short side


def auto_downsample(
    height: int,
    width: int,
    gaussian_sxy: float,
    gaussian_weight: float,
    bilateral_sxy: float,
    bilateral_weight: float,
) -> int:
    """Return the coarsest grid factor that keeps the kernels and the grid wide enough.

    Every active kernel stays MIN_COARSE_SIGMA coarse pixels wide and the grid MIN_COARSE_SIDE
    pixels high (measured on CamVid: 4 at 480x360 repairs as well as the full resolution, 2 at
    240x180; scripts/crf_benchmark.py).
    """
    widths = [
        s for s, w in ((gaussian_sxy, gaussian_weight), (bilateral_sxy, bilateral_weight)) if w > 0
    ]
    if not widths:
        return 1
    factor = min(
        int(min(widths) // MIN_COARSE_SIGMA),
        round(min(height, width) / MIN_COARSE_SIDE),
        MAX_DOWNSAMPLE,
    )
    return max(1, factor)


def area_mean(planes, size: tuple[int, int]):
    """Average each adaptive-pooling cell of a C×H×W tensor (torch's adaptive average pooling).

    OpenCV's INTER_AREA on the CPU where the cells are whole s×s blocks: same result, faster.
    """
    height, width = planes.shape[1:]
    whole_blocks = height % size[0] == 0 and width % size[1] == 0
    if planes.device.type == "cpu" and whole_blocks and planes.dtype == torch.float32:
        dsize = (size[1], size[0])
        return torch.from_numpy(
            np.stack(
                [
                    cv2.resize(plane, dsize, interpolation=cv2.INTER_AREA)
                    for plane in planes.numpy()
                ]
            )
        )
    return torch.nn.functional.adaptive_avg_pool2d(planes[None], size)[0]


def cell_centres(size: int, cells: int) -> np.ndarray:
    """Return the full-resolution centre of each adaptive-average-pooling cell along one axis."""
    j = np.arange(cells)
    start = (j * size) // cells
    end = -((-(j + 1) * size) // cells)
    return (start + end - 1) / 2.0


def upsample_matrix(
    image: np.ndarray,
    coarse_image: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    colour_sigma: float,
) -> Csr:
    """Build the full × coarse matrix over each pixel's 4 nearest coarse samples.

    Bilinear weights times colour similarity exp(-|I - I_coarse|² / 2 σ²) relative to the most
    similar of the 4, renormalised, so that messages follow the pixel's own edges (plain bilinear
    where no colour is close).
    """
    height, width = image.shape[:2]
    coarse_w = coarse_image.shape[1]

    def neighbours(size: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = np.clip(
            np.searchsorted(centres, np.arange(size), side="right") - 1, 0, centres.size - 2
        )
        frac = np.clip(
            (np.arange(size) - centres[low]) / (centres[low + 1] - centres[low]), 0.0, 1.0
        )
        return low, frac.astype(np.float32)

    y0, fy = neighbours(height, ys)
    x0, fx = neighbours(width, xs)
    coarse8 = np.rint(coarse_image).astype(np.uint8)
    # exp(-|d|²/2σ²) = product over the channels of exp(-d_c²/2σ²): one table lookup per channel.
    table = np.exp(-0.5 * (np.arange(256) / colour_sigma) ** 2).astype(np.float32)
    cols = np.empty((4, height, width), np.int32)
    weights = np.empty((4, height, width), np.float32)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        rows, columns = y0 + dy, x0 + dx
        cols[k] = rows[:, None] * coarse_w + columns[None, :]
        factors = cv2.LUT(
            cv2.absdiff(image, coarse8.take(rows, axis=0).take(columns, axis=1)), table
        )
        np.multiply(factors[..., 0], factors[..., 1], out=weights[k])
        weights[k] *= factors[..., 2]
    best = np.maximum(np.maximum(weights[0], weights[1]), np.maximum(weights[2], weights[3]))
    best += np.float32(1e-30)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        weights[k] /= best
        weights[k] += np.float32(1e-4)
        weights[k] *= (fy if dy else 1 - fy)[:, None]
        weights[k] *= (fx if dx else 1 - fx)[None, :]
    weights *= 1.0 / (weights[0] + weights[1] + weights[2] + weights[3])
    crow = np.arange(0, cols.size + 1, 4, dtype=np.int32)
    return Csr(
        crow,
        np.ascontiguousarray(cols.transpose(1, 2, 0)).reshape(-1),
        np.ascontiguousarray(weights.transpose(1, 2, 0)).reshape(-1),
        (height * width, coarse_image.shape[0] * coarse_w),
    )
