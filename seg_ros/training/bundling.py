"""Training checkpoint -> bundled weights: fp16 safetensors with the ModelSpec, scores, recipe."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from seg_ros.datasets import IMAGENET_MEAN, IMAGENET_STD, SPLITS
from seg_ros.training.checkpoints import load_training_checkpoint
from seg_ros.training.config import TrainConfig, from_plain
from seg_ros.training.device import cpu_name
from seg_ros.training.evaluation import evaluate, recalibrate_batchnorm
from seg_ros.training.loop import build_network, datasets, init_lineage

LOG = logging.getLogger("seg_ros.training")


def checkpoint_config(state: dict) -> TrainConfig:
    """Return the (resolved) TrainConfig a checkpoint was trained with."""
    return from_plain(state["config"])


def checkpoint_weights(state: dict) -> dict:
    """Pick the weights to ship: best.pt's evaluated ones, or last.pt's moving average."""
    ema = state.get("ema") or {}
    return ema.get("model") or state["model"]


def scores(result: dict, names: list[str], split: str) -> dict:
    """Round evaluate()'s fractions, name the classes, label them with the split."""
    return {
        "split": split,
        "description": SPLITS.get(split, split),
        "miou": round(result["miou"], 4),
        "pixel_accuracy": round(result["pixel_accuracy"], 4),
        "mean_class_accuracy": round(result["mean_class_accuracy"], 4),
        "per_class_iou": {
            n: (None if v is None else round(v, 4)) for n, v in zip(names, result["per_class_iou"])
        },
    }


def recipe_split(source: str | Path) -> str:
    """Name the split another run of the recipe was validated on: its best.pt, or its bundle."""
    if Path(source).suffix == ".safetensors":
        from seg_ros.models import read_spec

        return read_spec(source).metrics.get("headline_split", "val")
    return checkpoint_config(load_training_checkpoint(source)).split


def recipe_scores(source: str | Path, names: list[str]) -> dict:
    """Read another run of the recipe's validation scores (e.g. new-drive).

    ``source`` is that run's best.pt, or the weights bundled from it (their metadata keep the
    scores measured on the weights as shipped), so a run whose checkpoints are gone still counts.
    """
    if Path(source).suffix == ".safetensors":
        from seg_ros.models import read_spec

        metrics = read_spec(source).metrics
        entry = (metrics.get("evaluations") or {}).get(metrics.get("headline_split", ""))
        if not entry:
            raise ValueError(f"{source} holds no validation scores")
        training = metrics.get("training") or {}
        return dict(
            entry, weights=str(source), epochs=training.get("epochs"), steps=training.get("steps")
        )
    state = load_training_checkpoint(source)
    split = checkpoint_config(state).split
    if not state.get("best_metrics"):
        raise ValueError(f"{source} holds no validation scores (split {split})")
    entry = scores(state["best_metrics"], names, split)
    entry.update(checkpoint=str(source), epochs=state["epoch"], steps=state["step"])
    return entry


def pretrained_credit(backbone: str, path: str) -> str:
    """Say where a run's pretrained backbone came from, with the credit its licence asks for."""
    if not path:
        return ""
    if backbone == "espnet_c":
        from seg_ros.models.espnet import PRETRAINED_CREDIT

        return f"{PRETRAINED_CREDIT} (file {Path(path).name})"
    return f"local ImageNet weights {Path(path).name}"


def export_bundled(
    checkpoint: str | Path,
    path: str | Path,
    *,
    half: bool = True,
    evaluate_val: bool = True,
    precise_bn: int | None = None,
    recipe_runs: dict | None = None,
    ablation: list | None = None,
    extra_metrics: dict | None = None,
    name: str = "",
):
    """Write a training checkpoint as bundled weights: safetensors + ModelSpec, scores, recipe.

    BatchNorm statistics are first re-estimated in fp32 on ``precise_bn``
    augmented training batches (None: the run's setting). With
    ``evaluate_val`` (and a validation set in the run's split) the scores are
    measured again in fp32 on the weights as shipped (fp16-rounded when
    ``half``). ``recipe_runs`` ({split: best.pt of another run of the same
    recipe, or the weights bundled from it}) adds those runs' scores, e.g. the
    new-drive figure of a model bundled from the "all" split; the headline
    ``val_*`` keys are the new-drive figure when there is one. ``ablation``
    rows go to the card.
    """
    from seg_ros.classes import load_class_table
    from seg_ros.models import ModelSpec, save_checkpoint

    state = load_training_checkpoint(checkpoint)
    cfg = checkpoint_config(state)
    # Runs from before the lineage was kept: the --init-weights file, which must not have been
    # replaced by this run's own bundle yet.
    started_from = state.get("started_from") or init_lineage(cfg.init_weights)
    cfg.pretrained_backbone = cfg.init_weights = ""  # the weights already hold them
    module = build_network(cfg)
    module.load_state_dict(checkpoint_weights(state))
    batches = cfg.precise_bn if precise_bn is None else precise_bn
    train_set, val_set = datasets(cfg) if batches > 0 or evaluate_val else (None, None)
    if batches > 0:
        recalibrate_batchnorm(
            module,
            train_set,
            torch.device("cpu"),
            batches=batches,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
    if half:
        module.half().float()  # exactly what load_model will give users
    module.eval()
    names = (
        load_class_table(cfg.class_table).names
        if cfg.class_table
        else [str(i) for i in range(cfg.num_classes)]
    )
    evaluations = {}
    best = state.get("best_metrics") or {}
    if evaluate_val and best and val_set is not None:
        best = evaluate(module, val_set, torch.device("cpu"))
    if best:
        evaluations[cfg.split] = scores(best, names, cfg.split)
    for split, run in (recipe_runs or {}).items():
        evaluations[split] = recipe_scores(run, names)
    metrics: dict = {"evaluations": evaluations}
    headline = evaluations.get("new-drive") or evaluations.get(cfg.split)
    if headline:
        metrics.update(
            headline_split=headline["split"],
            val_miou=headline["miou"],
            val_pixel_accuracy=headline["pixel_accuracy"],
            val_mean_class_accuracy=headline["mean_class_accuracy"],
            val_per_class_iou=headline["per_class_iou"],
        )
    if ablation:
        metrics["ablation"] = list(ablation)
    metrics["training"] = {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "training_images": len(train_set) if train_set is not None else None,
        "epochs": state["epoch"],
        "steps": state["step"],
        "batch_size": cfg.batch_size,
        "size": list(cfg.size),
        "crop": list(cfg.crop),
        "scale_range": list(cfg.scale_range),
        "flip": True,
        "photometric": {
            "jitter": cfg.jitter,
            "gamma": cfg.gamma,
            "hue": cfg.hue,
            "blur": cfg.blur,
            "noise": cfg.noise,
        },
        "copy_paste": cfg.copy_paste,
        "lr": cfg.lr,
        "backbone_lr": cfg.backbone_lr,
        "optimizer": "AdamW",
        "schedule": f"poly {cfg.poly_power} over {cfg.epochs} epochs",
        "weight_decay": cfg.weight_decay,
        "class_weighting": cfg.class_weighting,
        "class_weights": [round(float(w), 3) for w in state["class_weights"]],
        "ohem": cfg.ohem,
        "ema": cfg.ema,
        "time_limit_min": cfg.time_limit_min,
        "train_seconds": round(state["train_seconds"]),
        "threads": cfg.threads,
        "cpu": cpu_name(),  # where it was bundled, which is where seg_ros train ran
        "amp": cfg.amp,
        # what autocast did on the machine that trained (--amp is only a request)
        "precision": state.get("precision", ""),
        "precise_bn_batches": batches,
        # best.pt: chosen by validation mIoU; last.pt or the "all" split: the run's end
        "selected_on_val": bool(state.get("selected_on_val")),
        "pretrained_backbone": started_from.get("training", {}).get("pretrained_backbone")
        or pretrained_credit(
            cfg.model_options.get("backbone", ""), state["config"].get("pretrained_backbone", "")
        ),
        "init_weights": Path(state["config"].get("init_weights") or "").name,
        "started_from": started_from,
    }
    metrics.update(extra_metrics or {})
    spec = ModelSpec(
        name=name or cfg.name,  # a run's name, or the one it is bundled under
        family=cfg.model,
        options=dict(cfg.model_options),
        num_classes=cfg.num_classes,
        class_table=cfg.class_table,
        input_height=cfg.size[0],
        input_width=cfg.size[1],
        mean=tuple(IMAGENET_MEAN),
        std=tuple(IMAGENET_STD),
        metrics=metrics,
    )
    save_checkpoint(path, module, spec, half=half)
    return spec


def bundle(
    checkpoint: str | Path,
    path: str | Path,
    *,
    latency_frames: int = 20,
    threads: int = 2,
    precise_bn: int | None = None,
    recipe_runs: dict | None = None,
    ablation: list | None = None,
    notes: str = "",
    name: str = "",
) -> Path:
    """export_bundled + CPU latency (ONNX Runtime, eager PyTorch) in the spec + the model card."""
    from seg_ros.datasets import read_rgb, split_pairs
    from seg_ros.models import load_model, save_checkpoint
    from seg_ros.training.card import write_model_card
    from seg_ros.training.latency import measure_cpu_latency

    path = Path(path)
    export_bundled(
        checkpoint,
        path,
        precise_bn=precise_bn,
        recipe_runs=recipe_runs,
        ablation=ablation,
        name=name,
    )
    cfg = checkpoint_config(load_training_checkpoint(checkpoint))
    try:
        train_pairs, val_pairs = split_pairs(cfg.dataset, cfg.data, cfg.split)
        image = read_rgb((val_pairs or train_pairs)[0][0])
    except (FileNotFoundError, ValueError):
        image = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    latencies = []
    for backend in ("onnxruntime", "torch") if latency_frames > 0 else ():
        latencies.append(
            measure_cpu_latency(
                path, image, backend=backend, threads=threads, frames=latency_frames
            )
        )
        LOG.info("latency %s", latencies[-1])
    loaded = load_model(weights=str(path))
    spec = loaded.spec
    spec.metrics["cpu_latency"] = latencies
    save_checkpoint(path, loaded.module, spec, half=True)
    return write_model_card(path, latencies, notes=notes)


def load_ablation(path: str | Path) -> list[dict]:
    """Ablation rows for the card: a JSON list of {"change": ..., "miou": ..., ...} objects."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "change" in r for r in rows):
        raise ValueError(f"{path}: expected a JSON list of objects with a 'change' key")
    return rows
