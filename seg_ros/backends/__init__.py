"""Inference backends behind one small interface: TensorRT, ONNX Runtime, PyTorch, and ``auto``.

``create_backend(kind, loaded, height=, width=)`` returns a Backend whose
``infer(batch, outputs)`` gives the exported head's outputs. ``auto`` picks
TensorRT when it is importable and a GPU is present, else ONNX Runtime (CUDA,
then CPU), else PyTorch; it logs the choice and why, and moves on to the next
candidate (with a warning) when one fails to start. ONNX Runtime runs int8
when int8 is asked for, else fp32 (the default): the CPU never picks int8 on
its own. Missing INT8 calibration data is a ValueError, not a reason to fall
back: the user has to fix it.
"""

from __future__ import annotations

import logging

from seg_ros.backends.base import (
    INPUT_NAME,
    OUTPUT_NAMES,
    Backend,
    BackendError,
    BackendOptions,
)
from seg_ros.choices import BACKENDS as KINDS
from seg_ros.choices import PRECISIONS

__all__ = [
    "Backend",
    "BackendError",
    "BackendOptions",
    "KINDS",
    "PRECISIONS",
    "OUTPUT_NAMES",
    "INPUT_NAME",
    "create_backend",
    "auto_candidates",
]

LOG = logging.getLogger(__name__)


def _start(
    kind: str,
    loaded,
    *,
    height: int,
    width: int,
    precision: str,
    threads: int,
    options: BackendOptions,
) -> Backend:
    if kind == "tensorrt":
        from seg_ros.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(
            loaded, height=height, width=width, precision=precision, options=options
        )
    if kind == "onnxruntime":
        from seg_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            loaded,
            height=height,
            width=width,
            precision=precision,
            threads=threads,
            device=options.device,
            engine_cache=options.engine_cache,
            workspace_mb=options.workspace_mb,
            options=options,
        )
    from seg_ros.backends.torch_backend import TorchBackend

    return TorchBackend(
        loaded,
        height=height,
        width=width,
        precision=precision,
        threads=threads,
        device=options.device,
    )


def auto_candidates(precision: str) -> list[tuple[str, str, str]]:
    """(kind, precision to run, why) in the order ``auto`` tries them on this machine."""
    from seg_ros.backends.devices import cuda_available, tensorrt_importable

    gpu = cuda_available()
    trt = tensorrt_importable()
    candidates = []
    if trt and gpu:
        candidates.append(
            ("tensorrt", precision, "TensorRT is importable and a CUDA GPU is present")
        )
        why_not_trt = ""
    else:
        why_not_trt = "TensorRT is not importable; " if not trt else "no CUDA GPU for TensorRT; "

    def fallback(run: str) -> str:
        return "" if run == precision else f"; {precision} is not available there, so fp32"

    try:
        from seg_ros.backends.onnxruntime_backend import cuda_provider_usable

        ort_cuda = cuda_provider_usable()
    except BackendError:
        ort_cuda = None  # onnxruntime is not installed
    if ort_cuda is not None:
        where = "its CUDA provider" if ort_cuda else "the CPU (no CUDA provider or GPU)"
        run = precision if precision in ("fp32", "int8") else "fp32"  # int8 only when asked
        candidates.append(
            ("onnxruntime", run, f"{why_not_trt}ONNX Runtime on {where}{fallback(run)}")
        )
        why_not_ort = ""
    else:
        why_not_ort = "ONNX Runtime is not installed; "
    run = precision if precision == "fp32" or (precision == "fp16" and gpu) else "fp32"
    where = "CUDA" if gpu else "the CPU"
    candidates.append(
        ("torch", run, f"{why_not_trt}{why_not_ort}PyTorch on {where}{fallback(run)}")
    )
    return candidates


def create_backend(
    kind: str,
    loaded,
    *,
    height: int,
    width: int,
    precision: str = "fp32",
    threads: int = 0,
    options: dict | None = None,
) -> Backend:
    """Start a backend for ``loaded`` (seg_ros.models.LoadedModel) at an N×3×height×width input.

    ValueError for bad arguments; BackendError (a RuntimeError) with the reason
    when the backend cannot start (library missing, no GPU, build failed, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}: expected one of {KINDS}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {PRECISIONS}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"the network input size must be positive, got {height}x{width} (HxW)")
    if int(threads) < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    parsed = BackendOptions.from_dict(options)
    common = dict(height=int(height), width=int(width), threads=int(threads), options=parsed)
    if kind != "auto":
        backend = _start(kind, loaded, precision=precision, **common)
        backend.reason = f"backend {kind} was requested"
        return backend

    failures = []
    for candidate, run_precision, why in auto_candidates(precision):
        try:
            backend = _start(candidate, loaded, precision=run_precision, **common)
        except BackendError as exc:
            LOG.warning("backend auto: %s did not start (%s); trying the next one", candidate, exc)
            failures.append(f"{candidate}: {exc}")
            continue
        backend.reason = why if not failures else f"{why} (failed first: {'; '.join(failures)})"
        LOG.info(
            "backend auto: using %s (%s) because %s",
            backend.name,
            backend.precision,
            backend.reason,
        )
        return backend
    raise BackendError("no backend could start: " + "; ".join(failures))
