"""The one timing loop behind `seg_ros benchmark` and the model cards' latency figures."""

from __future__ import annotations

import time

from tqdm import tqdm


def time_calls(call, frames: int, warmup: int, desc: str) -> list[float]:
    """Run ``call`` warmup + frames times; the milliseconds of the timed ones (warm-up excluded)."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in tqdm(range(frames), desc=desc, unit="frame", leave=False):
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies
