"""Metrics on hand-computed cases: perfect, all wrong, ignored labels, absent classes, BF score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seg_ros.evaluation.metrics import BoundaryF1, ConfusionMatrix, Evaluation, LatencyStats


def test_hand_computed_two_class_frame():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(gt, pred)
    assert cm.counts.tolist() == [[1, 1, 0], [0, 2, 0]]
    s = cm.summary()
    # IoU0 = 1 / (2 + 1 - 1), IoU1 = 2 / (2 + 3 - 2)
    assert s["iou"] == pytest.approx([1 / 2, 2 / 3])
    assert s["miou"] == pytest.approx(7 / 12)
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)
    assert s["class_accuracy"] == pytest.approx([1 / 2, 1.0])
    assert s["mean_class_accuracy"] == pytest.approx(3 / 4)


def test_perfect_prediction():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 3, size=(12, 16)).astype(np.uint8)
    s = ConfusionMatrix(3).scores(ConfusionMatrix(3).frame_counts(gt, gt))
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["mean_class_accuracy"] == 1.0


def test_all_wrong_is_zero_and_absent_class_is_nan():
    gt = np.zeros((4, 5), np.uint8)
    pred = np.ones((4, 5), np.uint8)
    s = ConfusionMatrix(3).scores(ConfusionMatrix(3).frame_counts(gt, pred))
    assert s["iou"][:2].tolist() == [0.0, 0.0]
    assert math.isnan(s["iou"][2])  # class 2 neither in ground truth nor predicted
    assert s["miou"] == 0.0 and s["pixel_accuracy"] == 0.0
    # class 1 never appears in the ground truth: no accuracy for it
    assert s["class_accuracy"][0] == 0.0 and math.isnan(s["class_accuracy"][1])
    assert s["mean_class_accuracy"] == 0.0


def test_absent_classes_are_left_out_of_the_mean():
    gt = np.array([[0, 0], [2, 2]], np.uint8)
    cm = ConfusionMatrix(5)
    cm.update(gt, gt)
    s = cm.summary()
    assert s["miou"] == 1.0  # classes 1, 3, 4 absent -> NaN, not 0
    assert np.isnan(s["iou"][[1, 3, 4]]).all()


def test_ignored_ground_truth_is_not_counted():
    gt = np.array([[0, 11, 11], [1, 1, 11]], np.uint8)
    pred = np.array([[0, 1, 0], [1, 0, 255]], np.uint8)
    cm = ConfusionMatrix(2, ignore_index=11)
    cm.update(gt, pred)
    # counted pixels: (0->0), (1->1), (1->0)
    assert cm.counts.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert cm.summary()["pixels"] == 3
    assert cm.summary()["pixel_accuracy"] == pytest.approx(2 / 3)


def test_unlabelled_prediction_counts_as_wrong():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 255, 1, 1]], np.uint8)
    cm = ConfusionMatrix(2, ignore_index=11)
    cm.update(gt, pred)
    assert cm.counts.tolist() == [[1, 0, 1], [0, 2, 0]]
    s = cm.summary()
    assert s["iou"] == pytest.approx(
        [1 / 2, 1.0]
    )  # the 255 pixel is a miss for class 0, a false hit for nobody
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)


def test_foreign_ground_truth_and_size_mismatch_are_errors():
    cm = ConfusionMatrix(3, ignore_index=11)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        cm.update(np.array([[0, 7]], np.uint8), np.array([[0, 1]], np.uint8))
    with pytest.raises(ValueError, match="ground truth is 2x1 but the prediction is 3x1"):
        cm.update(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))
    assert cm.counts.sum() == 0


def _halves(size=100):
    gt = np.zeros((size, size), np.uint8)
    gt[:, size // 2 :] = 1
    return gt


def test_boundary_f1_hand_cases():
    bf = BoundaryF1(2, ignore_index=255)  # tolerance 0.0075 * hypot(100, 100) = 1.06 px
    gt = _halves()
    assert bf.image_score(gt, gt)[0] == 1.0
    shifted_1 = np.roll(gt, 1, axis=1)
    shifted_1[:, 0] = 0
    assert bf.image_score(gt, shifted_1)[0] == 1.0  # one pixel is inside the tolerance
    shifted_5 = np.zeros_like(gt)
    shifted_5[:, 55:] = 1
    assert bf.image_score(gt, shifted_5)[0] == 0.0  # five pixels is not
    assert bf.image_score(gt, np.zeros_like(gt)) == (0.0, {0: 0.0, 1: 0.0})  # nothing predicted


def test_boundary_f1_false_blob_lowers_precision_only():
    gt = _halves()
    pred = gt.copy()
    pred[10:13, 10:13] = 1  # a 3×3 blob of class 1 far from the true boundary
    score, per_class = BoundaryF1(2).image_score(gt, pred)
    # class 1: gt boundary 100 px (column 50); prediction adds the blob's 8 ring pixels
    # -> P = 100/108, R = 1
    assert per_class[1] == pytest.approx(2 * (100 / 108) / (100 / 108 + 1))
    # class 0: prediction adds the 16 pixels around the blob -> P = 100/116, R = 1
    assert per_class[0] == pytest.approx(2 * (100 / 116) / (100 / 116 + 1))
    assert score == pytest.approx((25 / 26 + 25 / 27) / 2)


def test_boundary_f1_ignores_void_edges():
    gt = _halves()
    gt[:, 50:] = 11  # right half void
    pred = _halves()  # predicts class 1 in the void: not a boundary of anything scored
    score, per_class = BoundaryF1(2, ignore_index=11).image_score(gt, pred)
    assert per_class == {0: 1.0} and score == 1.0


def test_boundary_f1_dataset_mean_over_images():
    bf = BoundaryF1(2)
    gt = _halves()
    bf.update(gt, gt)
    bf.update(gt, np.zeros_like(gt))
    bf.update(
        np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8)
    )  # nothing scored: left out
    assert bf.image_scores == [1.0, 0.0]
    assert bf.score == 0.5
    assert bf.per_class.tolist() == [0.5, 0.5]


def test_latency_percentiles():
    stats = LatencyStats()
    for ms in range(1, 101):
        stats.add({"inference": float(ms), "preprocess": 1.0})
    s = stats.summary()
    assert s["inference"]["p50"] == pytest.approx(50.5)
    assert s["inference"]["p95"] == pytest.approx(95.05)
    assert s["inference"]["count"] == 100 and s["preprocess"]["p95"] == 1.0


def test_evaluation_json_keys_and_skips():
    ev = Evaluation(["road", "car", "sky"], ignore_index=255)
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    frame = ev.add_frame(gt, np.array([[0, 1, 1, 1]], np.uint8), {"inference": 3.0})
    assert frame["miou"] == pytest.approx(7 / 12)
    with pytest.raises(ValueError):
        ev.add_frame(gt, np.zeros((2, 4), np.uint8))
    ev.skip("size_mismatch")
    ev.skip("no_ground_truth")
    ev.skip("no_ground_truth")
    out = json.loads(json.dumps(ev.to_dict()))
    for key in (
        "miou",
        "per_class_iou",
        "pixel_accuracy",
        "mean_class_accuracy",
        "boundary_f1",
        "latency_ms",
        "frames",
    ):
        assert key in out
    assert out["miou"] == pytest.approx(7 / 12)
    assert out["per_class_iou"] == {"road": 0.5, "car": pytest.approx(2 / 3), "sky": None}
    assert out["frames"] == {
        "used": 1,
        "skipped": {"no_ground_truth": 2, "size_mismatch": 1},
        "total": 4,
    }
    assert out["latency_ms"]["inference"]["p50"] == 3.0
    assert all(0.0 <= v <= 1.0 for v in (out["miou"], out["pixel_accuracy"], out["boundary_f1"]))


def _brute_force_bf(gt, pred, num_classes, ignore, tolerance=0.0075):
    """Compute BF by its definition, pixel by pixel (slow, obviously right), for small images."""
    height, width = gt.shape
    theta = tolerance * math.hypot(height, width)
    valid = gt != ignore

    def edge(mask):
        out = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask & valid)):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < height and 0 <= u < width and valid[v, u] and not mask[v, u]:
                        out[y, x] = True
        return out

    scores = {}
    for c in sorted(set(np.unique(gt[valid]).tolist()) & set(range(num_classes))):
        g, p = np.argwhere(edge(gt == c)), np.argwhere(edge(pred == c))
        if len(g) == 0 or len(p) == 0:
            scores[c] = float(len(g) == len(p))
            continue
        dist = np.sqrt(((g[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        precision = (dist.min(axis=0) <= theta).mean()
        recall = (dist.min(axis=1) <= theta).mean()
        scores[c] = (
            0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        )
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_f1_equals_the_definition_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    h, w = 40, 56  # tolerance 0.0075 * 68.9 = 0.52 px: only exact hits count
    gt = (
        (rng.random((h // 8, w // 8)) * 4).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    )  # 3 classes + void (3)
    pred = gt.copy()
    noise = rng.random((h, w)) < 0.05
    pred[noise] = rng.integers(0, 3, size=noise.sum())
    pred = np.roll(pred, 1, axis=int(seed % 2))
    for tolerance in (0.0075, 0.04):  # 0.52 px and 2.75 px
        expected = _brute_force_bf(gt, pred, 3, 3, tolerance)
        score, per_class = BoundaryF1(3, ignore_index=3, tolerance=tolerance).image_score(gt, pred)
        assert per_class == pytest.approx(expected)
        assert score == pytest.approx(np.mean(list(expected.values())))
