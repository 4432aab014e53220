"""Dense CRF refinement of per-pixel class probabilities (fully connected CRF).

Mean-field inference for Krähenbühl & Koltun's fully connected CRF with Potts
compatibility, exactly the model the DeepLab line puts after the network and
CRF-as-RNN unrolls as layers: unary -log(p) (p clipped at 1e-5, as
pydensecrf's ``unary_from_softmax``), a Gaussian smoothness kernel over pixel
positions (``gaussian_sxy`` pixels) and a bilateral appearance kernel over
positions and RGB (``bilateral_sxy`` pixels, ``bilateral_srgb`` intensity
units), each normalised symmetrically (D^-1/2 K D^-1/2, pydensecrf's default)
and weighted by its compatibility. Each iteration:
Q <- softmax(-U + w_g K_g Q + w_b K_b Q).

How it is made fast (figures: scripts/crf_benchmark.py, README):

* The bilateral kernel is filtered on a permutohedral lattice, the same one
  as the reference implementation (pydensecrf), built once per frame with
  vectorised numpy and kept as sparse matrices (seg_ros.crf_lattice); an
  iteration is then two sparse-dense products and a few gathers in torch, on
  the CPU or the GPU.
* Message passing runs on a grid ``downsample`` times coarser than the image
  (automatic: 4 at 480x360 with the default kernels, see auto_downsample);
  the coarse unary is the area mean of the probabilities. The last iteration
  is computed at full resolution from the full-resolution unary, with the
  coarse messages brought up edge-aware: each pixel takes its 4 nearest
  coarse samples, weighted bilinearly times their colour similarity to the
  pixel, so labels still snap to the image's own edges. ``downsample=1`` runs
  every iteration at full resolution (agrees with pydensecrf to float
  precision for the bilateral kernel).
* The Gaussian kernel is an exact separable blur (OpenCV on the CPU, torch
  convolution elsewhere) instead of a second lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from seg_ros.crf_lattice import Csr, LatticeFilter, build_lattice_filter

UNARY_CLIP = 1e-5  # as pydensecrf.utils.unary_from_softmax
SUM_TOLERANCE = 1e-2  # per-pixel probabilities must sum to 1 within this
MAX_DOWNSAMPLE = 4
MIN_COARSE_SIGMA = 0.75  # automatic grids keep every kernel at least this many coarse pixels wide
MIN_COARSE_SIDE = 90  # ... and at least this many coarse pixels on the image's short side
# Colour width of the edge-aware upsampling, as a fraction of bilateral_srgb: sharper than the kernel
# itself picks the coarse sample of the pixel's own surface (CamVid boundary F1 0.457 -> 0.466 at 1/4).
GUIDE_SRGB_FRACTION = 0.25


@dataclass(frozen=True)
class CrfOperators:
    """The per-frame linear maps of one CRF run (numpy CSR, converted to torch at use)."""

    coarse_size: tuple[int, int]  # (height, width) of the message-passing grid
    gaussian: tuple[np.ndarray, np.ndarray] | None  # Gaussian taps along x and y, coarse pixels
    bilateral: LatticeFilter | None  # bilateral filter on the coarse grid
    upsample: Csr | None  # full × coarse edge-aware interpolation; None at downsample 1


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = 5,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
    *,
    downsample: int = 0,
    device=None,
) -> np.ndarray:
    """Refine `probabilities` (C×H×W float32, per-pixel distributions) with a dense CRF on `image`
    (H×W×3 uint8 RGB); returns the refined C×H×W float32 distributions.

    downsample: message-passing grid factor (0 = automatic, 1 = full resolution).
    device: torch device for the iterations ('cpu' by default, 'cuda' where there is one).
    """
    if not isinstance(probabilities, np.ndarray):
        raise ValueError(
            f"probabilities must be a numpy array, got {type(probabilities).__name__}"
        )
    if not probabilities.flags.writeable:  # torch only wraps writeable arrays without a warning
        probabilities = probabilities.copy()
    refined = dense_crf_tensor(
        image,
        torch.from_numpy(probabilities).to(device or "cpu"),
        iterations,
        gaussian_sxy,
        gaussian_weight,
        bilateral_sxy,
        bilateral_srgb,
        bilateral_weight,
        downsample=downsample,
    )
    return refined.cpu().numpy()


def dense_crf_tensor(
    image: np.ndarray,
    probabilities,
    iterations: int = 5,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
    *,
    downsample: int = 0,
):
    """dense_crf for a torch tensor of probabilities on any device; the result stays on that device.

    The lattice is built on the CPU from `image` (numpy); the iterations run where the tensor is.
    """
    _check_image(image)
    if not isinstance(probabilities, torch.Tensor):
        raise ValueError(
            f"probabilities must be a torch tensor, got {type(probabilities).__name__}"
        )
    _check_probabilities(probabilities, image.shape[:2])
    _check_parameters(
        iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight
    )
    height, width = image.shape[:2]
    if (
        isinstance(downsample, bool)
        or not isinstance(downsample, (int, np.integer))
        or downsample < 0
    ):
        raise ValueError(f"downsample must be an integer >= 0 (0 = automatic), got {downsample!r}")
    factor = int(downsample) or auto_downsample(
        height, width, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_weight
    )
    if factor > 1 and (height < 2 * factor or width < 2 * factor):
        raise ValueError(f"downsample {factor} is too coarse for a {width}x{height} image")

    num_classes = probabilities.shape[0]
    prior = probabilities.clamp(UNARY_CLIP, 1.0)  # exp(-unary)
    if iterations == 0 or num_classes == 1 or gaussian_weight == bilateral_weight == 0:
        return prior / prior.sum(0, keepdim=True)

    device = probabilities.device
    ops = build_operators(
        image,
        factor,
        gaussian_sxy,
        gaussian_weight,
        bilateral_sxy,
        bilateral_srgb,
        bilateral_weight,
        sorted_columns=device.type != "cpu",
    )
    passing = _MessagePassing(ops, gaussian_weight, bilateral_weight, device)
    coarse_prior = prior if factor == 1 else area_mean(prior, ops.coarse_size)
    coarse_log_prior = coarse_prior.reshape(num_classes, -1).log()
    q = torch.softmax(coarse_log_prior, 0)  # C × coarse pixels
    for _ in range(iterations - 1):
        q = torch.softmax(passing.coarse(q) + coarse_log_prior, 0)
    messages = passing.full(q)
    messages += coarse_log_prior if factor == 1 else prior.reshape(num_classes, -1).log_()
    return torch.softmax(messages, 0).reshape(probabilities.shape)


def auto_downsample(
    height: int,
    width: int,
    gaussian_sxy: float,
    gaussian_weight: float,
    bilateral_sxy: float,
    bilateral_weight: float,
) -> int:
    """Coarsest grid factor that keeps every active kernel MIN_COARSE_SIGMA coarse pixels wide and the
    grid MIN_COARSE_SIDE pixels high (measured on CamVid: 4 at 480x360 repairs as well as the full
    resolution, 2 at 240x180; scripts/crf_benchmark.py).
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


def build_operators(
    image: np.ndarray,
    factor: int,
    gaussian_sxy: float,
    gaussian_weight: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_weight: float,
    sorted_columns: bool = False,
) -> CrfOperators:
    """Everything that depends on the image only: lattice, Gaussian taps, upsampling matrix."""
    height, width = image.shape[:2]
    coarse_h, coarse_w = (
        (height, width) if factor == 1 else (-(-height // factor), -(-width // factor))
    )
    ys, xs = _cell_centres(height, coarse_h), _cell_centres(width, coarse_w)
    colours = image.astype(np.float32)
    if factor > 1:
        planar = torch.from_numpy(np.ascontiguousarray(colours.transpose(2, 0, 1)))
        colours = area_mean(planar, (coarse_h, coarse_w)).permute(1, 2, 0).contiguous().numpy()

    gaussian = None
    if gaussian_weight > 0:
        gaussian = (
            _gaussian_taps(gaussian_sxy * coarse_w / width),
            _gaussian_taps(gaussian_sxy * coarse_h / height),
        )
    bilateral = None
    if bilateral_weight > 0:
        grid_y, grid_x = np.meshgrid(ys / bilateral_sxy, xs / bilateral_sxy, indexing="ij")
        features = np.concatenate(
            [
                grid_x.reshape(1, -1),
                grid_y.reshape(1, -1),
                colours.reshape(-1, 3).T / np.float32(bilateral_srgb),
            ]
        )
        bilateral = build_lattice_filter(features, sorted_columns=sorted_columns)
    upsample = None
    if factor > 1:
        upsample = _upsample_matrix(image, colours, ys, xs, bilateral_srgb * GUIDE_SRGB_FRACTION)
    return CrfOperators((coarse_h, coarse_w), gaussian, bilateral, upsample)


def area_mean(planes, size: tuple[int, int]):
    """Mean of each adaptive-pooling cell of a C×H×W tensor (torch's adaptive average pooling;
    OpenCV's INTER_AREA on the CPU where the cells are whole s×s blocks, same result, faster).
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


class _MessagePassing:
    """The pairwise messages w_g K_g Q + w_b K_b Q (symmetrically normalised) on one device."""

    def __init__(
        self,
        ops: CrfOperators,
        gaussian_weight: float,
        bilateral_weight: float,
        device,
        opencv: bool | None = None,
    ):
        device = torch.device(device)
        # OpenCV's blur is several times faster than torch's depthwise convolution on the CPU.
        self.opencv = device.type == "cpu" if opencv is None else opencv
        self.size = ops.coarse_size
        pixels = self.size[0] * self.size[1]
        ones = torch.ones(pixels, 1, device=device)
        self.gaussian = None
        if ops.gaussian is not None:
            self.taps = ops.gaussian
            self.gaussian = (float(gaussian_weight), torch.rsqrt(self._blur(ones)))
        self.bilateral = None
        if ops.bilateral is not None:
            lattice = ops.bilateral
            self.splat = lattice.splat.to_torch(device)
            self.slice = lattice.slice.to_torch(device)
            self.neighbours = torch.from_numpy(lattice.neighbours).to(device)
            self.bilateral = (float(bilateral_weight), torch.rsqrt(self._lattice(ones) + 1e-20))
        self.upsample = ops.upsample.to_torch(device) if ops.upsample is not None else None

    def _blur(self, values):
        """Separable Gaussian blur (zero padding) of pixels × channels values on the coarse grid."""
        taps_x, taps_y = self.taps
        height, width = self.size
        channels = values.shape[1]
        if self.opencv and channels <= 512:  # OpenCV's channel limit
            grid = values.numpy().reshape(height, width, channels)
            out = cv2.sepFilter2D(grid, -1, taps_x, taps_y, borderType=cv2.BORDER_CONSTANT)
            return torch.from_numpy(out.reshape(-1, channels))
        planes = values.t().reshape(1, channels, height, width)
        kx = torch.from_numpy(taps_x).to(values.device).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
        ky = torch.from_numpy(taps_y).to(values.device).view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
        planes = torch.nn.functional.conv2d(
            planes, kx, padding=(0, taps_x.size // 2), groups=channels
        )
        planes = torch.nn.functional.conv2d(
            planes, ky, padding=(taps_y.size // 2, 0), groups=channels
        )
        return planes.reshape(channels, -1).t().contiguous()

    def _lattice(self, values):
        """Unnormalised permutohedral filtering of pixels × channels values."""
        vertices = self.splat @ values
        num_vertices = vertices.shape[0]
        padded = torch.cat(
            [vertices, vertices.new_zeros(1, vertices.shape[1])]
        )  # row for "no neighbour"
        for lower, upper in self.neighbours:
            neighbours = padded.index_select(0, lower)
            neighbours += padded.index_select(0, upper)
            neighbours *= 0.5
            padded[:num_vertices] += neighbours
        return self.slice @ padded[:num_vertices]

    def _messages(self, q):
        """Pixels × C messages for q (C × coarse pixels)."""
        values = _transposed(q)
        total = None
        if self.gaussian is not None:
            weight, norm = self.gaussian
            total = self._blur(values * norm) * (norm * weight)
        if self.bilateral is not None:
            weight, norm = self.bilateral
            term = self._lattice(values * norm) * (norm * weight)
            total = term if total is None else total + term
        return total

    def coarse(self, q):
        """Messages on the coarse grid, C × coarse pixels (contiguous: softmax over C is fast then)."""
        return _transposed(self._messages(q))

    def full(self, q):
        """Messages from the coarse q at full resolution (edge-aware upsampling), C × pixels."""
        messages = self._messages(q)
        if self.upsample is not None:
            messages = self.upsample @ messages
        return _transposed(messages)


def _transposed(matrix):
    """Contiguous transpose of a 2-D tensor (OpenCV's blocked transpose on the CPU: 4x faster here)."""
    if matrix.device.type == "cpu" and matrix.dtype == torch.float32:
        return torch.from_numpy(cv2.transpose(matrix.numpy()))
    return matrix.t().contiguous()


def _cell_centres(size: int, cells: int) -> np.ndarray:
    """Full-resolution centre of each adaptive-average-pooling cell along one axis."""
    j = np.arange(cells)
    start = (j * size) // cells
    end = -((-(j + 1) * size) // cells)
    return (start + end - 1) / 2.0


def _gaussian_taps(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)


def _upsample_matrix(
    image: np.ndarray,
    coarse_image: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    colour_sigma: float,
) -> Csr:
    """Full × coarse matrix over each pixel's 4 nearest coarse samples: bilinear weights times colour
    similarity exp(-|I - I_coarse|² / 2 σ²) relative to the most similar of the 4, renormalised,
    so that messages follow the pixel's own edges (plain bilinear where no colour is close).
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


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be an H×W×3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")


def _check_probabilities(probabilities, size: tuple[int, int]) -> None:
    if probabilities.dtype != torch.float32:
        raise ValueError(
            f"probabilities must be float32, got {str(probabilities.dtype).replace('torch.', '')}"
        )
    if probabilities.ndim != 3 or probabilities.shape[0] < 1:
        raise ValueError(f"probabilities must be C×H×W, got shape {tuple(probabilities.shape)}")
    if tuple(probabilities.shape[1:]) != tuple(size):
        raise ValueError(
            f"probabilities are {probabilities.shape[2]}x{probabilities.shape[1]} but the image is "
            f"{size[1]}x{size[0]} (width x height); they must match"
        )
    worst = float((probabilities.sum(0) - 1.0).abs().max())  # NaN/inf anywhere makes this NaN/inf
    if not math.isfinite(worst):
        raise ValueError("probabilities contain NaN or infinite values")
    if float(probabilities.min()) < 0.0:
        raise ValueError("probabilities contain negative values")
    if worst > SUM_TOLERANCE:
        raise ValueError(
            f"probabilities must sum to 1 over the classes at every pixel (off by up to {worst:.3g}); "
            "pass softmax outputs, not logits"
        )


def _check_parameters(
    iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight
) -> None:
    if (
        isinstance(iterations, bool)
        or not isinstance(iterations, (int, np.integer))
        or iterations < 0
    ):
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    for name, value in (
        ("gaussian_sxy", gaussian_sxy),
        ("bilateral_sxy", bilateral_sxy),
        ("bilateral_srgb", bilateral_srgb),
    ):
        if not _is_number(value) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    for name, value in (
        ("gaussian_weight", gaussian_weight),
        ("bilateral_weight", bilateral_weight),
    ):
        if not _is_number(value) or not value >= 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
