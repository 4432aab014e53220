"""Where a run computes: the device, and the mixed-precision type that is worth it there."""

from __future__ import annotations

import torch


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return set(next((line for line in handle if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 autocast speeds training up instead of emulating it."""
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Return the mixed-precision type for this device, or None for plain fp32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """Name a run's arithmetic in a model card's words (the dtype autocast used, or fp32)."""
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(amp_dtype, "fp32")


def pick_device(name: str) -> torch.device:
    """Resolve auto to CUDA where present; refuse a CUDA device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but CUDA is not available")
    return device


# The vector extensions CPU speed here hangs on (INT8 dot products, bf16), best first.
VECTOR_EXTENSIONS = (
    ("amx_int8", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
)


def cpu_name() -> str:
    """Return the CPU's model name and its best vector extension, for model cards.

    Two machines both called "AMD EPYC" differ 2-3x in speed (and INT8's gain) by this.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in handle
                    if line.startswith("model name")
                ),
                "CPU",
            )
    except OSError:
        return "CPU"
    flags = _cpu_flags()
    best = next((label for flag, label in VECTOR_EXTENSIONS if flag in flags), "")
    return f"{name}, {best}" if best else name


def memory_format(device: torch.device, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """Channels-last, except for bf16 on a CPU.

    There, oneDNN's channels-last backward of dilated convolutions (torch 2.15) returns NaN
    gradients (ESPNet-C's ESP blocks hit it at step 1), and contiguous bf16 is faster anyway.
    """
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        return torch.contiguous_format
    return torch.channels_last
