"""CRF tuning: the search finds planted optima, the real CRF is fitted, and models keep the fit."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from seg_ros.tune_crf import SEARCH_SPACE, Trial, TuningFrame, coordinate_search, score, tune

TARGET = {
    "iterations": 3,
    "gaussian_sxy": 2.0,
    "gaussian_weight": 1.0,
    "bilateral_sxy": 40.0,
    "bilateral_srgb": 8.0,
    "bilateral_weight": 10.0,
}
START = {
    "iterations": 5,
    "gaussian_sxy": 3.0,
    "gaussian_weight": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_weight": 10.0,
}


def _planted(params: dict) -> tuple[float, float]:
    """Return a separable bowl around TARGET; boundary F1 falls for bilateral_weight above 6."""
    miou = 0.6 - sum(((params[k] - TARGET[k]) / max(SEARCH_SPACE[k])) ** 2 for k in TARGET)
    return miou, 0.5 + (0.1 if params["bilateral_weight"] <= 6 else -0.1)


def test_search_finds_the_planted_optimum_under_the_boundary_constraint():
    baseline = Trial(None, 0.4, 0.5)
    trials = coordinate_search(
        _planted, START, SEARCH_SPACE, objective="miou-keep-bf1", baseline=baseline, passes=3
    )
    best = max((t for t in trials if t.feasible), key=lambda t: t.objective)
    # bilateral_weight 10 scores the highest mIoU but lowers boundary F1: 6 is the answer.
    assert best.params == {**TARGET, "bilateral_weight": 6.0}
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    unconstrained = coordinate_search(
        _planted, START, SEARCH_SPACE, objective="miou", baseline=baseline, passes=3
    )
    assert max(unconstrained, key=lambda t: t.objective).params == TARGET


def _frames(count=3, seed=0):
    """Two-colour scenes; the 'network' is right inside regions, unsure and noisy near edges."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        label = np.zeros((40, 56), np.uint8)
        left = int(rng.integers(16, 40))
        label[:, left:] = 1
        label[: int(rng.integers(8, 30)), :] = 2
        colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float32)
        image = np.clip(colours[label] + rng.normal(0, 6, label.shape + (3,)), 0, 255)
        onehot = np.eye(3, dtype=np.float32)[label].transpose(2, 0, 1)
        blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 3.0) for c in onehot])
        noisy = np.clip(blurred + rng.normal(0, 0.25, blurred.shape), 1e-3, None)
        probabilities = (noisy / noisy.sum(0, keepdims=True)).astype(np.float32)
        frames.append(TuningFrame(image.astype(np.uint8), probabilities, label))
    return frames


def test_tuning_the_real_crf_beats_it_off_and_lists_every_trial():
    frames = _frames()
    space = {"iterations": (1, 5), "bilateral_weight": (0.0, 10.0), "bilateral_srgb": (3.0, 13.0)}
    result = tune(frames, 3, 255, start=START, space=space, passes=1, progress=False)
    off_miou, off_bf1 = score(frames, None, 3, 255)
    assert (result.baseline.miou, result.baseline.boundary_f1) == (off_miou, off_bf1)
    assert result.best is not None and result.chosen.miou > off_miou
    assert result.chosen.boundary_f1 >= off_bf1
    # The image's edges are what fixes the noisy labels: the bilateral kernel is on.
    assert result.best["bilateral_weight"] == 10.0
    assert result.trials[0].params is None and len(result.trials) >= 5
    assert set(result.best) == set(START)


def test_no_setting_that_hurts_is_chosen():
    frames = _frames()
    for frame in frames:  # a perfect network: any CRF can only blur it
        frame.probabilities = np.eye(3, dtype=np.float32)[frame.label].transpose(2, 0, 1)
    space = {"gaussian_weight": (5.0,), "bilateral_weight": (15.0,)}
    result = tune(frames, 3, 255, start=START, space=space, passes=1, progress=False)
    assert result.chosen is result.baseline or result.chosen.miou >= result.baseline.miou
    assert result.best is None or result.chosen.boundary_f1 >= result.baseline.boundary_f1


@pytest.fixture
def small_weights(tmp_path):
    """Write small random DeepLab weights at 32x48, like a bundled file."""
    from seg_ros.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    module = build_model("deeplab", 11).eval()
    spec = ModelSpec(
        name="tiny",
        family="deeplab",
        num_classes=11,
        class_table="camvid",
        input_height=32,
        input_width=48,
    )
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, module, spec, half=True)
    return path


def test_pipeline_uses_stored_parameters_unless_given(small_weights):
    from seg_ros.commands.tune_crf import write_fitted
    from seg_ros.models import read_spec
    from seg_ros.pipeline import CrfSettings, PipelineConfig, build_pipeline

    fitted = {**TARGET, "tuned_on": "test frames", "objective": "miou-keep-bf1"}
    write_fitted(str(small_weights), fitted)
    assert read_spec(small_weights).crf == fitted
    card = small_weights.with_suffix(".md").read_text()
    assert (
        "Fitted by `seg_ros tune-crf` on test frames" in card and '"bilateral_srgb": 8.0' in card
    )

    def crf(**config):
        built = build_pipeline(
            PipelineConfig(weights=str(small_weights), backend="torch", **config)
        )
        return built.pipeline.crf

    used = crf(crf=CrfSettings(enabled=True))
    assert used.enabled and all(getattr(used, k) == v for k, v in TARGET.items())
    mine = crf(crf=CrfSettings(iterations=7), crf_explicit=("iterations",))
    assert mine.iterations == 7 and mine.bilateral_srgb == 8.0
    built = build_pipeline(PipelineConfig(weights=str(small_weights), backend="torch"))
    assert built.pipeline.crf.iterations == 3
    built.pipeline.set_crf(CrfSettings(enabled=True))  # the node toggling crf.enabled at run time
    assert built.pipeline.crf.enabled and built.pipeline.crf.bilateral_srgb == 8.0
    built.pipeline.set_crf(CrfSettings(enabled=True, iterations=7))  # set by the user: kept
    assert built.pipeline.crf.iterations == 7 and built.pipeline.crf.gaussian_sxy == 2.0


def test_an_older_bundles_card_keeps_its_text_and_gets_one_crf_section(small_weights):
    from seg_ros.commands.tune_crf import write_fitted
    from seg_ros.models import read_spec

    assert "split" not in read_spec(small_weights).metrics.get("training", {})  # no recipe kept
    card = small_weights.with_suffix(".md")
    written_before = "# tiny\n\n## Training\n\n- a recipe in words\n\n## CPU latency\n\n| x |\n"
    card.write_text(written_before)
    write_fitted(str(small_weights), {**START, "tuned_on": "first frames", "objective": "miou"})
    write_fitted(str(small_weights), {**TARGET, "tuned_on": "second frames", "objective": "miou"})
    text = card.read_text()
    assert text.count("## Dense CRF") == 1 and "second frames" in text
    assert "first frames" not in text and '"bilateral_srgb": 8.0' in text
    assert text.index("## Training") < text.index("## Dense CRF") < text.index("## CPU latency")
    assert "- a recipe in words" in text and text.endswith("| x |\n")
    assert read_spec(small_weights).crf["tuned_on"] == "second frames"


def test_tune_crf_command_writes_table_json_and_weights(small_weights, tmp_path, capsys):
    from seg_ros.cli import main
    from seg_ros.models import read_spec

    for split in ("images", "labels"):
        (tmp_path / split).mkdir()
    for i, frame in enumerate(_frames(2)):
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), frame.image[..., ::-1])
        cv2.imwrite(str(tmp_path / "labels" / f"f{i}.png"), frame.label)
    out = tmp_path / "crf.json"
    code = main(
        ["tune-crf", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
        + ["--backend", "torch", "--passes", "1", "--json", str(out), "--no-progress"]
        + ["--write-to", str(small_weights)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "CRF off" in printed and "mIoU" in printed
    summary = json.loads(out.read_text())
    assert summary["frames"] == 2 and summary["trials"][0]["crf"] == "off"
    assert len(summary["trials"]) > 10
    stored = read_spec(small_weights).crf
    assert stored["objective"] == "miou-keep-bf1" and "2 frames of images" in stored["tuned_on"]
    if summary["best"] is None:
        assert stored["enabled"] is False
    else:
        assert all(stored[k] == summary["best"][k] for k in TARGET)
    assert main(["tune-crf", "--backend", "torch"]) == 2  # no frames: one clear error


def test_evaluate_and_tune_crf_score_the_new_drive_split(small_weights, tmp_path, caplog):
    """--data --split new-drive scores drive 0006R0 only (generated CamVid-layout frames)."""
    from seg_ros.cli import main
    from seg_ros.models import load_model, save_checkpoint

    frames = _frames(5)
    names = {"train": ["0001TP_0", "0006R0_1", "0006R0_2", "0016E5_3"], "val": ["0016E5_4"]}
    index = 0
    for split, stems in names.items():
        for folder in (split, f"{split}annot"):
            (tmp_path / folder).mkdir()
        for stem in stems:
            frame = frames[index]
            index += 1
            cv2.imwrite(str(tmp_path / split / f"{stem}.png"), frame.image[..., ::-1])
            label = frame.label.copy()
            label[0, :4] = 11  # CamVid's void: scored by neither command
            cv2.imwrite(str(tmp_path / f"{split}annot" / f"{stem}.png"), label)
    common = ["--data", str(tmp_path), "--weights", str(small_weights), "--backend", "torch"]
    out = tmp_path / "nd.json"
    assert main(["evaluate", *common, "--json", str(out), "--no-progress"]) == 0
    summary = json.loads(out.read_text())
    assert summary["frames"]["used"] == 2 and "split new-drive" in summary["source"]
    assert summary["frames_in_training_data"] == 0  # these weights name no training data
    assert main(["evaluate", *common, "--split", "val", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["frames"]["used"] == 1
    # Weights whose recipe trained on every frame (split all): the figure is flagged.
    loaded = load_model(weights=small_weights)
    loaded.spec.metrics = {"training": {"dataset": "camvid", "split": "all"}}
    trained_on_all = tmp_path / "all.safetensors"
    save_checkpoint(trained_on_all, loaded.module, loaded.spec, half=True)
    flagged = [*common[:2], "--weights", str(trained_on_all), *common[4:]]
    with caplog.at_level(logging.WARNING, logger="seg_ros.evaluate"):
        assert main(["evaluate", *flagged, "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["frames_in_training_data"] == 2
    assert "2 of 2 frames here were in these weights' training data" in caplog.text
    tuned = tmp_path / "crf.json"
    args = ["tune-crf", *common, "--passes", "1", "--no-progress", "--json", str(tuned)]
    assert main(args) == 0
    assert json.loads(tuned.read_text())["frames"] == 2
