"""The training loop: epochs over a shuffled order, AdamW, poly schedule, EMA, validation, resume.

Everything that decides the next step is in last.pt (weights, optimiser,
scaler, EMA, RNG, the epoch's data order and the position in it), so an
interrupted run resumed with ``--resume`` takes exactly the steps it would
have taken, and ``--resume --epochs N`` extends a finished one.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_ros.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    split_pairs,
)
from seg_ros.training.checkpoints import (
    check_resume_compatible,
    load_training_checkpoint,
    save_training_checkpoint,
)
from seg_ros.training.config import TrainConfig
from seg_ros.training.device import autocast_dtype, memory_format, pick_device, precision_name
from seg_ros.training.ema import ModelEma
from seg_ros.training.evaluation import evaluate, recalibrate_batchnorm, tqdm_interval
from seg_ros.training.loss import SegmentationLoss, class_weights
from seg_ros.training.schedule import learning_rate

LOG = logging.getLogger("seg_ros.training")


@dataclass
class TrainResult:
    """What a call to `train` did; the checkpoints hold the rest."""

    best_miou: float
    best_checkpoint: Path
    last_checkpoint: Path
    steps: int
    epochs_done: int
    stopped_by_time_limit: bool
    history: list[dict]
    interrupted: bool = False


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """Build the run's network: from --init-weights, or new (with local backbone weights)."""
    from seg_ros.models import build_model, load_model

    options = dict(cfg.model_options)
    if cfg.init_weights:
        # A network trained without the CRF-as-RNN layer gets one that starts as its fitted
        # post-hoc CRF (seg_ros.models.crf_rnn).
        loaded = load_model(cfg.model, cfg.init_weights, cfg.num_classes, **options)
        return loaded.module.train()
    if cfg.pretrained_backbone:
        if not Path(cfg.pretrained_backbone).is_file():
            raise FileNotFoundError(f"backbone weights {cfg.pretrained_backbone} do not exist")
        options["pretrained_backbone"] = cfg.pretrained_backbone
    return build_model(cfg.model, cfg.num_classes, **options)


def init_lineage(init_weights: str) -> dict:
    """Return the --init-weights' name and recipe.

    The run keeps them so that its model card credits them (and their pretrained backbone)
    even after the file is replaced by the fine-tune's bundle.
    """
    if not init_weights:
        return {}
    from seg_ros.models.checkpoint import read_spec, resolve_weights_path

    spec = read_spec(resolve_weights_path(init_weights))
    return {"name": spec.name, "training": dict(spec.metrics.get("training") or {})}


def augmentation(cfg: TrainConfig):
    """Make the run's training augmentation (for the loop and the export's precise BN)."""
    from seg_ros.datasets import Augmentation

    return Augmentation(
        crop=tuple(cfg.crop),
        scale_range=tuple(cfg.scale_range),
        jitter=cfg.jitter,
        gamma=cfg.gamma,
        hue=cfg.hue,
        blur=cfg.blur,
        noise=cfg.noise,
        copy_paste=cfg.copy_paste,
    )


def datasets(cfg: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """Training set (augmented) and validation set (None for the "all" split) of a resolved cfg."""
    train_pairs, val_pairs = split_pairs(cfg.dataset, cfg.data, cfg.split)
    train_pairs = train_pairs[: cfg.limit_train or None]
    val_pairs = val_pairs[: cfg.limit_val or None]
    common = dict(
        num_classes=cfg.num_classes,
        ignore_index=cfg.ignore_index,
        size=cfg.size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    train_set = SegmentationDataset(
        train_pairs, augment=augmentation(cfg), seed=cfg.seed, **common
    )
    return train_set, (SegmentationDataset(val_pairs, **common) if val_pairs else None)


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Cut the epoch's seeded shuffle into full batches (the rest is dropped): its data order."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    full = count // batch_size * batch_size
    return order[:full].view(-1, batch_size).tolist()


@contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a request the loop honours between steps (a whole step is saved).

    Yields a dict whose "stop" becomes True on a signal; outside the main thread, where
    handlers cannot be installed, it stays False and the signals keep their usual effect.
    """
    request = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _param_groups(
    module: torch.nn.Module, weight_decay: float, backbone_lr: float = 1.0
) -> list[dict]:
    """Split parameters into AdamW groups by weight decay and learning rate.

    No weight decay on norms, biases (1-D) and the CRF-as-RNN layer's parameters; the encoder
    (`module.backbone`) at `backbone_lr` times the schedule's rate (its own groups only when
    that differs from 1, so older runs' optimiser states still load).

    The CRF's kernel weights and label compatibility are a model of the scene, not filters:
    decaying them pulls the CRF towards doing nothing. A slower encoder keeps more of what a
    pretrained backbone learnt on other streets.
    """
    from seg_ros.crf.layer import CrfRnn

    crf = {id(p) for m in module.modules() if isinstance(m, CrfRnn) for p in m.parameters()}
    backbone = getattr(module, "backbone", None)
    split_encoder = backbone is not None and backbone_lr != 1.0
    in_backbone = {id(p) for p in backbone.parameters()} if split_encoder else set()
    groups: dict[tuple[bool, bool], list] = {}
    for param in module.parameters():
        if param.requires_grad:
            decays = param.ndim > 1 and id(param) not in crf
            groups.setdefault((decays, id(param) in in_backbone), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": backbone_lr if encoder else 1.0,
        }
        for (decays, encoder), params in sorted(groups.items(), reverse=True)
    ]


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume, or extend) training; return the best validation mIoU and checkpoints."""
    cfg = cfg.resolved()
    started = time.monotonic()
    saved = load_training_checkpoint(cfg.resume) if cfg.resume else None
    if saved is not None:
        check_resume_compatible(saved["config"], cfg, cfg.resume)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.amp)
    use_scaler = amp_dtype == torch.float16
    layout = memory_format(device, amp_dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    last_path, best_path = output / "last.pt", output / "best.pt"

    train_set, val_set = datasets(cfg)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}"
        )
    if val_set is None:
        LOG.info("split %s has no validation: best.pt is the latest model", cfg.split)
    train_set.preload()

    module = build_network(cfg).to(device, memory_format=layout)
    started_from = saved.get("started_from", {}) if saved else init_lineage(cfg.init_weights)
    optimizer = torch.optim.AdamW(
        _param_groups(module, cfg.weight_decay, cfg.backbone_lr), lr=cfg.lr
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    ema = ModelEma(module, cfg.ema) if cfg.ema else None
    step = epoch = position = 0
    epoch_losses: list[float] = []
    best_miou, best_metrics, history, train_seconds = -1.0, {}, [], 0.0
    if saved is not None:
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if use_scaler and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if ema is not None and saved.get("ema"):
            ema.load_state_dict(saved["ema"])
        step, epoch, position = saved["step"], saved["epoch"], saved.get("position", 0)
        epoch_losses = list(saved.get("epoch_losses", []))
        best_miou, best_metrics = saved["best_miou"], saved["best_metrics"]
        history, train_seconds = list(saved["history"]), saved["train_seconds"]
        weights = np.asarray(saved["class_weights"], np.float32)
        if "rng" in saved:
            torch.set_rng_state(saved["rng"])
        LOG.info("resumed %s at epoch %d step %d", cfg.resume, epoch, step)
    else:
        weights = class_weights(train_set, cfg.class_weighting)
    criterion = SegmentationLoss(weights, cfg.ohem).to(device)
    total_steps = cfg.epochs * steps_per_epoch

    def elapsed() -> float:
        return train_seconds + time.monotonic() - started

    def eval_module() -> torch.nn.Module:
        """Copy the weights validation uses: the EMA (or the raw weights), with precise BN."""
        network = copy.deepcopy(ema.module if ema is not None else module)
        recalibrate_batchnorm(
            network,
            train_set,
            device,
            batches=cfg.precise_bn,
            batch_size=cfg.batch_size,
            amp_dtype=amp_dtype,
            seed=cfg.seed + step,
        )
        return network.eval()

    def save_last() -> None:
        save_training_checkpoint(
            last_path,
            {
                "config": cfg.plain(),
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else {},
                "ema": ema.state_dict() if ema is not None else {},
                "rng": torch.get_rng_state(),
                "step": step,
                "epoch": epoch,
                "position": position,
                "epoch_losses": epoch_losses,
                "total_steps": total_steps,
                "best_miou": best_miou,
                "best_metrics": best_metrics,
                "history": history,
                "class_weights": [float(w) for w in weights],
                "train_seconds": elapsed(),
                "precision": precision_name(amp_dtype),
                "started_from": started_from,
            },
        )

    def save_best(network: torch.nn.Module, metrics: dict) -> None:
        save_training_checkpoint(
            best_path,
            {
                "config": cfg.plain(),
                "model": network.state_dict(),
                "step": step,
                "epoch": epoch,
                "best_miou": best_miou,
                "best_metrics": metrics,
                "selected_on_val": val_set is not None,
                "class_weights": [float(w) for w in weights],
                "train_seconds": elapsed(),
                "precision": precision_name(amp_dtype),
                "started_from": started_from,
            },
        )

    def validate() -> dict:
        nonlocal best_miou, best_metrics
        t0 = time.monotonic()
        network = eval_module()
        if val_set is None:
            save_best(network, {})
            return {}
        result = evaluate(network, val_set, device, amp_dtype=amp_dtype)
        result["seconds"] = time.monotonic() - t0
        if result["miou"] > best_miou:
            best_miou, best_metrics = result["miou"], result
            save_best(network, result)
        return result

    limit_s = cfg.time_limit_min * 60.0
    val_estimate_s = step_seconds = 0.0
    stopped = interrupted = False
    saved_at = time.monotonic()
    log_file = (output / "history.jsonl").open("a")
    LOG.info(
        "training %s on %d images of split %s (%d steps/epoch, %d steps in all) on %s, %s",
        cfg.name,
        len(train_set),
        cfg.split,
        steps_per_epoch,
        total_steps,
        device,
        f"autocast {amp_dtype}" if amp_dtype else "fp32",
    )
    with stop_requests() as request:
        while step < total_steps and not stopped:
            module.train()
            train_set.epoch = epoch
            batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch)
            loader = DataLoader(
                train_set,
                batch_sampler=batches[position:],
                num_workers=cfg.workers,
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
                pin_memory=device.type == "cuda",
            )
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                total=len(batches),
                initial=position,
                leave=False,
                mininterval=tqdm_interval(),
            )
            try:
                for images, labels in bar:
                    t0 = time.monotonic()
                    lr = learning_rate(cfg.lr, step, total_steps, cfg.poly_power)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    images = images.to(device, non_blocking=True, memory_format=layout)
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast(
                        device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                    ):
                        loss = criterion(module(images).float(), labels)
                    if not torch.isfinite(loss):
                        raise RuntimeError(
                            f"the loss became {loss.item()} at step {step}: lower --lr"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    if ema is not None:
                        ema.update(module)
                    step += 1
                    position += 1
                    epoch_losses.append(loss.item())
                    bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
                    seconds = time.monotonic() - t0
                    step_seconds = 0.9 * step_seconds + 0.1 * seconds if step_seconds else seconds
                    if (
                        cfg.save_every_min
                        and time.monotonic() - saved_at > 60 * cfg.save_every_min
                    ):
                        save_last()
                        saved_at = time.monotonic()
                    if request["stop"]:
                        stopped = interrupted = True
                        break
                    spent = time.monotonic() - started
                    if limit_s and spent + step_seconds + 1.2 * val_estimate_s + 10 > limit_s:
                        stopped = True
                        break
            except KeyboardInterrupt:
                stopped = interrupted = True
            bar.close()
            if position >= len(batches):
                epoch, position = epoch + 1, 0
                entry = {
                    "epoch": epoch,
                    "step": step,
                    "lr": learning_rate(cfg.lr, step, total_steps, cfg.poly_power),
                    "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                    "elapsed_s": round(elapsed(), 1),
                }
                epoch_losses = []
                if step >= total_steps or epoch % cfg.val_every == 0:
                    result = validate()
                    val_estimate_s = result.get("seconds", 0.0)
                    entry.update({f"val_{k}": v for k, v in result.items() if k != "seconds"})
                history.append(entry)
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                LOG.info(
                    "epoch %d step %d/%d lr %.2e loss %s val mIoU %s (best %.4f) %.0f s",
                    epoch,
                    step,
                    total_steps,
                    entry["lr"],
                    "-" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}",
                    f"{entry['val_miou']:.4f}" if "val_miou" in entry else "-",
                    best_miou,
                    entry["elapsed_s"],
                )
            save_last()
    log_file.close()
    if stopped:
        LOG.info(
            "%s after step %d/%d; continue with --resume %s",
            "interrupted" if interrupted else f"stopped at the {cfg.time_limit_min:g}-min limit",
            step,
            total_steps,
            last_path,
        )
    if not best_path.is_file() and not interrupted:
        validate()  # nothing validated yet (0 epochs, or stopped in the first one)
    return TrainResult(
        best_miou,
        best_path,
        last_path,
        step,
        epoch,
        stopped and not interrupted,
        history,
        interrupted,
    )
