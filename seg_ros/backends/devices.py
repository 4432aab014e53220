"""What this machine offers (a CUDA GPU via torch, TensorRT): for auto and the engine keys."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from seg_ros.backends.base import BackendError

LOG = logging.getLogger(__name__)

# TensorRT major versions whose Python bindings this backend was checked against. 10 builds
# strongly typed graphs and, on request, still the weakly typed (builder flag) way; 11 removed
# weak typing and implicit quantisation. Anything else may have moved again: refused, so that
# `auto` falls back instead of failing half-way through a build.
SUPPORTED_TENSORRT_MAJORS = (10, 11)

TENSORRT_MISSING = (
    "TensorRT is not installed (import tensorrt failed: {error}). It comes with JetPack on "
    "a Jetson; on an x86 desktop install TensorRT 10 or 11 from NVIDIA's package index "
    "(pip install tensorrt). Until then choose the onnxruntime backend (node parameter "
    "backend, launch argument backend:=onnxruntime, CLI --backend onnxruntime)."
)


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is specific to; Jetson modules share name and capability, not SMs, memory."""

    name: str
    compute_capability: str  # "major.minor"
    multiprocessors: int
    memory_gib: int  # total memory rounded to GiB (Jetson: the module's shared RAM)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Identify the CUDA device for engine keys; BackendError without a GPU."""
    if not cuda_available():
        raise BackendError(
            "TensorRT needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)"
        )
    import torch

    props = torch.cuda.get_device_properties(device)
    return GpuIdentity(
        name=str(props.name),
        compute_capability=f"{props.major}.{props.minor}",
        multiprocessors=int(props.multi_processor_count),
        memory_gib=int(round(props.total_memory / (1 << 30))),
    )


def tensorrt_importable() -> bool:
    """Cheap check (no import) that a tensorrt package is installed."""
    return importlib.util.find_spec("tensorrt") is not None


def tensorrt_major(version: str) -> int:
    """Return the major version of a TensorRT version string; BackendError if it is none."""
    try:
        return int(str(version).split(".")[0])
    except ValueError as exc:
        raise BackendError(f"cannot read TensorRT's version {version!r}") from exc


def import_tensorrt():
    """Import tensorrt if it is a supported version, else raise BackendError with the reason."""
    try:
        import tensorrt
    except ImportError as exc:  # also a broken install: missing libnvinfer
        raise BackendError(TENSORRT_MISSING.format(error=exc)) from exc
    check_tensorrt_version(tensorrt.__version__)
    return tensorrt


def check_tensorrt_version(version: str) -> int:
    """Return the major version if seg_ros supports it, else raise BackendError saying which."""
    major = tensorrt_major(version)
    if major not in SUPPORTED_TENSORRT_MAJORS:
        supported = " and ".join(str(v) for v in SUPPORTED_TENSORRT_MAJORS)
        raise BackendError(
            f"TensorRT {version} is not supported: seg_ros builds engines with TensorRT "
            f"{supported} (checked against their Python bindings); install one of those, or "
            "use the onnxruntime backend"
        )
    return major
