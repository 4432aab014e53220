"""The ROS-free pipeline: sizes, dtypes and label/confidence consistency around a backend."""

from __future__ import annotations

import numpy as np
import pytest

from seg_ros.pipeline import CrfSettings, SegmentationPipeline
from seg_ros.visualize import colorize


class ColourRuleBackend:
    """A deterministic backend: class = the dominant colour channel.

    Probabilities are a softmax of the normalised channels, so the pipeline's resizing and head
    logic can be checked exactly.
    """

    name = "colour-rule"
    precision = "fp32"

    def __init__(self):
        self.calls = []

    def infer(self, batch, outputs):
        self.calls.append(tuple(outputs))
        logits = batch[0] * 4.0  # 3×h×w, classes = R, G, B
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        probs = (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
        result = {
            "label": probs.argmax(axis=0).astype(np.int32)[None],
            "confidence": probs.max(axis=0)[None],
            "probabilities": probs[None],
        }
        return {k: result[k] for k in outputs}


def _image(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 230  # left half red
    img[:, w // 2 :, 2] = 230  # right half blue
    return img


def _pipeline(backend, size=(32, 48), crf=None):
    return SegmentationPipeline(
        backend,
        num_classes=3,
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crf=crf,
    )


@pytest.mark.parametrize("shape", [(120, 160), (32, 48), (33, 97)])
def test_outputs_at_input_resolution(shape):
    backend = ColourRuleBackend()
    result = _pipeline(backend).process(_image(*shape))
    assert result.label.shape == shape and result.label.dtype == np.uint8
    assert result.confidence.shape == shape and result.confidence.dtype == np.float32
    assert result.probabilities is None
    assert backend.calls == [("label", "confidence")]  # compact head when nothing else is needed
    h, w = shape
    assert (result.label[:, : w // 2 - 2] == 0).all() and (
        result.label[:, w // 2 + 2 :] == 2
    ).all()
    assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0
    assert set(result.timings_ms) >= {"preprocess", "inference", "postprocess"}


@pytest.mark.parametrize("shape", [(120, 160), (32, 48), (33, 97), (1080, 1920)])
def test_colour_mask_coloured_at_network_size_equals_colouring_the_output(shape):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)  # a speckled label map
    result = _pipeline(ColourRuleBackend()).process(noise)
    assert (result.network_label is None) == (shape == (32, 48))
    assert len(np.unique(result.label)) == 3
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(result.color_mask(palette), colorize(result.label, palette))
    wall = [v for k, v in result.timings_ms.items() if not k.endswith("_cpu")]
    assert result.total_ms == pytest.approx(sum(wall))
    assert result.total_ms < sum(result.timings_ms.values())  # the *_cpu twins are not added


def test_probabilities_consistent_with_label_and_confidence():
    result = _pipeline(ColourRuleBackend()).process(_image(60, 80), want_probabilities=True)
    probs = result.probabilities
    assert probs.shape == (60, 80, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-4)
    inner = (slice(2, -2), slice(2, 38))  # away from the resized boundary
    np.testing.assert_array_equal(probs[inner].argmax(axis=2), result.label[inner])
    np.testing.assert_allclose(probs[inner].max(axis=2), result.confidence[inner], atol=1e-5)


def test_mono_input_is_accepted():
    result = _pipeline(ColourRuleBackend()).process(np.full((20, 30), 128, np.uint8))
    assert result.label.shape == (20, 30)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 4), np.uint8),
    ],
)
def test_bad_images_are_rejected_clearly(bad):
    with pytest.raises(ValueError):
        _pipeline(ColourRuleBackend()).process(bad)


def test_many_classes_give_uint16_labels():
    pipeline = SegmentationPipeline(ColourRuleBackend(), num_classes=300, input_size=(16, 16))
    assert pipeline.process(_image(16, 16)).label.dtype == np.uint16


def test_crf_switch_asks_for_probabilities_and_applies_next_frame():
    pytest.importorskip("seg_ros.crf")
    backend = ColourRuleBackend()
    pipeline = _pipeline(backend)
    pipeline.process(_image(32, 48))
    pipeline.set_crf(CrfSettings(enabled=True, iterations=2))
    result = pipeline.process(_image(32, 48))
    assert backend.calls == [("label", "confidence"), ("label", "confidence", "probabilities")]
    assert "crf" in result.timings_ms
    assert result.label.shape == (32, 48)
