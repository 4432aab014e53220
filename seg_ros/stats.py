"""Rates, per-stage latency percentiles and frame counters for the node's /diagnostics.

Pure Python and thread-safe: the subscription callback, the inference worker
and the publisher thread all record here; the diagnostics timer reads a
snapshot once a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from seg_ros.timing import percentiles


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = float(window_s)
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        # Measured up to now (not to the last event) so the rate decays when frames stop.
        span = now - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class LatencyWindow:
    """The last ``size`` samples of one stage (milliseconds), for p50/p95."""

    def __init__(self, size: int = 200):
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._samples.append(float(value_ms))

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        """Return the ``qs`` percentiles of the window (NaNs when empty)."""
        return percentiles(self._samples, qs)

    def mean(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    def __len__(self) -> int:
        return len(self._samples)


class NodeStats:
    """Counters and windows for one node; every method may be called from any thread."""

    # Wall-clock stages, the output age, and node_cpu: the CPU time the node's own threads spent on
    # a frame beside the network (decode, pre- and postprocessing, publishing). OpenCV's worker
    # threads are not among them: they add up to that much again to large resizes and blends.
    STAGES = (
        "decode",
        "preprocess",
        "inference",
        "crf",
        "postprocess",
        "publish",
        "age",
        "node_cpu",
    )

    def __init__(
        self, rate_window_s: float = 5.0, latency_samples: int = 200, clock=time.monotonic
    ):
        self._lock = threading.Lock()
        self._clock = clock
        self._input = RateMeter(rate_window_s)
        self._output = RateMeter(rate_window_s)
        self._stages = {name: LatencyWindow(latency_samples) for name in self.STAGES}
        self.received = 0
        self.dropped = 0  # overwritten in the mailbox before the worker took them
        self.bad = 0  # could not be decoded or processed
        self.published = 0
        self.skipped = 0  # not processed because no output had a subscriber
        self.lost = 0  # sent by a publisher but never delivered (gaps in its sequence numbers)
        self._last_sequence: dict[str, int] = {}
        self._bad_at_last_snapshot = 0

    def frame_received(self) -> None:
        with self._lock:
            self.received += 1
            self._input.tick(self._clock())

    def sequence_seen(self, publisher: str, sequence: int) -> None:
        """Count frames lost in transport: gaps in one publisher's publication sequence."""
        with self._lock:
            last = self._last_sequence.get(publisher)
            if last is not None and sequence > last + 1:
                self.lost += sequence - last - 1
            if last is None or sequence > last:
                self._last_sequence[publisher] = sequence

    def frame_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def frame_bad(self) -> None:
        with self._lock:
            self.bad += 1

    def frame_skipped(self) -> None:
        with self._lock:
            self.skipped += 1

    def frame_published(self, stage_ms: dict[str, float]) -> None:
        """One frame's outputs went out; ``stage_ms`` holds its per-stage times (and ``age``)."""
        with self._lock:
            self.published += 1
            self._output.tick(self._clock())
            for name, value in stage_ms.items():
                if name in self._stages:
                    self._stages[name].add(value)

    def snapshot(self) -> dict:
        """Rates (Hz), counters, bad frames since the last snapshot, {stage: (p50, p95)} in ms."""
        with self._lock:
            now = self._clock()
            bad_recent, self._bad_at_last_snapshot = (
                self.bad - self._bad_at_last_snapshot,
                self.bad,
            )
            return {
                "input_rate": self._input.rate(now),
                "output_rate": self._output.rate(now),
                "received": self.received,
                "dropped": self.dropped,
                "bad": self.bad,
                "published": self.published,
                "skipped": self.skipped,
                "lost": self.lost,
                "bad_recent": bad_recent,
                "latency_ms": {
                    name: window.percentiles(50, 95)
                    for name, window in self._stages.items()
                    if len(window)
                },
            }


class BackendStats:
    """The shared backend's side: batches run, their sizes and inference times."""

    def __init__(
        self, rate_window_s: float = 5.0, latency_samples: int = 200, clock=time.monotonic
    ):
        self._lock = threading.Lock()
        self._clock = clock
        self._batches = RateMeter(rate_window_s)
        self._sizes = LatencyWindow(latency_samples)
        self._inference = LatencyWindow(latency_samples)
        self.frames = 0

    def batch_done(self, size: int, inference_ms: float) -> None:
        with self._lock:
            self.frames += size
            self._batches.tick(self._clock())
            self._sizes.add(size)
            self._inference.add(inference_ms)

    def snapshot(self) -> dict:
        """Batches per second, frames segmented, mean batch size and inference (p50, p95) in ms."""
        with self._lock:
            return {
                "batch_rate": self._batches.rate(self._clock()),
                "frames": self.frames,
                "batch_size_mean": self._sizes.mean(),
                "inference_ms": self._inference.percentiles(50, 95),
            }
