"""Training loop for the segmentation networks: the project ships weights it trained itself.

AdamW with a poly learning-rate schedule, median-frequency class balancing
with void ignored, mixed precision (fp16 on CUDA, bf16 on CPUs with native
bf16 such as AMX: 3-4x faster for dense convolutions), channels-last memory
layout, a wall-clock limit that stops cleanly (so a
run fits the time you have), resumable checkpoints (`last.pt`) and the best
validation model (`best.pt`), both plain tensors/numbers loaded with
``weights_only=True``. `export_bundled` turns a checkpoint into the fp16
safetensors file (with its ModelSpec and metrics) that `load_model` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_ros.datasets import (
    DATASET_KINDS,
    IGNORE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    SegmentationDataset,
    dataset_pairs,
    median_frequency_weights,
)

LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "seg_ros-train-1"


@dataclass
class TrainConfig:
    """One training run. Sizes are (height, width); `size` is the network size stored in the spec."""

    model: str
    model_options: dict = field(default_factory=dict)
    dataset: str = "camvid"
    data: str = ""
    num_classes: int = 0  # 0 = the dataset kind's count (required for folders)
    class_table: str = ""  # "" = the dataset kind's table
    ignore_index: int = -1  # void label in the files; -1 = the dataset kind's
    size: tuple[int, int] = (360, 480)
    crop: tuple[int, int] = (0, 0)  # (0, 0) = size
    scale_range: tuple[float, float] = (0.5, 1.0)
    jitter: float = 0.2
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    class_weighting: str = "median"  # median | none
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: bool = True  # mixed precision: fp16 on CUDA, bf16 on CPUs with native bf16
    time_limit_min: float = 0.0  # 0 = no limit
    val_every: int = 1  # epochs between validations
    precise_bn: int = (
        10  # training batches that re-estimate BatchNorm statistics before validation/export
    )
    output: str = "runs/train"
    resume: str = ""
    pretrained_backbone: str = ""
    seed: int = 0
    limit_train: int = 0  # use only the first N training pairs (quick checks); 0 = all
    limit_val: int = 0
    name: str = ""  # model name stored in the spec; "" = <model>_<dataset>

    def resolved(self) -> TrainConfig:
        """Fill the dataset-kind defaults and validate; raises ValueError with the reason."""
        if self.dataset not in DATASET_KINDS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}: expected one of {sorted(DATASET_KINDS)}"
            )
        info = DATASET_KINDS[self.dataset]
        cfg = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        cfg.num_classes = cfg.num_classes or info.num_classes
        if cfg.num_classes <= 0:
            raise ValueError(f"--num-classes is required for {self.dataset} data")
        cfg.class_table = cfg.class_table or info.class_table
        if cfg.ignore_index < 0:
            cfg.ignore_index = info.ignore_index
        cfg.size = tuple(int(v) for v in cfg.size)
        cfg.crop = tuple(int(v) for v in cfg.crop) if any(cfg.crop) else cfg.size
        cfg.scale_range = tuple(float(v) for v in cfg.scale_range)
        if not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
            raise ValueError(f"scale range {cfg.scale_range} must be 0 < low <= high")
        if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.val_every < 1:
            raise ValueError(
                "epochs >= 0, batch size >= 1, lr > 0 and val-every >= 1 are required"
            )
        if cfg.class_weighting not in ("median", "none"):
            raise ValueError(f"class weighting {cfg.class_weighting!r}: expected median or none")
        if not cfg.data:
            raise ValueError("--data DIR is required (the dataset's root folder)")
        cfg.name = cfg.name or f"{cfg.model}_{cfg.dataset}"
        return cfg

    def plain(self) -> dict:
        """JSON- and weights_only-safe form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class TrainResult:
    best_miou: float
    best_checkpoint: Path
    last_checkpoint: Path
    steps: int
    epochs_done: int
    stopped_by_time_limit: bool
    history: list[dict]


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """The poly schedule (DeepLab): base * (1 - step/total)^power, 0 at and after the end."""
    if total_steps <= 0:
        return base_lr
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 autocast speeds training up instead of emulating it."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision type for this device, or None for plain fp32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but CUDA is not available")
    return device


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict:
    """Predict each image at the dataset's network size, upsample to the label's resolution, score.

    Returns fractions: miou, per_class_iou (None for a class absent from labels and predictions),
    pixel_accuracy, mean_class_accuracy.
    """
    from seg_ros.evaluation import ConfusionMatrix

    module.eval()
    confusion = ConfusionMatrix(dataset.num_classes, ignore_index=IGNORE)
    for index in tqdm(
        range(len(dataset)),
        desc="validating",
        unit="img",
        leave=False,
        disable=not progress,
        mininterval=_tqdm_interval(),
    ):
        image, label = dataset[index]
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            logits = module(image[None].to(device, memory_format=torch.channels_last))
        logits = F.interpolate(
            logits.float(), size=label.shape, mode="bilinear", align_corners=False
        )
        pred = logits.argmax(1)[0].cpu().numpy()
        confusion.update(label.numpy(), pred)
    summary = confusion.summary()
    return {
        "miou": 0.0 if math.isnan(summary["miou"]) else summary["miou"],
        "per_class_iou": [None if math.isnan(v) else float(v) for v in summary["iou"]],
        "pixel_accuracy": summary["pixel_accuracy"],
        "mean_class_accuracy": summary["mean_class_accuracy"],
    }


@torch.no_grad()
def recalibrate_batchnorm(
    module: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    *,
    batches: int,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> None:
    """Precise BN: re-estimate every BatchNorm's running mean/var as a plain average over training batches.

    Short runs need it: with a small BN momentum (torchvision's MobileNetV3
    uses 0.01) the running statistics lag far behind weights that change
    fast, and eval-mode predictions collapse to one or two classes (seen here:
    DeepLab v3+ at 1 % val mIoU after two epochs, fine in train mode).
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    was_training = module.training
    module.train()
    loader = DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for index, (images, _) in enumerate(loader):
        if index >= batches:
            break
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            module(images.to(device, memory_format=torch.channels_last))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    module.train(was_training)


def _tqdm_interval() -> float:
    return 0.1 if sys.stderr.isatty() else 30.0


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    from seg_ros.models import build_model

    options = dict(cfg.model_options)
    if cfg.pretrained_backbone:
        if not Path(cfg.pretrained_backbone).is_file():
            raise FileNotFoundError(f"backbone weights {cfg.pretrained_backbone} do not exist")
        options["pretrained_backbone"] = cfg.pretrained_backbone
    return build_model(cfg.model, cfg.num_classes, **options)


def load_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train` (weights_only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or not a torch checkpoint
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a seg_ros training checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return state


def _check_resume_compatible(saved: dict, cfg: TrainConfig, path: str) -> None:
    for key in ("model", "model_options", "num_classes"):
        ours = cfg.plain()[key]
        if saved[key] != ours:
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved[key]!r}, not {ours!r}"
            )


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training; returns the best validation mIoU and the checkpoint paths."""
    cfg = cfg.resolved()
    started = time.monotonic()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.amp)
    use_scaler = amp_dtype == torch.float16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    last_path, best_path = output / "last.pt", output / "best.pt"

    augment = Augmentation(crop=cfg.crop, scale_range=cfg.scale_range, jitter=cfg.jitter)
    train_pairs = dataset_pairs(cfg.dataset, cfg.data, "train")
    if cfg.limit_train:
        train_pairs = train_pairs[: cfg.limit_train]
    if len(train_pairs) < cfg.batch_size:
        raise ValueError(
            f"{len(train_pairs)} training images are fewer than one batch of {cfg.batch_size}"
        )
    common = dict(
        num_classes=cfg.num_classes,
        ignore_index=cfg.ignore_index,
        size=cfg.size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    train_set = SegmentationDataset(train_pairs, augment=augment, seed=cfg.seed, **common)
    try:
        val_pairs = dataset_pairs(cfg.dataset, cfg.data, "val")
    except (FileNotFoundError, ValueError):
        val_pairs = []
        LOG.warning(
            "no validation split in %s: best.pt will be the last model, with no mIoU", cfg.data
        )
    if cfg.limit_val:
        val_pairs = val_pairs[: cfg.limit_val]
    val_set = SegmentationDataset(val_pairs, **common) if val_pairs else None
    train_set.preload()

    module = build_network(cfg).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(_param_groups(module, cfg.weight_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    step, epoch, best_miou, history, train_seconds = 0, 0, -1.0, [], 0.0
    time_progress0 = 0.0  # share of the schedule a time-limited run before this one used up
    best_metrics: dict = {}
    class_weights = None
    if cfg.resume:
        state = load_training_checkpoint(cfg.resume)
        _check_resume_compatible(state["config"], cfg, cfg.resume)
        module.load_state_dict(state["model"])
        if "optimizer" not in state:
            raise ValueError(
                f"{cfg.resume} holds no optimizer state: resume from last.pt, not best.pt"
            )
        optimizer.load_state_dict(state["optimizer"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch = int(state["step"]), int(state["epoch"])
        best_miou, history = float(state["best_miou"]), list(state["history"])
        best_metrics, train_seconds = (
            dict(state.get("best_metrics", {})),
            float(state["train_seconds"]),
        )
        class_weights = state["class_weights"]
        time_progress0 = float(state.get("time_progress", 0.0))
        LOG.info(
            "resumed %s at epoch %d, step %d/%d (best val mIoU %.4f)",
            cfg.resume,
            epoch,
            step,
            total_steps,
            best_miou,
        )
    if class_weights is None:
        if cfg.class_weighting == "median":
            class_weights = torch.from_numpy(median_frequency_weights(train_set))
        else:
            class_weights = torch.ones(cfg.num_classes)
    LOG.info("class weights: %s", np.array2string(class_weights.numpy(), precision=2))
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights.to(device), ignore_index=IGNORE)

    def save(path: Path, *, with_optimizer: bool, metrics: dict) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": cfg.plain(),
            "model": module.state_dict(),
            "step": step,
            "epoch": epoch,
            "total_steps": total_steps,
            "best_miou": best_miou,
            "best_metrics": metrics,
            "history": history,
            "class_weights": class_weights,
            "train_seconds": train_seconds + time.monotonic() - started,
            "time_progress": time_progress(),
        }
        if with_optimizer:
            state["optimizer"] = optimizer.state_dict()
            state["scaler"] = scaler.state_dict() if use_scaler else {}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def validate() -> dict:
        nonlocal best_miou, best_metrics
        if val_set is None:
            save(best_path, with_optimizer=False, metrics={})
            return {}
        t0 = time.monotonic()
        recalibrate_batchnorm(
            module,
            train_set,
            device,
            batches=cfg.precise_bn,
            batch_size=cfg.batch_size,
            amp_dtype=amp_dtype,
            seed=cfg.seed + step,
        )
        result = evaluate(module, val_set, device, amp_dtype=amp_dtype)
        result["seconds"] = time.monotonic() - t0
        if result["miou"] > best_miou:
            best_miou, best_metrics = result["miou"], result
            save(best_path, with_optimizer=False, metrics=result)
        return result

    limit_s = cfg.time_limit_min * 60.0
    val_estimate_s = 0.0  # measured after the first validation

    def time_progress() -> float:
        """With a time limit, the share of the wall-time budget spent (after what earlier runs spent)."""
        if not limit_s:
            return time_progress0
        usable = max(limit_s - 1.2 * val_estimate_s - 10.0, 1.0)
        return min(
            1.0, time_progress0 + (1.0 - time_progress0) * (time.monotonic() - started) / usable
        )

    def current_lr() -> float:
        """Poly decay over the steps, or over the time limit when that comes first: the run always ends cooled."""
        progress = max(step / total_steps if total_steps else 1.0, time_progress())
        return cfg.lr * max(0.0, 1.0 - progress) ** cfg.poly_power

    step_seconds = 0.0
    stopped = False
    log_file = (output / "history.jsonl").open("a")
    LOG.info(
        "training %s on %d images (%d steps/epoch, %d steps in all) on %s, %s",
        cfg.name,
        len(train_set),
        steps_per_epoch,
        total_steps,
        device,
        f"autocast {amp_dtype}" if amp_dtype else "fp32",
    )
    while step < total_steps and not stopped:
        module.train()
        train_set.epoch = epoch
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.workers,
            generator=generator,
            pin_memory=device.type == "cuda",
        )
        losses = []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            mininterval=_tqdm_interval(),
        )
        for images, labels in bar:
            if step >= total_steps:
                break
            t0 = time.monotonic()
            lr = current_lr()
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(
                device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
            ):
                loss = criterion(module(images).float(), labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became {loss.item()} at step {step}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
            step_seconds = (
                0.9 * step_seconds + 0.1 * (time.monotonic() - t0)
                if step_seconds
                else time.monotonic() - t0
            )
            elapsed = time.monotonic() - started
            if limit_s and elapsed + step_seconds + 1.2 * val_estimate_s + 10 > limit_s:
                stopped = True
                break
        bar.close()
        if not stopped:
            epoch += 1
        finished = step >= total_steps
        entry = {
            "epoch": epoch,
            "step": step,
            "lr": current_lr(),
            "train_loss": float(np.mean(losses)) if losses else None,
            "elapsed_s": round(train_seconds + time.monotonic() - started, 1),
        }
        if stopped or finished or epoch % cfg.val_every == 0:
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
            f"{entry['train_loss']:.4f}" if losses else "-",
            f"{entry['val_miou']:.4f}" if "val_miou" in entry else "-",
            best_miou,
            entry["elapsed_s"],
        )
        save(last_path, with_optimizer=True, metrics=best_metrics)
    log_file.close()
    if stopped:
        LOG.info(
            "stopped at the %.0f-minute time limit after step %d/%d; resume with --resume %s",
            cfg.time_limit_min,
            step,
            total_steps,
            last_path,
        )
    if (
        not best_path.is_file()
    ):  # nothing trained (resumed a finished run, or 0 epochs): keep the model as is
        validate() if val_set is not None else save(best_path, with_optimizer=False, metrics={})
    return TrainResult(best_miou, best_path, last_path, step, epoch, stopped, history)


def _checkpoint_config(state: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in known})
    cfg.size, cfg.crop, cfg.scale_range = tuple(cfg.size), tuple(cfg.crop), tuple(cfg.scale_range)
    return cfg


def export_bundled(
    checkpoint: str | Path,
    path: str | Path,
    *,
    half: bool = True,
    evaluate_val: bool = True,
    precise_bn: int | None = None,
    extra_metrics: dict | None = None,
):
    """Write a training checkpoint as bundled weights: safetensors + ModelSpec with the val metrics and recipe.

    BatchNorm statistics are first re-estimated in fp32 on ``precise_bn``
    augmented training batches (None: the run's setting). With
    ``evaluate_val`` (and a val split) the metrics are measured again in fp32
    on the weights as shipped (fp16-rounded when ``half``), not copied from
    the (possibly bf16) validation during training.
    """
    from seg_ros.classes import load_class_table
    from seg_ros.models import ModelSpec, save_checkpoint

    state = load_training_checkpoint(checkpoint)
    cfg = _checkpoint_config(state)
    cfg.pretrained_backbone = ""  # the weights already hold it
    module = build_network(cfg)
    module.load_state_dict(state["model"])
    batches = cfg.precise_bn if precise_bn is None else precise_bn
    if batches > 0:
        pairs = dataset_pairs(cfg.dataset, cfg.data, "train")[: cfg.limit_train or None]
        train_set = SegmentationDataset(
            pairs,
            num_classes=cfg.num_classes,
            ignore_index=cfg.ignore_index,
            size=cfg.size,
            seed=cfg.seed,
            augment=Augmentation(crop=cfg.crop, scale_range=cfg.scale_range, jitter=cfg.jitter),
        )
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
    best = state.get("best_metrics") or {}
    if evaluate_val and best:
        val_set = SegmentationDataset(
            dataset_pairs(cfg.dataset, cfg.data, "val")[: cfg.limit_val or None],
            num_classes=cfg.num_classes,
            ignore_index=cfg.ignore_index,
            size=cfg.size,
        )
        best = evaluate(module, val_set, torch.device("cpu"))
    metrics: dict = {}
    if best:
        names = (
            load_class_table(cfg.class_table).names
            if cfg.class_table
            else [str(i) for i in range(cfg.num_classes)]
        )
        metrics = {
            "val_miou": round(best["miou"], 4),
            "val_pixel_accuracy": round(best["pixel_accuracy"], 4),
            "val_mean_class_accuracy": round(best["mean_class_accuracy"], 4),
            "val_per_class_iou": {
                n: (None if v is None else round(v, 4))
                for n, v in zip(names, best["per_class_iou"])
            },
        }
    metrics["training"] = {
        "dataset": cfg.dataset,
        "epochs": state["epoch"],
        "steps": state["step"],
        "batch_size": cfg.batch_size,
        "crop": list(cfg.crop),
        "scale_range": list(cfg.scale_range),
        "flip": True,
        "colour_jitter": cfg.jitter,
        "lr": cfg.lr,
        "optimizer": "AdamW",
        "schedule": f"poly {cfg.poly_power}",
        "weight_decay": cfg.weight_decay,
        "class_weighting": cfg.class_weighting,
        "class_weights": [round(float(w), 3) for w in state["class_weights"]],
        "time_limit_min": cfg.time_limit_min,
        "train_seconds": round(state["train_seconds"]),
        "threads": cfg.threads,
        "amp": cfg.amp,
        "precise_bn_batches": batches,
        "selected_on_val": "optimizer"
        not in state,  # best.pt: chosen by val mIoU; last.pt: the run's end "pretrained_backbone": bool(state["config"].get("pretrained_backbone")),
    }
    metrics.update(extra_metrics or {})
    spec = ModelSpec(
        name=cfg.name,
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


def measure_cpu_latency(
    weights: str | Path,
    image: np.ndarray,
    *,
    backend: str = "onnxruntime",
    threads: int = 2,
    frames: int = 20,
) -> dict:
    """Median and p90 milliseconds of the whole pipeline (and of inference alone) on one RGB frame."""
    from seg_ros.pipeline import PipelineConfig, build_pipeline

    from seg_ros.timing import time_calls

    built = build_pipeline(PipelineConfig(weights=str(weights), backend=backend, threads=threads))
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
        "threads": threads,
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "pipeline_ms_median": round(float(np.median(totals)), 1),
        "pipeline_ms_p90": round(float(np.percentile(totals, 90)), 1),
        "inference_ms_median": round(float(np.median(inference)), 1),
        "frames": frames,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(
                (
                    line.split(":", 1)[1].strip()
                    for line in handle
                    if line.startswith("model name")
                ),
                "CPU",
            )
    except OSError:
        return "CPU"


def write_model_card(weights: str | Path, latencies: list[dict], *, notes: str = "") -> Path:
    """models/<name>.md next to the weights: architecture, recipe, val scores per class, CPU latency."""
    from seg_ros.classes import load_class_table
    from seg_ros.models import build_model, read_spec, variant_name
    from seg_ros.models.checkpoint import file_sha256

    weights = Path(weights)
    spec = read_spec(weights)
    metrics, recipe = spec.metrics, spec.metrics.get("training", {})
    params = sum(
        p.numel() for p in build_model(spec.family, spec.num_classes, **spec.options).parameters()
    )
    lines = [
        f"# {spec.name}",
        "",
        f"`{weights.name}`: {variant_name(spec.family, spec.options)}, trained from scratch by `seg_ros train` on "
        f"{recipe.get('dataset', '?')} ({spec.num_classes} classes, class table `{spec.class_table}`).",
        "",
        "## Architecture",
        "",
        f"- family `{spec.family}`, options `{json.dumps(spec.options, sort_keys=True)}`",
        f"- {params / 1e6:.2f} M parameters; file {weights.stat().st_size / 2**20:.1f} MiB (fp16 safetensors), "
        f"sha256 `{file_sha256(weights)[:16]}…`",
        f"- network input {spec.input_width}x{spec.input_height} (width x height); the pipeline resizes any frame "
        "to it and the label back to the frame's size; ImageNet mean/std normalisation",
        "",
        "## Training",
        "",
        f"- data: the {recipe.get('dataset')} train split; "
        + (
            "the val split chose the best checkpoint and gives the scores below (so they are slightly optimistic)"
            if recipe.get("selected_on_val")
            else "this is the model at the end of the run (no checkpoint selection), so the val scores below are on "
            "images it never trained on nor was selected on"
        )
        + "; no test data was used.",
        f"- {recipe.get('epochs')} epochs, {recipe.get('steps')} steps of batch {recipe.get('batch_size')}; random "
        f"scale {recipe.get('scale_range')} of the network size, crop {recipe.get('crop')} (HxW), horizontal flip, "
        f"colour jitter {recipe.get('colour_jitter')}",
        f"- {recipe.get('optimizer')} lr {recipe.get('lr')}, weight decay {recipe.get('weight_decay')} (not on "
        f"norms/biases), {recipe.get('schedule')} schedule ending at the "
        + (
            f"{recipe['time_limit_min']:g}-minute time limit"
            if recipe.get("time_limit_min")
            else "last epoch"
        ),
        f"- loss: cross-entropy, void ignored, {recipe.get('class_weighting')}-frequency class weights "
        f"{recipe.get('class_weights')}",
        "- no ImageNet weights (none can be downloaded here): random initialisation"
        if not recipe.get("pretrained_backbone")
        else "- ImageNet backbone weights from a local file",
        f"- wall time {recipe.get('train_seconds', 0) / 60:.0f} min with {recipe.get('threads') or 'default'} torch "
        f"thread(s) on {_cpu_name()} ({os.cpu_count()} cores), "
        f"{'bf16 autocast' if recipe.get('amp') else 'fp32'}; no GPU",
        "",
        "## Validation scores",
        "",
        "fp32 inference with the fp16 weights as shipped, at the network size, upsampled to the 480x360 labels; "
        "void ignored.",
        "",
        f"- mIoU **{100 * metrics.get('val_miou', 0):.1f}**, pixel accuracy "
        f"{100 * metrics.get('val_pixel_accuracy', 0):.1f}, mean class accuracy "
        f"{100 * metrics.get('val_mean_class_accuracy', 0):.1f}",
        "",
        "| class | IoU |",
        "|---|---|",
    ]
    per_class = metrics.get("val_per_class_iou", {})
    order = load_class_table(spec.class_table).names if spec.class_table else sorted(per_class)
    for name in [n for n in order if n in per_class]:
        iou = per_class[name]
        lines.append(f"| {name} | {'n/a' if iou is None else f'{100 * iou:.1f}'} |")
    lines += ["", "## CPU latency", ""] + (
        ["Not measured."]
        if not latencies
        else [
            "Whole pipeline (resize, normalise, inference, argmax head, resize back) on a "
            f"{latencies[0]['image'] if latencies else ''} frame, median of {latencies[0]['frames'] if latencies else 0} "
            "after 3 warm-up frames (`seg_ros.training.measure_cpu_latency`).",
            "",
            "| backend | threads | pipeline median ms | p90 ms | inference median ms |",
            "|---|---|---|---|---|",
        ]
    )
    for entry in latencies:
        lines.append(
            f"| {entry['backend']} | {entry['threads']} | {entry['pipeline_ms_median']} | "
            f"{entry['pipeline_ms_p90']} | {entry['inference_ms_median']} |"
        )
    lines += [
        "",
        "## Use",
        "",
        f"`seg_ros segment --weights {weights.name} …`, or the node parameter `weights`; "
        f"`--model {spec.family}` alone picks these weights.",
        "",
        "Trained on CamVid (CC BY-NC 4.0, research use): check that licence before commercial use.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes, ""]
    card = weights.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card


def bundle(
    checkpoint: str | Path,
    path: str | Path,
    *,
    latency_frames: int = 20,
    threads: int = 2,
    precise_bn: int | None = None,
    notes: str = "",
) -> Path:
    """export_bundled + CPU latency (ONNX Runtime and eager PyTorch) stored in the spec + the model card."""
    from seg_ros.datasets import read_rgb
    from seg_ros.models import load_model, save_checkpoint

    path = Path(path)
    export_bundled(checkpoint, path, precise_bn=precise_bn)
    cfg = _checkpoint_config(load_training_checkpoint(checkpoint))
    try:
        image = read_rgb(dataset_pairs(cfg.dataset, cfg.data, "val")[0][0])
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
