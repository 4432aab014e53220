"""CRF-as-RNN (Zheng et al., ICCV 2015): the dense CRF's mean-field as trainable network layers.

``CrfRnn`` unrolls ``iterations`` mean-field updates with the windowed
Gaussian and bilateral kernels (seg_ros.crf.window: the lattice has no ONNX
form), learned per-class kernel weights and a learned label compatibility μ
(C×C), gradients through all of it. It starts as the post-hoc CRF: its
kernel widths, weights and Potts compatibility. ``CrfRnnNetwork`` puts it
after any segmentation network: it maps the same N×3×H×W normalised image to
N×C×H×W logits (log Q up to a per-pixel constant).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seg_ros.crf.compatibility import potts_compatibility
from seg_ros.crf.posthoc import DEFAULT_KERNELS, UNARY_CLIP
from seg_ros.crf.window import DEFAULT_DOWNSAMPLE, DEFAULT_WINDOW, check_window, window_crf


class CrfRnn(nn.Module):
    """Mean-field dense CRF layer: (logits, RGB image 0..255) -> refined logits."""

    def __init__(
        self,
        num_classes: int,
        iterations: int,
        *,
        gaussian_sxy: float = DEFAULT_KERNELS["gaussian_sxy"],
        gaussian_weight: float = DEFAULT_KERNELS["gaussian_weight"],
        bilateral_sxy: float = DEFAULT_KERNELS["bilateral_sxy"],
        bilateral_srgb: float = DEFAULT_KERNELS["bilateral_srgb"],
        bilateral_weight: float = DEFAULT_KERNELS["bilateral_weight"],
        window: int = DEFAULT_WINDOW,
        downsample: int = DEFAULT_DOWNSAMPLE,
    ):
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"CRF-as-RNN iterations must be an integer >= 1, got {iterations!r}")
        check_window(window, downsample)
        for name, value in (
            ("gaussian_sxy", gaussian_sxy),
            ("bilateral_sxy", bilateral_sxy),
            ("bilateral_srgb", bilateral_srgb),
        ):
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.iterations = iterations
        self.window = window
        self.downsample = downsample
        # Kernel widths stay fixed, as in the paper (a buffer, so checkpoints keep the ones trained
        # with); what is learned are the per-class kernel weights and μ.
        widths = torch.tensor([gaussian_sxy, bilateral_sxy, bilateral_srgb], dtype=torch.float32)
        self.register_buffer("kernel_widths", widths)
        initial = torch.tensor([[float(gaussian_weight)], [float(bilateral_weight)]])
        self.kernel_weights = nn.Parameter(initial.repeat(1, num_classes))  # 2 × C
        self.compatibility = nn.Parameter(potts_compatibility(num_classes))

    @torch.no_grad()
    def start_from(self, parameters: dict) -> None:
        """Start from a post-hoc CRF's parameters (CrfSettings names; those not given stay)."""
        names = ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb")
        for i, name in enumerate(names):
            if name in parameters:
                if not float(parameters[name]) > 0:
                    raise ValueError(f"{name} must be > 0, got {parameters[name]!r}")
                self.kernel_widths[i] = float(parameters[name])
        for i, name in enumerate(("gaussian_weight", "bilateral_weight")):
            if name in parameters:
                self.kernel_weights[i] = float(parameters[name])
        self.compatibility.copy_(potts_compatibility(self.compatibility.shape[0]))

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        log_prior = torch.log_softmax(logits, 1).clamp_min(math.log(UNARY_CLIP))
        return window_crf(
            image,
            log_prior,
            self.iterations,
            self.kernel_weights,
            self.compatibility,
            gaussian_sxy=self.kernel_widths[0],
            bilateral_sxy=self.kernel_widths[1],
            bilateral_srgb=self.kernel_widths[2],
            window=self.window,
            downsample=self.downsample,
        )


class CrfRnnNetwork(nn.Module):
    """A segmentation network followed by the CRF-as-RNN layer on the same input image."""

    def __init__(self, network: nn.Module, num_classes: int, iterations: int, mean, std):
        super().__init__()
        self.network = network
        self.crf = CrfRnn(num_classes, iterations)
        self.CLASSIFIER = f"network.{network.CLASSIFIER}"
        # The input is normalised RGB; the bilateral kernel needs the colours back (0..255).
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crf(self.network(x), x * self.std + self.mean)
