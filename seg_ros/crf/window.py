"""Truncated-window dense-CRF kernels (convolutional CRFs, Teichmann & Cipolla 2018), exportable.

Each cell of a grid ``factor`` times coarser than the image is coupled to the
``window`` × ``window`` cells around it only, with the dense CRF's own kernels:
Gaussian exp(-|Δp|²/2 sxy_g²) and bilateral exp(-|Δp|²/2 sxy_b² - |ΔI|²/2 srgb²)
(Δp in image pixels, I the cells' mean colour), each symmetrically normalised
over the window as the lattice is (D^-1/2 K D^-1/2). Everything is Pad,
Slice, elementwise arithmetic, AveragePool and a linear Resize: differentiable,
and exported to ONNX with operators TensorRT's parser takes, which the
permutohedral lattice is not. The post-hoc CRF (``kernel='window'``) and the
CRF-as-RNN layer both run ``window_crf``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seg_ros.crf.meanfield import mean_field

DEFAULT_WINDOW = 11  # cells per side (odd)
DEFAULT_DOWNSAMPLE = 4  # grid factor: at 480x360 the window spans ±20 image pixels
MAX_WINDOW = 31


def check_window(window, downsample) -> None:
    """Raise ValueError naming the bad window or grid factor."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}")
    if window > MAX_WINDOW:
        raise ValueError(f"window must be at most {MAX_WINDOW} cells, got {window}")
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample!r}")


def to_grid(planes, factor: int):
    """Average each factor × factor cell of N×C×H×W planes (edge-replicated to whole cells)."""
    if factor == 1:
        return planes
    height, width = planes.shape[-2:]
    padded = F.pad(planes, (0, -width % factor, 0, -height % factor), mode="replicate")
    return F.avg_pool2d(padded, factor)


def from_grid(planes, factor: int, size: tuple[int, int]):
    """Bilinear way back from the grid to the H×W image (the inverse of ``to_grid``'s cells)."""
    if factor == 1:
        return planes
    height, width = planes.shape[-2:]
    up = F.interpolate(
        planes, size=(height * factor, width * factor), mode="bilinear", align_corners=False
    )
    return up[..., : size[0], : size[1]]


def _neighbours(planes, window: int):
    """N×C×window²×H×W: each cell's window of neighbours (row-major offsets), zero outside.

    Shifted along x, then the stack along y: 2 × window slices instead of window².
    """
    radius = window // 2
    height, width = planes.shape[-2:]
    padded = F.pad(planes, (radius, radius, radius, radius))
    along_x = torch.stack([padded[..., dx : dx + width] for dx in range(window)], dim=2)
    along_y = torch.stack([along_x[..., dy : dy + height, :] for dy in range(window)], dim=2)
    return along_y.flatten(2, 3)


def window_kernels(
    colours,
    factor: int,
    window: int,
    gaussian_sxy,
    bilateral_sxy,
    bilateral_srgb,
):
    """Return N×2×window²×h×w normalised (Gaussian, bilateral) kernels for N×3×h×w colours.

    The widths are floats or 0-d tensors (the layer keeps them as a buffer).
    """
    radius = window // 2
    steps = torch.arange(-radius, radius + 1, dtype=colours.dtype, device=colours.device) * factor
    distance2 = (steps[:, None] ** 2 + steps[None, :] ** 2).reshape(1, -1, 1, 1)
    valid = _neighbours(torch.ones_like(colours[:, :1]), window)[:, 0]
    colour2 = ((_neighbours(colours, window) - colours[:, :, None]) ** 2).sum(1)
    gaussian = torch.exp(distance2 * (-0.5 / gaussian_sxy**2)) * valid
    bilateral = torch.exp(
        distance2 * (-0.5 / bilateral_sxy**2) + colour2 * (-0.5 / bilateral_srgb**2)
    )
    kernels = torch.stack([gaussian, bilateral * valid], dim=1)
    norm = torch.rsqrt(kernels.sum(2))  # the centre cell is always there: no division by zero
    return kernels * norm[:, :, None] * _neighbours(norm, window)


def window_messages(q, kernels, weights):
    """Σ_m w_m K_m Q for N×C×h×w q; ``weights`` 2×C (per-class) or 2×1 (Gaussian, bilateral).

    Two forms of one sum: exported, the window² neighbours are stacked and multiplied at once
    (a graph of a few dozen nodes per iteration); run, one offset at a time (slice, multiply,
    add), which keeps the operands in the cache: 8x faster on a CPU, and the exporter would take
    minutes over the thousands of nodes it unrolls to.
    """
    if torch.compiler.is_exporting():
        per_kernel = _neighbours(q, math.isqrt(kernels.shape[2]))[:, None] * kernels[:, :, None]
        gaussian, bilateral = per_kernel.sum(3).unbind(1)  # each N × C × h × w
    else:
        gaussian, bilateral = _offset_by_offset(q, kernels)
    return gaussian * weights[0][None, :, None, None] + bilateral * weights[1][None, :, None, None]


def _offset_by_offset(q, kernels):
    """Return K_g Q and K_b Q, accumulated over the window's offsets."""
    window = math.isqrt(kernels.shape[2])
    radius = window // 2
    height, width = q.shape[-2:]
    padded = F.pad(q, (radius, radius, radius, radius))
    gaussian = bilateral = None
    for offset in range(window * window):
        dy, dx = divmod(offset, window)
        shifted = padded[:, :, dy : dy + height, dx : dx + width]
        g = shifted * kernels[:, 0, offset : offset + 1]
        b = shifted * kernels[:, 1, offset : offset + 1]
        gaussian = g if gaussian is None else gaussian + g
        bilateral = b if bilateral is None else bilateral + b
    return gaussian, bilateral


def window_crf(
    image,
    log_prior,
    iterations: int,
    weights,
    compatibility=None,
    *,
    gaussian_sxy: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    window: int = DEFAULT_WINDOW,
    downsample: int = DEFAULT_DOWNSAMPLE,
):
    """Mean-field logits (N×C×H×W) of the windowed dense CRF.

    image: N×3×H×W RGB in 0..255; log_prior: N×C×H×W log probabilities (the negated unary);
    weights: 2×C or 2×1 kernel weights (Gaussian, bilateral); compatibility: C×C μ, None = Potts.
    The first iterations - 1 updates run on the grid, the last at full resolution from the
    full-resolution prior and the messages brought back up bilinearly.
    """
    size = tuple(image.shape[-2:])
    coarse_log_prior = to_grid(log_prior.exp(), downsample).log()
    kernels = window_kernels(
        to_grid(image, downsample), downsample, window, gaussian_sxy, bilateral_sxy, bilateral_srgb
    )

    def coarse(q):
        return window_messages(q, kernels, weights)

    def full(q):
        return from_grid(coarse(q), downsample, size)

    return mean_field(
        coarse_log_prior, log_prior, coarse, full, iterations, compatibility, class_dim=1
    )
