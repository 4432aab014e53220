"""Post-hoc dense CRF refinement of per-pixel class probabilities (fully connected CRF).

Mean-field inference for Krähenbühl & Koltun's fully connected CRF with Potts
compatibility, exactly the model the DeepLab line puts after the network and
CRF-as-RNN unrolls as layers: unary -log(p) (p clipped at 1e-5, as
pydensecrf's ``unary_from_softmax``), a Gaussian smoothness kernel over pixel
positions (``gaussian_sxy`` pixels) and a bilateral appearance kernel over
positions and RGB (``bilateral_sxy`` pixels, ``bilateral_srgb`` intensity
units), each normalised symmetrically (D^-1/2 K D^-1/2, pydensecrf's default)
and weighted by its compatibility. Each iteration:
Q <- softmax(-U + w_g K_g Q + w_b K_b Q) (seg_ros.crf.meanfield).

How it is made fast (figures: scripts/crf_benchmark.py, README):

* ``kernel='lattice'`` (default): the bilateral kernel is filtered on a
  permutohedral lattice, the same one as the reference implementation
  (pydensecrf), built once per frame (seg_ros.crf.lattice); the Gaussian
  kernel is an exact separable blur (seg_ros.crf.gaussian).
* Message passing runs on a coarser grid (seg_ros.crf.grid; automatic: 4 at
  480x360), the last iteration at full resolution with the messages brought up
  edge-aware. ``downsample=1`` runs every iteration at full resolution (agrees
  with pydensecrf to float precision for the bilateral kernel).
* ``kernel='window'``: the truncated-window kernels of the CRF-as-RNN layer
  (seg_ros.crf.window), the same mean-field with the operators that export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from seg_ros.crf.gaussian import SeparableBlur, gaussian_taps
from seg_ros.crf.grid import area_mean, auto_downsample, cell_centres, upsample_matrix
from seg_ros.crf.lattice import Csr, LatticeFilter, LatticeKernel, build_lattice_filter
from seg_ros.crf.meanfield import mean_field
from seg_ros.crf.window import DEFAULT_DOWNSAMPLE, DEFAULT_WINDOW, check_window, window_crf

UNARY_CLIP = 1e-5  # as pydensecrf.utils.unary_from_softmax
SUM_TOLERANCE = 1e-2  # per-pixel probabilities must sum to 1 within this
KERNELS = ("lattice", "window")
# Colour width of the edge-aware upsampling, as a fraction of bilateral_srgb: sharper than the
# kernel itself picks the coarse sample of the pixel's own surface (CamVid boundary F1 0.457 ->
# 0.466 at 1/4).
GUIDE_SRGB_FRACTION = 0.25
# The model's parameters (pydensecrf's names and DeepLab's CamVid-scale values); the node's crf.*
# parameters and the CRF-as-RNN layer's initial values default to these.
DEFAULT_ITERATIONS = 5
DEFAULT_KERNELS = {
    "gaussian_sxy": 3.0,
    "gaussian_weight": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_weight": 10.0,
}


@dataclass(frozen=True)
class CrfOperators:
    """The per-frame linear maps of one lattice CRF run (numpy CSR, converted to torch at use)."""

    coarse_size: tuple[int, int]  # (height, width) of the message-passing grid
    gaussian: tuple[np.ndarray, np.ndarray] | None  # Gaussian taps along x and y, coarse pixels
    bilateral: LatticeFilter | None  # bilateral filter on the coarse grid
    upsample: Csr | None  # full × coarse edge-aware interpolation; None at downsample 1


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = DEFAULT_ITERATIONS,
    gaussian_sxy: float = DEFAULT_KERNELS["gaussian_sxy"],
    gaussian_weight: float = DEFAULT_KERNELS["gaussian_weight"],
    bilateral_sxy: float = DEFAULT_KERNELS["bilateral_sxy"],
    bilateral_srgb: float = DEFAULT_KERNELS["bilateral_srgb"],
    bilateral_weight: float = DEFAULT_KERNELS["bilateral_weight"],
    *,
    downsample: int = 0,
    device=None,
    kernel: str = "lattice",
    window: int = DEFAULT_WINDOW,
) -> np.ndarray:
    """Refine `probabilities` (C×H×W float32, per-pixel distributions) with a dense CRF on `image`.

    image: H×W×3 uint8 RGB; returns the refined C×H×W float32 distributions.
    downsample: message-passing grid factor (0 = automatic, 1 = full resolution).
    device: torch device for the iterations ('cpu' by default, 'cuda' where there is one).
    kernel: 'lattice' (the full dense CRF) or 'window' (``window`` × ``window`` grid cells, the
    CRF-as-RNN layer's kernels).
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
        kernel=kernel,
        window=window,
    )
    return refined.cpu().numpy()


def dense_crf_tensor(
    image: np.ndarray,
    probabilities,
    iterations: int = DEFAULT_ITERATIONS,
    gaussian_sxy: float = DEFAULT_KERNELS["gaussian_sxy"],
    gaussian_weight: float = DEFAULT_KERNELS["gaussian_weight"],
    bilateral_sxy: float = DEFAULT_KERNELS["bilateral_sxy"],
    bilateral_srgb: float = DEFAULT_KERNELS["bilateral_srgb"],
    bilateral_weight: float = DEFAULT_KERNELS["bilateral_weight"],
    *,
    downsample: int = 0,
    kernel: str = "lattice",
    window: int = DEFAULT_WINDOW,
):
    """Run dense_crf on a torch tensor of probabilities on any device; the result stays there.

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
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    height, width = image.shape[:2]
    if (
        isinstance(downsample, bool)
        or not isinstance(downsample, (int, np.integer))
        or downsample < 0
    ):
        raise ValueError(f"downsample must be an integer >= 0 (0 = automatic), got {downsample!r}")
    num_classes = probabilities.shape[0]
    prior = probabilities.clamp(UNARY_CLIP, 1.0)  # exp(-unary)
    if iterations == 0 or num_classes == 1 or gaussian_weight == bilateral_weight == 0:
        return prior / prior.sum(0, keepdim=True)
    if kernel == "window":
        factor = int(downsample) or DEFAULT_DOWNSAMPLE
        check_window(window, factor)
        colours = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        logits = window_crf(
            colours.to(probabilities.device, torch.float32)[None],
            prior.log()[None],
            iterations,
            prior.new_tensor([[gaussian_weight], [bilateral_weight]]),
            gaussian_sxy=gaussian_sxy,
            bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb,
            window=window,
            downsample=factor,
        )
        return torch.softmax(logits[0], 0)

    factor = int(downsample) or auto_downsample(
        height, width, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_weight
    )
    if factor > 1 and (height < 2 * factor or width < 2 * factor):
        raise ValueError(f"downsample {factor} is too coarse for a {width}x{height} image")
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
    full_log_prior = coarse_log_prior if factor == 1 else prior.reshape(num_classes, -1).log()
    logits = mean_field(coarse_log_prior, full_log_prior, passing.coarse, passing.full, iterations)
    return torch.softmax(logits, 0).reshape(probabilities.shape)


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
    ys, xs = cell_centres(height, coarse_h), cell_centres(width, coarse_w)
    colours = image.astype(np.float32)
    if factor > 1:
        planar = torch.from_numpy(np.ascontiguousarray(colours.transpose(2, 0, 1)))
        colours = area_mean(planar, (coarse_h, coarse_w)).permute(1, 2, 0).contiguous().numpy()

    gaussian = None
    if gaussian_weight > 0:
        gaussian = (
            gaussian_taps(gaussian_sxy * coarse_w / width),
            gaussian_taps(gaussian_sxy * coarse_h / height),
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
        upsample = upsample_matrix(image, colours, ys, xs, bilateral_srgb * GUIDE_SRGB_FRACTION)
    return CrfOperators((coarse_h, coarse_w), gaussian, bilateral, upsample)


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
        opencv = device.type == "cpu" if opencv is None else opencv
        pixels = ops.coarse_size[0] * ops.coarse_size[1]
        ones = torch.ones(pixels, 1, device=device)
        self.gaussian = None
        if ops.gaussian is not None:
            blur = SeparableBlur(ops.gaussian, ops.coarse_size, opencv)
            self.gaussian = (blur, float(gaussian_weight), torch.rsqrt(blur.filter(ones)))
        self.bilateral = None
        if ops.bilateral is not None:
            lattice = LatticeKernel(ops.bilateral, device)
            norm = torch.rsqrt(lattice.filter(ones) + 1e-20)
            self.bilateral = (lattice, float(bilateral_weight), norm)
        self.upsample = ops.upsample.to_torch(device) if ops.upsample is not None else None

    def _messages(self, q):
        """Pixels × C messages for q (C × coarse pixels)."""
        values = _transposed(q)
        total = None
        for kernel in (self.gaussian, self.bilateral):
            if kernel is not None:
                operator, weight, norm = kernel
                term = operator.filter(values * norm) * (norm * weight)
                total = term if total is None else total + term
        return total

    def coarse(self, q):
        """Return the messages on the coarse grid, C × coarse pixels (contiguous: fast softmax)."""
        return _transposed(self._messages(q))

    def full(self, q):
        """Messages from the coarse q at full resolution (edge-aware upsampling), C × pixels."""
        messages = self._messages(q)
        if self.upsample is not None:
            messages = self.upsample @ messages
        return _transposed(messages)


def _transposed(matrix):
    """Contiguous transpose of a 2-D tensor (OpenCV's blocked transpose on the CPU: 4x faster)."""
    if matrix.device.type == "cpu" and matrix.dtype == torch.float32:
        return torch.from_numpy(cv2.transpose(matrix.numpy()))
    return matrix.t().contiguous()


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
            f"probabilities are {probabilities.shape[2]}x{probabilities.shape[1]} "
            "but the image is "
            f"{size[1]}x{size[0]} (width x height); they must match"
        )
    worst = float((probabilities.sum(0) - 1.0).abs().max())  # NaN/inf anywhere makes this NaN/inf
    if not math.isfinite(worst):
        raise ValueError("probabilities contain NaN or infinite values")
    if float(probabilities.min()) < 0.0:
        raise ValueError("probabilities contain negative values")
    if worst > SUM_TOLERANCE:
        raise ValueError(
            "probabilities must sum to 1 over the classes at every pixel "
            f"(off by up to {worst:.3g}); "
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
