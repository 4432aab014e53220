"""The one timing loop and the one p50/p95 behind every latency figure seg_ros prints."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm


def percentiles(values: Iterable[float], qs=(50, 95)) -> tuple[float, ...]:
    """Return the ``qs`` percentiles of ``values`` (linear interpolation); NaNs when empty."""
    array = np.fromiter(values, dtype=np.float64)
    if not array.size:
        return tuple(float("nan") for _ in qs)
    return tuple(float(v) for v in np.percentile(array, list(qs)))


def p50_p95(values: Iterable[float]) -> tuple[float, float]:
    """Return the median and 95th percentile of ``values`` (NaN, NaN when empty)."""
    p50, p95 = percentiles(values, (50, 95))
    return p50, p95


def time_calls(call, frames: int, warmup: int, desc: str) -> list[float]:
    """Run ``call`` warmup + frames times; return the timed calls' milliseconds (no warm-up)."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in tqdm(range(frames), desc=desc, unit="frame", leave=False):
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies
