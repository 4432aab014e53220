"""PyTorch eager inference (CPU or CUDA, fp16 on CUDA, channels-last): for debugging and training.

It computes the exported graph's head (seg_ros.models.head) so its outputs can be
compared with the other backends'.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from seg_ros.backends.base import MAX_BATCH, Backend, BackendError

LOG = logging.getLogger(__name__)


class TorchBackend(Backend):
    def __init__(
        self,
        loaded,
        *,
        height: int,
        width: int,
        precision: str = "fp32",
        threads: int = 0,
        device: str = "",
    ):
        import torch

        self._torch = torch
        cuda = torch.cuda.is_available()
        device = device or ("cuda" if cuda else "cpu")
        if device not in ("cpu", "cuda"):
            raise BackendError(f"the torch backend runs on 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not cuda:
            raise BackendError("the torch backend was asked for CUDA but torch sees no CUDA GPU")
        if precision == "int8":
            raise BackendError(
                "the torch backend has no int8 path: use tensorrt for int8, or fp32/fp16"
            )
        if precision == "fp16" and device == "cpu":
            raise BackendError("fp16 in the torch backend needs a CUDA GPU; use fp32 on the CPU")
        if threads > 0:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread setting
        self.device = torch.device(device)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        # A private copy: moving to CUDA, halving or channels-last must leave the caller's module.
        module = copy.deepcopy(loaded.module).eval()
        self._module = module.to(self.device, dtype=self._dtype, memory_format=torch.channels_last)
        label = torch.cuda.get_device_name(self.device) if device == "cuda" else "cpu"
        super().__init__(
            name=f"torch:{label}",
            precision=precision,
            input_shape=(1, 3, height, width),
            num_classes=loaded.spec.num_classes,
            max_batch=MAX_BATCH,
        )
        self.tensor_device = self.device
        self.computes_on_cpu = self.device.type == "cpu"

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        x = self._torch.from_numpy(batch).to(self.device, non_blocking=True)
        result = self.infer_tensor(x, outputs)
        return {name: result[name].cpu().numpy() for name in outputs}

    def infer_tensor(self, batch, outputs: tuple[str, ...]) -> dict:
        """Run the head on an N×3×H×W float32 tensor on ``self.device``; outputs stay there."""
        from seg_ros.models.head import segmentation_head

        torch = self._torch
        with torch.inference_mode():
            x = batch.to(dtype=self._dtype, memory_format=torch.channels_last)
            logits = self._module(x).float()
            label, confidence, probabilities = segmentation_head(
                logits, probabilities="probabilities" in outputs
            )
            result = {"label": label, "confidence": confidence, "probabilities": probabilities}
            return {name: result[name].contiguous() for name in outputs}

    def close(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
