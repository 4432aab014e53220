"""One training run's settings, validated, and their plain (JSON / weights_only) form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from seg_ros.datasets import DATASET_KINDS, SPLITS

CLASS_WEIGHTINGS = ("median", "sqrt", "none")


@dataclass
class TrainConfig:
    """One training run. Sizes are (height, width); `size` is the network size in the spec."""

    model: str
    model_options: dict = field(default_factory=dict)
    dataset: str = "camvid"
    data: str = ""
    split: str = "val"  # datasets.SPLITS: val | new-drive | all
    num_classes: int = 0  # 0 = the dataset kind's count (required for folders)
    class_table: str = ""  # "" = the dataset kind's table
    ignore_index: int = -1  # void label in the files; -1 = the dataset kind's
    size: tuple[int, int] = (360, 480)
    crop: tuple[int, int] = (0, 0)  # (0, 0) = size
    scale_range: tuple[float, float] = (0.5, 2.0)
    jitter: float = 0.3  # brightness, contrast, saturation
    gamma: float = 0.3
    hue: float = 8.0
    blur: float = 0.2
    noise: float = 6.0
    copy_paste: float = 0.0  # probability of pasting another image's rare-class pixels
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    backbone_lr: float = 1.0  # the encoder's learning rate as a fraction of lr (fine-tuning)
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    class_weighting: str = "sqrt"  # median | sqrt (of median) | none
    ohem: float = 0.0  # keep only the hardest fraction of pixels in the loss; 0 = all pixels
    ema: float = 0.999  # decay of the weights' moving average used for validation/export; 0 = off
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: bool = True  # mixed precision: fp16 on CUDA, bf16 on CPUs with native bf16
    time_limit_min: float = 0.0  # 0 = no limit; stops cleanly with a resumable last.pt
    save_every_min: float = 10.0  # also write last.pt mid-epoch this often (long epochs on a CPU)
    val_every: int = 1  # epochs between validations
    precise_bn: int = 10  # training batches that re-estimate BatchNorm statistics before eval
    output: str = "runs/train"
    resume: str = ""
    pretrained_backbone: str = ""
    init_weights: str = ""  # seg_ros weights (a file, or a bundled model's name) to start from
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
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}: expected one of {sorted(SPLITS)}")
        info = DATASET_KINDS[self.dataset]
        cfg = from_plain(self.plain())
        cfg.num_classes = cfg.num_classes or info.num_classes
        if cfg.num_classes <= 0:
            raise ValueError(f"--num-classes is required for {self.dataset} data")
        cfg.class_table = cfg.class_table or info.class_table
        if cfg.ignore_index < 0:
            cfg.ignore_index = info.ignore_index
        cfg.crop = cfg.crop if any(cfg.crop) else cfg.size
        if not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
            raise ValueError(f"scale range {cfg.scale_range} must be 0 < low <= high")
        if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.val_every < 1:
            raise ValueError(
                "epochs >= 0, batch size >= 1, lr > 0 and val-every >= 1 are required"
            )
        if not 0 <= cfg.copy_paste <= 1:
            raise ValueError(f"--copy-paste {cfg.copy_paste} must be in [0, 1]")
        if not 0 <= cfg.backbone_lr <= 1:
            raise ValueError(f"--backbone-lr {cfg.backbone_lr} must be in [0, 1]")
        if cfg.class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"class weighting {cfg.class_weighting!r}: expected one of {CLASS_WEIGHTINGS}"
            )
        if not 0 <= cfg.ohem < 1 or not 0 <= cfg.ema < 1:
            raise ValueError("--ohem and --ema must be in [0, 1)")
        if cfg.init_weights and cfg.pretrained_backbone:
            raise ValueError("--init-weights already holds a backbone: drop --pretrained-backbone")
        if not cfg.data:
            raise ValueError("--data DIR is required (the dataset's root folder)")
        cfg.name = cfg.name or f"{cfg.model}_{cfg.dataset}"
        return cfg

    def plain(self) -> dict:
        """JSON- and weights_only-safe form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def from_plain(values: dict) -> TrainConfig:
    """Rebuild a TrainConfig from its plain form; unknown keys (older runs) are dropped."""
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in known})
    cfg.size = tuple(int(v) for v in cfg.size)
    cfg.crop = tuple(int(v) for v in cfg.crop)
    cfg.scale_range = tuple(float(v) for v in cfg.scale_range)
    return cfg
