"""CPU latency of bundled weights through the whole pipeline, for the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_ros.sizes import format_size


def measure_cpu_latency(
    weights: str | Path,
    image: np.ndarray,
    *,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    threads: int = 2,
    frames: int = 20,
) -> dict:
    """Median and p90 ms of the whole pipeline (and of inference alone) on one RGB frame.

    ``precision`` int8 needs the table shipped beside the weights
    (scripts/make_calibration_tables.py); the card's int8 row is scripts/int8_table.py's.
    """
    from seg_ros.pipeline import PipelineConfig, build_pipeline
    from seg_ros.timing import percentiles, time_calls
    from seg_ros.training.device import cpu_name

    config = PipelineConfig(
        weights=str(weights), backend=backend, precision=precision, threads=threads
    )
    built = build_pipeline(config)
    inference: list[float] = []

    def process():
        inference.append(built.pipeline.process(image).timings_ms["inference"])

    try:
        # 3 warm-up frames: allocations, ORT graph optimisation.
        totals = time_calls(process, frames, 3, f"latency {backend}")
        inference = inference[3:]
    finally:
        built.pipeline.backend.close()
    return {
        "backend": built.backend_name,
        "precision": precision,
        "threads": threads,
        "image": format_size(*image.shape[:2]),
        "pipeline_ms_median": round(percentiles(totals, (50,))[0], 1),
        "pipeline_ms_p90": round(percentiles(totals, (90,))[0], 1),
        "inference_ms_median": round(percentiles(inference, (50,))[0], 1),
        "frames": frames,
        "cpu": cpu_name(),
    }
