"""Training: a short real run lowers the loss, checkpoints round-trip, resume continues the schedule,
the time limit stops cleanly, and the bundled CamVid weights segment a real frame sensibly.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import camvid_root
from seg_ros.training import TrainConfig, export_bundled, load_training_checkpoint, poly_lr, train

SIZE = (64, 96)  # tiny frames keep these runs to seconds on a shared 2-core CPU
MODEL = "segnet"
OPTIONS = {"backbone": "basic"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Real CamVid when present (8 training, 4 validation frames are used), else generated scenes."""
    root = camvid_root()
    if (root / "train").is_dir() and (root / "valannot").is_dir():
        return root
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(11, 3)).astype(np.uint8)
    for split, count in (("train", 8), ("val", 4)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for i in range(count):
            blocks = rng.integers(0, 11, size=(4, 6))
            label = np.kron(blocks, np.ones((16, 16), np.int64)).astype(np.uint8)
            image = np.clip(colours[label] + rng.normal(0, 12, label.shape + (3,)), 0, 255).astype(
                np.uint8
            )
            cv2.imwrite(str(root / split / f"{i}.png"), image)
            cv2.imwrite(str(root / f"{split}annot" / f"{i}.png"), label)
    return root


def _config(data_root, output, **changes) -> TrainConfig:
    base = dict(
        model=MODEL,
        model_options=dict(OPTIONS),
        dataset="camvid",
        data=str(data_root),
        size=SIZE,
        scale_range=(0.75, 1.25),
        epochs=4,
        batch_size=4,
        lr=2e-3,
        limit_train=8,
        limit_val=4,
        threads=1,
        output=str(output),
        seed=0,
    )
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One short run shared by the tests below: 4 epochs × 2 steps."""
    output = tmp_path_factory.mktemp("run")
    return _config(data_root, output), train(_config(data_root, output))


def test_poly_schedule():
    assert poly_lr(1e-3, 0, 100) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_lr(1e-3, 100, 100) == 0.0 and poly_lr(1e-3, 120, 100) == 0.0


def test_short_run_lowers_the_loss(trained):
    cfg, result = trained
    losses = [entry["train_loss"] for entry in result.history]
    assert result.steps == 8 and result.epochs_done == 4 and not result.stopped_by_time_limit
    assert losses[-1] < losses[0] * 0.9, losses
    assert all(0.0 <= entry["val_miou"] <= 1.0 for entry in result.history)
    assert len(result.history[-1]["val_per_class_iou"]) == 11
    lines = (result.last_checkpoint.parent / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_checkpoint_round_trip_to_bundled_weights(trained, tmp_path):
    from seg_ros.models import load_model

    cfg, result = trained
    state = load_training_checkpoint(result.best_checkpoint)
    path = tmp_path / "tiny.safetensors"
    export_bundled(
        result.best_checkpoint, path, half=False, precise_bn=0
    )  # the checkpoint's own BN statistics
    loaded = load_model(weights=str(path))
    spec = loaded.spec
    assert (spec.family, spec.num_classes, spec.class_table) == (MODEL, 11, "camvid")
    assert (spec.input_height, spec.input_width) == SIZE
    # Re-measured in fp32; training validated under bf16 autocast, so close but not equal.
    assert spec.metrics["val_miou"] == pytest.approx(result.best_miou, abs=0.02)
    assert set(spec.metrics["val_per_class_iou"]) >= {"Road", "Sky"}
    assert spec.metrics["training"]["steps"] == state["step"]

    from seg_ros.training import build_network

    module = build_network(cfg.resolved())
    module.load_state_dict(state["model"])
    module.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x), rtol=1e-4, atol=1e-4)


def test_precise_bn_replaces_lagging_statistics(data_root):
    """After recalibration the running mean is the plain mean over the batches, and nothing else changed."""
    from seg_ros.datasets import Augmentation, SegmentationDataset, camvid_pairs
    from seg_ros.training import recalibrate_batchnorm

    dataset = SegmentationDataset(
        camvid_pairs(data_root, "train")[:4],
        num_classes=11,
        ignore_index=11,
        size=SIZE,
        augment=Augmentation(crop=(32, 48)),
    )
    conv = torch.nn.Conv2d(3, 4, 1)
    norm = torch.nn.BatchNorm2d(4, momentum=0.01)
    module = torch.nn.Sequential(conv, norm).eval()
    norm.running_mean.fill_(5.0)  # stale statistics
    weights = [p.detach().clone() for p in module.parameters()]
    recalibrate_batchnorm(module, dataset, torch.device("cpu"), batches=2, batch_size=2)
    with torch.no_grad():
        features = conv(torch.stack([dataset[i][0] for i in range(4)]))
    torch.testing.assert_close(
        norm.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5
    )
    assert norm.momentum == 0.01 and not module.training
    assert all(torch.equal(a, b) for a, b in zip(weights, module.parameters()))


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_training_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_training_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a seg_ros training checkpoint"):
        load_training_checkpoint(tmp_path / "other.pt")


def test_resume_continues_the_schedule(data_root, tmp_path):
    quick = dict(limit_train=4, limit_val=2)  # one step per epoch
    first = train(_config(data_root, tmp_path, epochs=2, **quick))
    state = load_training_checkpoint(first.last_checkpoint)
    assert first.steps == 2 and state["step"] == 2 and state["epoch"] == 2 and "optimizer" in state
    resumed = train(
        _config(data_root, tmp_path, epochs=4, resume=str(first.last_checkpoint), **quick)
    )
    assert resumed.steps == 4 and resumed.epochs_done == 4
    assert [e["step"] for e in resumed.history] == [
        1,
        2,
        3,
        4,
    ]  # history carried over, not restarted
    # The resumed steps follow the longer schedule: the lr is not restarted, nor stuck at the old end (0).
    assert resumed.history[2]["lr"] == pytest.approx(poly_lr(2e-3, 3, 4))
    state = load_training_checkpoint(resumed.last_checkpoint)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx(
        [poly_lr(2e-3, 3, 4)] * 2
    )
    # AdamW's own state went on too: a fresh optimizer would count 2 steps, not 4.
    assert state["optimizer"]["state"] and all(
        float(s["step"]) == 4 for s in state["optimizer"]["state"].values()
    )


def test_resume_refuses_another_model(data_root, tmp_path, trained):
    _, result = trained
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(data_root, tmp_path, num_classes=12, resume=str(result.last_checkpoint)))


def test_time_limit_stops_cleanly_and_keeps_a_resumable_model(data_root, tmp_path):
    result = train(_config(data_root, tmp_path, epochs=50, time_limit_min=0.001))
    assert result.stopped_by_time_limit and 1 <= result.steps < 100
    assert result.best_checkpoint.is_file()
    assert load_training_checkpoint(result.last_checkpoint)["step"] == result.steps


def test_bad_configs_are_refused(data_root, tmp_path):
    with pytest.raises(ValueError, match="--num-classes"):
        train(TrainConfig(model=MODEL, dataset="folders", data=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown dataset"):
        train(TrainConfig(model=MODEL, dataset="voc", data=str(tmp_path)))
    with pytest.raises(FileNotFoundError):
        train(_config(tmp_path / "nowhere", tmp_path))


def test_train_command_line_bundles_weights_with_a_model_card(data_root, tmp_path):
    from seg_ros.commands import train as command
    from seg_ros.models import read_spec

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    out = tmp_path / "cli"
    bundled = tmp_path / "cli.safetensors"
    args = parser.parse_args(
        [
            "train",
            "--model",
            MODEL,
            "--backbone",
            "basic",
            "--data",
            str(data_root),
            "--size",
            "64x96",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--limit-train",
            "4",
            "--limit-val",
            "2",
            "--threads",
            "1",
            "--output",
            str(out),
            "--export-bundled",
            str(bundled),
            "--latency-frames",
            "0",
        ]
    )
    assert args.func(args) == 0
    assert (out / "last.pt").is_file() and bundled.is_file()
    spec = read_spec(bundled)
    card = bundled.with_suffix(".md").read_text()
    assert "| Road |" in card and f"{100 * spec.metrics['val_miou']:.1f}" in card
    # --bundle re-exports an existing checkpoint without training.
    again = tmp_path / "again.safetensors"
    args = parser.parse_args(
        [
            "train",
            "--bundle",
            str(out / "best.pt"),
            "--export-bundled",
            str(again),
            "--latency-frames",
            "0",
        ]
    )
    assert (
        args.func(args) == 0 and read_spec(again).metrics["val_miou"] == spec.metrics["val_miou"]
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", MODEL, "--data", "x", "--crop", "12"])
    args = parser.parse_args(["train", "--bundle", str(out / "best.pt")])
    with pytest.raises(ValueError, match="--export-bundled"):
        args.func(args)


def test_cpu_latency_of_bundled_weights(trained, tmp_path):
    """The model card's latency path on the PyTorch backend (ONNX export is the backends' tests' business)."""
    from seg_ros.training import measure_cpu_latency

    _, result = trained
    path = tmp_path / "tiny.safetensors"
    export_bundled(result.best_checkpoint, path, evaluate_val=False)
    image = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    latency = measure_cpu_latency(path, image, backend="torch", threads=1, frames=2)
    assert (
        latency["backend"].startswith("torch")
        and latency["image"] == "100x72"
        and latency["frames"] == 2
    )
    assert (
        0
        < latency["inference_ms_median"]
        <= latency["pipeline_ms_median"]
        <= latency["pipeline_ms_p90"] * 1.001
    )


def _bundled_weights():
    from seg_ros.paths import models_dir

    files = sorted(models_dir().glob("*.safetensors"))
    return files or [
        pytest.param(None, marks=pytest.mark.skip(reason="no bundled weights in models/"))
    ]


@pytest.mark.parametrize("path", _bundled_weights(), ids=lambda p: getattr(p, "stem", "none"))
def test_bundled_weights_segment_a_camvid_frame(path, camvid):
    """Road where the car drives (bottom centre) and Sky at the top, on a validation frame."""
    from seg_ros.datasets import read_label, read_rgb
    from seg_ros.models import load_model

    assert path.stat().st_size < 20 * 2**20
    loaded = load_model(weights=str(path))
    spec = loaded.spec
    assert (spec.class_table, spec.num_classes) == ("camvid", 11)
    assert 0.0 < spec.metrics["val_miou"] <= 1.0
    image = read_rgb(camvid / "val" / "0016E5_08059.png")
    truth = read_label(camvid / "valannot" / "0016E5_08059.png", num_classes=11, ignore_index=11)
    small = cv2.resize(
        image, (spec.input_width, spec.input_height), interpolation=cv2.INTER_LINEAR
    )
    x = (small.astype(np.float32) / 255.0 - np.array(spec.mean, np.float32)) / np.array(
        spec.std, np.float32
    )
    with torch.no_grad():
        logits = loaded.module(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
    pred = cv2.resize(
        logits.argmax(1)[0].numpy().astype(np.uint8), (480, 360), interpolation=cv2.INTER_NEAREST
    )
    bottom = (slice(288, 360), slice(168, 312))
    top = (slice(0, 54), slice(None))
    road, sky = truth[bottom] == 3, truth[top] == 0
    assert road.sum() > 1000 and sky.sum() > 1000  # the frame shows both
    assert (pred[bottom][road] == 3).mean() > 0.8
    assert (pred[top][sky] == 0).mean() > 0.8
