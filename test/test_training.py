"""Training: a short run fits, resume is exact, extension continues the schedule, EMA maths.

Also: checkpoints round-trip to bundled weights with an honest model card, the
time limit stops cleanly, and the bundled CamVid weights segment a real frame.
All runs are tiny (generated scenes, CPU, one thread) and deterministic.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
import torch

from seg_ros.datasets import SegmentationDataset
from seg_ros.training import (
    ModelEma,
    TrainConfig,
    export_bundled,
    learning_rate,
    load_training_checkpoint,
    train,
)
from seg_ros.training.bundling import recipe_split

MODEL = "deeplab"  # DeepLab v3+ MobileNetV3: learns these scenes in a few steps (SegNet does not)
OPTIONS: dict = {}
SIZE = (32, 48)  # tiny frames keep these runs to seconds on a shared 2-core CPU
FIT_SIZE = (64, 96)
# Four classes with clearly different colours: a working loop fits them in a few steps.
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
DRIVES = {"train": ("0001TP", "0006R0", "0016E5"), "val": ("0016E5",)}
NO_PHOTOMETRIC = dict(jitter=0.0, gamma=0.0, hue=0.0, blur=0.0, noise=0.0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Generate CamVid-layout scenes whose file names carry CamVid's drives."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 9), ("val", 3)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for i in range(count):
            blocks = rng.integers(0, 4, size=(SIZE[0] // 8, SIZE[1] // 8))
            label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)
            noise = rng.normal(0, 10, label.shape + (3,))
            image = np.clip(COLOURS[label] + noise, 0, 255).astype(np.uint8)
            name = f"{DRIVES[split][i % len(DRIVES[split])]}_{i:05d}.png"
            cv2.imwrite(str(root / split / name), image[..., ::-1])
            cv2.imwrite(str(root / f"{split}annot" / name), label)
    return root


def _config(data_root, output, **changes) -> TrainConfig:
    base = dict(
        model=MODEL,
        model_options=dict(OPTIONS),
        dataset="camvid",
        data=str(data_root),
        size=SIZE,
        scale_range=(0.75, 1.25),
        epochs=2,
        batch_size=4,
        lr=3e-3,
        limit_train=8,
        class_weighting="none",
        precise_bn=1,
        ema=0.9,
        threads=1,
        output=str(output),
        seed=0,
        **NO_PHOTOMETRIC,
    )
    base.update(changes)
    return TrainConfig(**base)


def _pixel_accuracy(module, data_root) -> float:
    from seg_ros.datasets import camvid_pairs
    from seg_ros.training import evaluate

    pairs = camvid_pairs(data_root, "train")[:8]
    dataset = SegmentationDataset(pairs, num_classes=11, ignore_index=11, size=FIT_SIZE)
    return evaluate(module, dataset, torch.device("cpu"), progress=False)["pixel_accuracy"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One short run shared by the tests below: 8 epochs of 2 steps."""
    output = tmp_path_factory.mktemp("run")
    cfg = _config(data_root, output, epochs=8, val_every=4, size=FIT_SIZE, scale_range=(1, 1))
    return cfg, train(cfg)


def test_short_run_fits_the_training_scenes(trained, data_root):
    """The trained weights tell the four colours apart; the same network untrained does not."""
    from seg_ros.training import build_network

    cfg, result = trained
    assert result.steps == 16 and result.epochs_done == 8 and not result.stopped_by_time_limit
    losses = [entry["train_loss"] for entry in result.history]
    assert losses[-1] < losses[0], losses
    state = load_training_checkpoint(result.best_checkpoint)
    module = build_network(cfg.resolved())
    before = _pixel_accuracy(module, data_root)
    module.load_state_dict(state["model"])
    after = _pixel_accuracy(module, data_root)
    assert after > 0.7 and after > before + 0.3, (before, after)
    assert all(0.0 <= e["val_miou"] <= 1.0 for e in result.history if "val_miou" in e)
    assert len(result.history[-1]["val_per_class_iou"]) == 11
    lines = (result.last_checkpoint.parent / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(2, 17, 2))


def test_schedule():
    assert learning_rate(1e-3, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)
    assert learning_rate(1e-3, 100, 100) == 0.0 and learning_rate(1e-3, 120, 100) == 0.0


def test_ema_maths():
    """Average = d*average + (1-d)*weights with the warm-up d = min(decay, (1+n)/(10+n))."""
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(module, decay=0.5)
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    for n in range(12):
        with torch.no_grad():
            for param in module.parameters():
                param.add_(1.0)
        module.train()(torch.randn(4, 2))  # moves BN statistics and its integer batch counter
        decay = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(module)
        for key, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 12
    restored = ModelEma(module, decay=0.1)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 12 and restored.decay == 0.5


def test_ohem_keeps_the_hardest_pixels_and_ignores_void():
    import torch.nn.functional as F

    from seg_ros.datasets import IGNORE
    from seg_ros.training.loss import SegmentationLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0] = IGNORE
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    pixel = F.cross_entropy(
        logits, labels, weight=torch.from_numpy(weights), ignore_index=IGNORE, reduction="none"
    )[labels != IGNORE]
    hardest = pixel.sort(descending=True).values[: int(0.25 * pixel.numel())]
    ohem = SegmentationLoss(weights, ohem=0.25)(logits, labels)
    torch.testing.assert_close(ohem, hardest.mean())
    plain = SegmentationLoss(weights)(logits, labels)
    expected = F.cross_entropy(
        logits, labels, weight=torch.from_numpy(weights), ignore_index=IGNORE
    )
    torch.testing.assert_close(plain, expected)
    assert float(ohem) > float(plain)


def _interrupt_after(monkeypatch, steps: int, batch_size: int, how: str) -> None:
    """Stop a run after `steps` training steps, as a kill (TERM) or a loader exception would.

    TERM arrives while the loader fetches the last batch: the loop finishes that step, then stops.
    A KeyboardInterrupt raised in the loader stops it before the next step.
    """
    import os
    import signal

    calls = {"n": 0}
    original = SegmentationDataset.__getitem__

    def getitem(self, index):
        if self.augment is not None:
            calls["n"] += 1
            if how == "term" and calls["n"] == (steps - 1) * batch_size + 1:
                os.kill(os.getpid(), signal.SIGTERM)
            if how == "exception" and calls["n"] > steps * batch_size:
                raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", getitem)


def _run_state(path) -> dict:
    state = load_training_checkpoint(path)
    for entry in state["history"]:
        entry.pop("elapsed_s")
    return state


INTERRUPTED = dict(epochs=3, val_every=3, precise_bn=0)


@pytest.fixture(scope="module")
def whole(data_root, tmp_path_factory):
    """Train the uninterrupted run the interrupted ones must equal."""
    return train(_config(data_root, tmp_path_factory.mktemp("whole"), **INTERRUPTED))


@pytest.mark.parametrize("how", ["term", "exception"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    data_root, tmp_path, monkeypatch, how, whole
):
    changes = INTERRUPTED
    _interrupt_after(monkeypatch, 3, 4, how)  # mid-epoch 2 of 3
    cut = train(_config(data_root, tmp_path / "cut", **changes))
    assert cut.interrupted and cut.steps == 3 and not cut.best_checkpoint.is_file()
    saved = load_training_checkpoint(cut.last_checkpoint)
    assert (saved["epoch"], saved["position"], len(saved["epoch_losses"])) == (1, 1, 1)
    monkeypatch.undo()
    resumed = train(
        _config(data_root, tmp_path / "cut", resume=str(cut.last_checkpoint), **changes)
    )
    assert resumed.steps == whole.steps == 6 and not resumed.interrupted
    a, b = _run_state(whole.last_checkpoint), _run_state(resumed.last_checkpoint)
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["history"] == b["history"] and torch.equal(a["rng"], b["rng"])
    assert resumed.best_miou == whole.best_miou


def test_resume_with_more_epochs_extends_the_schedule(data_root, tmp_path):
    quick = dict(limit_train=4, val_every=10)  # one step per epoch
    first = train(_config(data_root, tmp_path, epochs=2, **quick))
    state = load_training_checkpoint(first.last_checkpoint)
    assert first.steps == 2 and state["step"] == 2 and state["epoch"] == 2
    again = train(
        _config(data_root, tmp_path, epochs=2, resume=str(first.last_checkpoint), **quick)
    )
    assert again.steps == 2  # finished, same schedule: nothing more to do
    resumed = train(
        _config(data_root, tmp_path, epochs=4, resume=str(first.last_checkpoint), **quick)
    )
    assert resumed.steps == 4 and resumed.epochs_done == 4
    assert [e["step"] for e in resumed.history] == [1, 2, 3, 4]  # history carried over
    # The added steps follow the longer schedule: not restarted, nor stuck at the old end (0).
    assert resumed.history[2]["lr"] == pytest.approx(learning_rate(3e-3, 3, 4))
    state = load_training_checkpoint(resumed.last_checkpoint)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx(
        [learning_rate(3e-3, 3, 4)] * 2
    )
    # AdamW's own state went on too: a fresh optimizer would count 2 steps, not 4.
    assert state["optimizer"]["state"] and all(
        float(s["step"]) == 4 for s in state["optimizer"]["state"].values()
    )
    assert state["ema"]["updates"] == 4


def test_resume_refuses_another_model(data_root, tmp_path, trained):
    _, result = trained
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(data_root, tmp_path, num_classes=12, resume=str(result.last_checkpoint)))
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(data_root, tmp_path, split="all", resume=str(result.last_checkpoint)))


def test_new_drive_and_all_splits_train(data_root, tmp_path):
    from seg_ros.datasets import HELD_OUT_DRIVE, drive_of
    from seg_ros.training.loop import datasets

    cfg = _config(data_root, tmp_path, split="new-drive", limit_train=0).resolved()
    train_set, val_set = datasets(cfg)
    assert {drive_of(p[0]) for p in val_set.pairs} == {HELD_OUT_DRIVE}
    assert HELD_OUT_DRIVE not in {drive_of(p[0]) for p in train_set.pairs}
    result = train(_config(data_root, tmp_path / "all", split="all", epochs=1, limit_train=0))
    state = load_training_checkpoint(result.best_checkpoint)
    assert state["selected_on_val"] is False and state["best_metrics"] == {}
    assert result.steps == 3  # all 12 frames, batches of 4


def test_backbone_lr_scales_only_the_encoder(data_root, tmp_path):
    """--backbone-lr 0 freezes the encoder's weights while the head still learns."""
    from seg_ros.training.loop import build_network

    cfg = _config(data_root, tmp_path, epochs=1, backbone_lr=0.0, ema=0.0)
    torch.manual_seed(cfg.seed)
    start = build_network(cfg.resolved()).state_dict()
    result = train(cfg)
    trained_state = load_training_checkpoint(result.last_checkpoint)["model"]
    params = dict(build_network(cfg.resolved()).named_parameters())
    encoder = [k for k in params if k.startswith("backbone.")]
    head = [k for k in params if not k.startswith("backbone.")]
    assert encoder and head
    assert all(torch.equal(trained_state[k], start[k]) for k in encoder)
    assert any(not torch.equal(trained_state[k], start[k]) for k in head)
    with pytest.raises(ValueError, match="--backbone-lr"):
        train(_config(data_root, tmp_path, backbone_lr=2.0))


def test_checkpoint_round_trip_to_bundled_weights(trained, tmp_path):
    from seg_ros.models import load_model
    from seg_ros.training import build_network

    cfg, result = trained
    state = load_training_checkpoint(result.best_checkpoint)
    path = tmp_path / "tiny.safetensors"
    export_bundled(result.best_checkpoint, path, half=False, precise_bn=0)
    loaded = load_model(weights=str(path))
    spec = loaded.spec
    assert (spec.family, spec.num_classes, spec.class_table) == (MODEL, 11, "camvid")
    assert (spec.input_height, spec.input_width) == FIT_SIZE
    # Measured again on the exported weights: the same as the run's validation (fp32 here).
    assert spec.metrics["val_miou"] == pytest.approx(result.best_miou, abs=0.02)
    assert spec.metrics["evaluations"]["val"]["split"] == "val"
    assert set(spec.metrics["val_per_class_iou"]) >= {"Road", "Sky"}
    assert spec.metrics["training"]["steps"] == state["step"]
    module = build_network(cfg.resolved())
    module.load_state_dict(state["model"])
    module.eval()
    x = torch.randn(1, 3, *FIT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x), rtol=1e-4, atol=1e-4)


def test_model_card_reports_the_recipe_splits_and_ablation(data_root, tmp_path, trained):
    """The card states the backbone truthfully, both splits' scores and the ablation rows."""
    from seg_ros.training import write_model_card

    cfg, result = trained
    nd = train(
        _config(
            data_root,
            tmp_path / "nd",
            split="new-drive",
            epochs=1,
            backbone_lr=0.5,
            copy_paste=0.5,
        )
    )
    path = tmp_path / "card.safetensors"
    rows = [{"change": "no EMA", "miou": 0.123}, {"change": "OHEM 0.25", "miou": 0.456}]
    spec = export_bundled(
        result.best_checkpoint,
        path,
        precise_bn=0,
        recipe_runs={"new-drive": nd.best_checkpoint},
        ablation=rows,
    )
    card = write_model_card(path, []).read_text()
    assert "random initialisation" in card and "pretrained backbone" not in card
    assert "new drive (0006R0 held out" in card and "val (drive 0016E5" in card
    assert "that run never saw), measured on the new-drive run of this recipe" in card
    new_drive = spec.metrics["evaluations"]["new-drive"]
    assert spec.metrics["val_miou"] == new_drive["miou"]  # the headline is the new-drive figure
    assert f"{100 * new_drive['miou']:.1f}" in card
    assert f"{100 * spec.metrics['evaluations']['val']['miou']:.1f}" in card
    assert "| no EMA | 12.3 |" in card and "| OHEM 0.25 | 45.6 |" in card
    # A recipe run whose checkpoints are gone counts through the weights bundled from it.
    nd_bundle = tmp_path / "nd.safetensors"
    nd_spec = export_bundled(nd.best_checkpoint, nd_bundle, precise_bn=0)
    assert recipe_split(nd_bundle) == recipe_split(nd.best_checkpoint) == "new-drive"
    nd_card = write_model_card(nd_bundle, []).read_text()
    assert "lr 0.003 (the encoder at 0.5 of it)" in nd_card
    assert "rare-class copy-paste with probability 0.5" in nd_card
    assert "the encoder at" not in card and "copy-paste" not in card
    again = export_bundled(
        result.best_checkpoint,
        tmp_path / "again.safetensors",
        precise_bn=0,
        recipe_runs={"new-drive": nd_bundle},
    )
    from_bundle = again.metrics["evaluations"]["new-drive"]
    assert from_bundle["miou"] == nd_spec.metrics["val_miou"] == again.metrics["val_miou"]
    assert from_bundle["weights"] == str(nd_bundle)
    assert "split `val`" in card and "EMA, decay 0.9" in card
    assert f"cores), {spec.metrics['training']['precision']}" in card
    # A run that started from local ImageNet weights says so (the entry once sat in a comment).
    state = load_training_checkpoint(result.best_checkpoint)
    state["config"]["pretrained_backbone"] = "/somewhere/mobilenet.pth"
    faked = tmp_path / "pretrained.pt"
    torch.save(state, faked)
    path = tmp_path / "pretrained.safetensors"
    spec = export_bundled(faked, path, precise_bn=0, evaluate_val=False)
    assert (
        spec.metrics["training"]["pretrained_backbone"] == "local ImageNet weights mobilenet.pth"
    )
    card = write_model_card(path, []).read_text()
    assert "pretrained backbone: local ImageNet weights mobilenet.pth" in card
    assert "random initialisation" not in card


def test_precise_bn_replaces_lagging_statistics(data_root):
    """After recalibration the running mean is the plain batch mean, and nothing else changed."""
    from seg_ros.datasets import Augmentation, camvid_pairs
    from seg_ros.training import recalibrate_batchnorm

    dataset = SegmentationDataset(
        camvid_pairs(data_root, "train")[:4],
        num_classes=11,
        ignore_index=11,
        size=SIZE,
        augment=Augmentation(crop=(16, 24)),
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
    with pytest.raises(ValueError, match="unknown split"):
        train(_config(data_root, tmp_path, split="test"))
    with pytest.raises(ValueError, match="--ohem"):
        train(_config(data_root, tmp_path, ohem=1.5))
    with pytest.raises(FileNotFoundError):
        train(_config(tmp_path / "nowhere", tmp_path))


def _parser():
    from seg_ros.commands import train as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser


def test_train_command_line_bundles_weights_with_a_model_card(data_root, tmp_path):
    from seg_ros.models import read_spec

    parser = _parser()
    out = tmp_path / "cli"
    bundled = tmp_path / "cli.safetensors"
    common = ["--size", "32x48", "--batch-size", "4", "--limit-train", "4", "--threads", "1"]
    args = parser.parse_args(
        ["train", "--model", MODEL, "--data", str(data_root)]
        + common
        + ["--epochs", "1", "--output", str(out)]
        + ["--export-bundled", str(bundled), "--latency-frames", "0"]
    )
    assert args.func(args) == 0
    assert (out / "last.pt").is_file() and bundled.is_file()
    spec = read_spec(bundled)
    card = bundled.with_suffix(".md").read_text()
    assert "| Road |" in card and f"{100 * spec.metrics['val_miou']:.1f}" in card
    # --resume with a larger --epochs extends the run with its own settings.
    args = parser.parse_args(["train", "--resume", str(out / "last.pt"), "--epochs", "2"])
    assert args.func(args) == 0
    state = load_training_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2
    assert state["config"]["limit_train"] == 4 and state["config"]["size"] == [32, 48]
    assert state["config"]["threads"] == 1  # not given again: the run's own setting
    # --bundle re-exports an existing checkpoint without training.
    again = tmp_path / "again.safetensors"
    args = parser.parse_args(
        ["train", "--bundle", str(out / "best.pt"), "--export-bundled", str(again)]
        + ["--latency-frames", "0", "--name", "renamed_camvid"]
    )
    assert args.func(args) == 0 and 0 <= read_spec(again).metrics["val_miou"] <= 1
    assert read_spec(again).name == "renamed_camvid"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", MODEL, "--data", "x", "--crop", "12"])
    args = parser.parse_args(["train", "--bundle", str(out / "best.pt")])
    with pytest.raises(ValueError, match="--export-bundled"):
        args.func(args)


def test_init_weights_with_crf_rnn_fine_tunes_a_trained_model_end_to_end(
    trained, data_root, tmp_path
):
    """--init-weights starts from the weights; the new CRF layer starts as the fitted CRF."""
    from dataclasses import replace

    from seg_ros.commands.train import _new_config
    from seg_ros.models import ModelSpec, read_spec, save_checkpoint
    from seg_ros.training import build_network, write_model_card
    from seg_ros.training.loop import _param_groups

    cfg, result = trained
    state = load_training_checkpoint(result.best_checkpoint)
    network = build_network(cfg.resolved())
    network.load_state_dict(state["model"])
    fitted = {"gaussian_sxy": 2.0, "gaussian_weight": 2.5, "bilateral_weight": 4.5}
    earlier = {"epochs": 7, "steps": 21, "batch_size": 4, "lr": 0.001, "split": "new-drive"}
    earlier.update(train_seconds=120, pretrained_backbone="a planted backbone credit")
    spec = ModelSpec(
        name="tiny",
        family=MODEL,
        options=dict(OPTIONS),
        num_classes=11,
        class_table="camvid",
        metrics={"training": earlier},
    )
    weights = save_checkpoint(tmp_path / "tiny.safetensors", network, replace(spec, crf=fitted))
    args = _parser().parse_args(
        ["train", "--init-weights", str(weights), "--crf-rnn", "--data", str(data_root)]
        + ["--size", "64x96", "--batch-size", "4", "--limit-train", "4", "--threads", "1"]
        + ["--epochs", "1", "--lr", "1e-2", "--output", str(tmp_path / "ft")]
    )
    tuned_cfg = _new_config(args)
    assert tuned_cfg.model == MODEL and tuned_cfg.model_options["crf_rnn"] is True
    first = build_network(tuned_cfg.resolved())
    x = torch.randn(1, 3, *FIT_SIZE)
    with torch.no_grad():  # the network inside the layer is the saved one
        torch.testing.assert_close(first.network.eval()(x), network.eval()(x))
    assert first.crf.kernel_widths[0] == 2.0
    assert first.crf.kernel_weights[0].tolist() == [2.5] * 11
    assert first.crf.kernel_weights[1].tolist() == [4.5] * 11
    decayed = {id(p) for p in _param_groups(first, 1e-4)[0]["params"]}
    assert not decayed & {id(p) for p in first.crf.parameters()}
    before = {k: v.clone() for k, v in first.crf.state_dict().items()}
    assert args.func(args) == 0
    after = load_training_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    changed = [k for k in before if not torch.equal(before[k], after[f"crf.{k}"])]
    assert "compatibility" in changed  # gradients reached the CRF's learned parameters
    # The run keeps what it started from, so the card credits it after the file is gone.
    weights.unlink()
    bundled = tmp_path / "tuned.safetensors"
    export_bundled(tmp_path / "ft" / "last.pt", bundled, evaluate_val=False, precise_bn=0)
    recipe = read_spec(bundled).metrics["training"]
    assert recipe["started_from"] == {"name": "tiny", "training": earlier}
    assert recipe["pretrained_backbone"] == "a planted backbone credit"
    card = write_model_card(bundled, []).read_text()
    assert (
        "fine-tuned from the seg_ros weights tiny, which were trained 7 epochs (21 steps of "
        "batch 4, lr 0.001, 2 min) on split `new-drive` and started from: pretrained backbone: "
        "a planted backbone credit" in card
    )


def test_cpu_latency_of_bundled_weights(trained, tmp_path):
    """The model card's latency path on the PyTorch backend (ONNX export: the backends' tests)."""
    from seg_ros.training import measure_cpu_latency

    _, result = trained
    path = tmp_path / "tiny.safetensors"
    export_bundled(result.best_checkpoint, path, evaluate_val=False)
    image = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    latency = measure_cpu_latency(path, image, backend="torch", threads=1, frames=2)
    assert latency["backend"].startswith("torch") and latency["image"] == "72x100"  # HxW
    assert latency["frames"] == 2 and latency["cpu"] and latency["precision"] == "fp32"
    assert (
        0
        < latency["inference_ms_median"]
        <= latency["pipeline_ms_median"]
        <= latency["pipeline_ms_p90"] * 1.001
    )


def test_model_card_shows_int8_figures_and_latency_by_precision(trained, tmp_path):
    """scripts/int8_table.py --write-cards stores metrics["int8"]; the card renders it."""
    from seg_ros.models import load_model, save_checkpoint
    from seg_ros.training import write_model_card

    _, result = trained
    path = tmp_path / "tiny.safetensors"
    export_bundled(result.best_checkpoint, path, evaluate_val=False)
    loaded = load_model(weights=str(path))
    assert "## INT8" not in write_model_card(path, []).read_text()
    loaded.spec.metrics["int8"] = {
        "fp32_ms": 83.2,
        "int8_ms": 46.0,
        "speedup": 1.81,
        "labels_unchanged": 0.957,
        "fp32_miou": 0.471,
        "int8_miou": 0.468,
        "scored_on": "CamVid drive 0006R0 (101 frames)",
        "scored_weights": "nd.safetensors",
        "profile": "cpu",
    }
    save_checkpoint(path, loaded.module, loaded.spec, half=True)
    rows = [
        {
            "backend": "onnxruntime:CPUExecutionProvider",
            "precision": precision,
            "threads": 2,
            "image": "72x100",
            "pipeline_ms_median": ms,
            "pipeline_ms_p90": ms + 1,
            "inference_ms_median": ms - 1,
            "frames": 20,
            "cpu": "AMD EPYC",
        }
        for precision, ms in (("fp32", 80.0), ("int8", 45.0))
    ]
    card = write_model_card(path, rows).read_text()
    assert "## INT8 (ONNX Runtime on the CPU, the shipped calibration table)" in card
    assert "fp32 83.2 ms, int8 46.0 ms (**1.81x**)" in card
    assert "mIoU fp32 47.1, int8 **46.8**; 95.7 % of labels unchanged" in card
    assert "weights scored: nd.safetensors" in card
    assert "| onnxruntime:CPUExecutionProvider | int8 | 2 | AMD EPYC | 45.0 | 46.0 | 44.0 |" in (
        card
    )


def test_cpu_name_says_the_vector_extension_speed_hangs_on(monkeypatch):
    """Two "AMD EPYC" machines differ 2-3x with or without AVX-512 VNNI: the card says which."""
    from seg_ros.training import device

    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert device.cpu_name().endswith(", AVX-512 VNNI")
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx2"})
    assert device.cpu_name().endswith(", AVX2")
    monkeypatch.setattr(device, "_cpu_flags", set)
    assert "," not in device.cpu_name()


def test_cards_name_the_arithmetic_the_run_used_not_the_one_asked_for(monkeypatch):
    """--amp on a CPU without bf16 trains in fp32, and the card must say fp32."""
    from seg_ros.training import card, device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx2"})
    assert device.precision_name(device.autocast_dtype(cpu, True)) == "fp32"
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert device.precision_name(device.autocast_dtype(cpu, True)) == "bf16 autocast"
    assert device.precision_name(device.autocast_dtype(cpu, False)) == "fp32"
    assert card._precision({"amp": True, "precision": "fp32"}) == "fp32"
    # Weights bundled before the precision was recorded only know what was asked for.
    assert card._precision({"amp": True}).startswith("mixed precision requested")
    assert card._precision({"amp": False}) == "fp32"


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
