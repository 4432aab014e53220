"""Batches of frames of different sizes, and the torch-tensor stages a GPU backend runs.

The torch stages run here on CPU tensors: the same code a CUDA or TensorRT
backend runs on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from seg_ros.pipeline import PipelineConfig, SegmentationPipeline, build_pipeline


class BatchedColourBackend:
    """Class = dominant colour channel, for any batch up to ``max_batch``; records batch sizes."""

    name = "colour-rule"
    precision = "fp32"

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.sizes = []

    def infer(self, batch, outputs):
        assert 1 <= len(batch) <= self.max_batch
        self.sizes.append(len(batch))
        e = np.exp(4.0 * (batch - batch.max(axis=1, keepdims=True)))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        result = {
            "label": probs.argmax(axis=1).astype(np.int32),
            "confidence": probs.max(axis=1),
            "probabilities": probs,
        }
        return {k: result[k] for k in outputs}


def _frames():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (120, 160, 3), np.uint8),
        rng.integers(0, 256, (45, 70), np.uint8),  # grey
        rng.integers(0, 256, (32, 48, 3), np.uint8),  # network size
        rng.integers(0, 256, (300, 41, 3), np.uint8),
    ]


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_a_batch_gives_what_one_frame_at_a_time_gives(max_batch):
    backend = BatchedColourBackend(max_batch)
    pipeline = SegmentationPipeline(backend, num_classes=3, input_size=(32, 48))
    frames = _frames()
    batched = pipeline.process_batch(frames, want_probabilities=True)
    assert backend.sizes == [min(max_batch, 4 - i) for i in range(0, 4, max_batch)]
    for frame, result in zip(frames, batched):
        single = pipeline.process(frame, want_probabilities=True)
        assert result.label.shape == result.confidence.shape == frame.shape[:2]
        assert result.probabilities.shape == (*frame.shape[:2], 3)
        np.testing.assert_array_equal(result.label, single.label)
        np.testing.assert_array_equal(result.confidence, single.confidence)
        assert set(result.timings_ms) >= {"preprocess", "inference", "postprocess"}


@pytest.fixture(scope="module")
def torch_pipeline():
    pytest.importorskip("torch")
    config = PipelineConfig(
        model="deeplab",
        model_options={"backbone": "mobilenet_v3_large"},
        class_table="camvid",
        num_classes=11,
        backend="torch",
        input_height=64,
        input_width=96,
        threads=1,
    )
    built = build_pipeline(config)
    assert built.pipeline._tensors is None  # on a CPU OpenCV's uint8 resizing is faster
    spec = built.spec
    pipeline = SegmentationPipeline(
        built.pipeline.backend,
        num_classes=spec.num_classes,
        input_size=(64, 96),
        mean=spec.mean,
        std=spec.std,
        tensor_stages=True,  # what a GPU backend runs, here on CPU tensors
    )
    yield pipeline
    pipeline.backend.close()


def _numpy_path(pipeline, frames, want_probabilities):
    stages, pipeline._tensors = pipeline._tensors, None
    try:
        return pipeline.process_batch(frames, want_probabilities)
    finally:
        pipeline._tensors = stages


def test_torch_stages_on_cpu_tensors_match_the_numpy_path(torch_pipeline):
    assert torch_pipeline._tensors is not None
    rng = np.random.default_rng(1)
    frames = [
        rng.integers(0, 256, (64, 96, 3), np.uint8),  # network size: no resizing at all
        rng.integers(0, 256, (120, 160, 3), np.uint8),
        rng.integers(0, 256, (50, 70), np.uint8),
    ]
    on_tensors = torch_pipeline.process_batch(frames, want_probabilities=True)
    on_numpy = _numpy_path(torch_pipeline, frames, want_probabilities=True)
    for frame, a, b in zip(frames, on_tensors, on_numpy):
        assert a.label.shape == frame.shape[:2] and a.label.dtype == np.uint8
        assert a.confidence.dtype == np.float32 and a.probabilities.shape[2] == 11
        np.testing.assert_allclose(a.probabilities.sum(axis=2), 1.0, atol=1e-4)
    # Same input, same arithmetic: identical at network size.
    np.testing.assert_array_equal(on_tensors[0].label, on_numpy[0].label)
    np.testing.assert_allclose(on_tensors[0].confidence, on_numpy[0].confidence, atol=1e-5)
    # Resizing uint8 (OpenCV, fixed point) and float (torch) differ by rounding only.
    for a, b in zip(on_tensors[1:], on_numpy[1:]):
        assert (a.label == b.label).mean() > 0.97
        assert np.abs(a.confidence - b.confidence).mean() < 0.01


def test_torch_stages_refuse_bad_frames(torch_pipeline):
    with pytest.raises(ValueError, match="RGB uint8"):
        torch_pipeline.process(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        torch_pipeline.process(np.zeros((0, 10, 3), np.uint8))
