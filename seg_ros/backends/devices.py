"""What this machine offers: a CUDA GPU (via torch), TensorRT; used by the auto choice and the engine keys."""

from __future__ import annotations

import importlib.util
import logging

from seg_ros.backends.base import BackendError

LOG = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "TensorRT is not installed (import tensorrt failed: {error}). It comes with JetPack on "
    "a Jetson; on an x86 desktop install TensorRT 10 from NVIDIA's package index "
    "(pip install tensorrt). Until then use --backend onnxruntime (backend: onnxruntime)."
)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of the CUDA device; BackendError without one."""
    if not cuda_available():
        raise BackendError(
            "TensorRT needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)"
        )
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def tensorrt_importable() -> bool:
    """Cheap check (no import) that a tensorrt package is installed."""
    return importlib.util.find_spec("tensorrt") is not None


def import_tensorrt():
    """The tensorrt module (version 10 or newer), or BackendError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:  # also a broken install: missing libnvinfer
        raise BackendError(TENSORRT_MISSING.format(error=exc)) from exc
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(f"seg_ros needs TensorRT 10 or newer, found {tensorrt.__version__}")
    return tensorrt
