"""`seg_ros train`: train or fine-tune a network on CamVid, Cityscapes or image/label folders."""

from __future__ import annotations

import argparse

from seg_ros.commands.options import FAMILIES

EPILOG = """\
Splits (--split): val = train/ vs val/ (CamVid: the same drive 0016E5 on both
sides, so it measures memory of a drive); new-drive = train/ + val/ without
drive 0006R0 (367 frames) vs 0006R0 (101): use it for every choice; all =
the 468 train + val frames, a fixed schedule and no selection (bundled models).

Writes <output>/last.pt (resume with --resume), <output>/best.pt (best
validation mIoU of the EMA weights; for --split all: the latest)
and <output>/history.jsonl (one JSON line per epoch: epoch, step, lr, train_loss,
val_miou, val_per_class_iou, val_pixel_accuracy, val_mean_class_accuracy,
elapsed_s). --export-bundled writes best.pt as fp16 safetensors that
`--weights` (and models/ for bundled weights) accepts.

Data layouts: camvid: <data>/{train,val}/*.png + {train,val}annot/ (label 11 =
void); cityscapes: leftImg8bit/ + gtFine/*_labelTrainIds.png (255 = void);
folders: <data>/{train,val}/images/* + labels/<stem>.png (class index per pixel).

--resume RUN/last.pt continues a run with its own settings, exactly where it
stopped (Ctrl-C or --time-limit save it); only --epochs (a larger value
extends the schedule), --time-limit, --threads, --workers, --device,
--val-every and --save-every are taken from this command line.

Example (CPU):
  seg_ros train --model refinenet --backbone mobilenet_v2 --light-weight \\
      --data ../shared/datasets/camvid --split new-drive --epochs 200 --output runs/lw
  seg_ros train --resume runs/lw/last.pt --epochs 300     # extend it later
"""


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH (e.g. 0.5,1.0), got {text!r}"
        ) from None
    return low, high


def _size(text: str) -> tuple[int, int]:
    from seg_ros.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation network (CamVid, Cityscapes, folders)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=FAMILIES,
        help="network family (required unless --bundle, --resume or --init-weights)",
    )
    model.add_argument("--backbone", default=None, help="backbone (see `seg_ros segment --help`)")
    model.add_argument("--version", choices=("v3", "v3plus"), default=None, help="deeplab version")
    model.add_argument(
        "--output-stride", type=int, choices=(8, 16), default=None, help="deeplab output stride"
    )
    model.add_argument(
        "--light-weight",
        action="store_true",
        default=None,
        help="refinenet: Light-Weight RefineNet",
    )
    model.add_argument(
        "--variant", choices=("8s", "16s", "32s"), default=None, help="fcn: FCN-8s/16s/32s"
    )
    model.add_argument(
        "--crf-rnn",
        action="store_true",
        default=None,
        help="end the network in the CRF-as-RNN layer and train it end to end with the network",
    )
    model.add_argument(
        "--crf-rnn-iterations",
        type=int,
        default=None,
        help="mean-field iterations the CRF-as-RNN layer unrolls (default 5)",
    )
    model.add_argument(
        "--init-weights",
        default="",
        metavar="WEIGHTS",
        help="fine-tune: start from these seg_ros weights (.safetensors, or a bundled model's "
        "name); family, options and classes come from them. With --crf-rnn the new layer starts "
        "as the model's fitted post-hoc CRF",
    )
    model.add_argument(
        "--pretrained-backbone",
        default="",
        help="local ImageNet backbone weights (.pth/.safetensors)",
    )
    model.add_argument(
        "--name",
        default="",
        help="model name stored in the weights (default: <model>_<dataset>; --bundle: the run's)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=("camvid", "cityscapes", "folders"),
        default="camvid",
        help="data layout",
    )
    data.add_argument("--data", default="", help="dataset root folder (required unless --bundle)")
    data.add_argument(
        "--split",
        choices=("val", "new-drive", "all"),
        default="val",
        help="training/validation split (see below; default val)",
    )
    data.add_argument("--num-classes", type=int, default=0, help="classes (required for folders)")
    data.add_argument(
        "--class-table",
        default="",
        help="class table stored with the weights (default: dataset's)",
    )
    data.add_argument(
        "--ignore-index",
        type=int,
        default=-1,
        help="void label in the label files (default: dataset's)",
    )
    data.add_argument(
        "--size",
        type=_size,
        default=(360, 480),
        help="network size HxW: validation size and the size stored in the weights "
        "(default 360x480)",
    )
    data.add_argument(
        "--crop", type=_size, default=None, help="training crop HxW (default: --size)"
    )
    data.add_argument(
        "--scale-range",
        type=_pair,
        default=(0.5, 2.0),
        help="random scale LOW,HIGH relative to --size before cropping (default 0.5,2.0)",
    )
    photo = parser.add_argument_group("photometric augmentation (a new drive's camera; 0 = off)")
    photo.add_argument(
        "--jitter", type=float, default=0.3, help="brightness/contrast/saturation ±fraction"
    )
    photo.add_argument("--gamma", type=float, default=0.3, help="gamma in [1/(1+g), 1+g]")
    photo.add_argument("--hue", type=float, default=8.0, help="hue shift ±degrees")
    photo.add_argument("--blur", type=float, default=0.2, help="probability of a Gaussian blur")
    photo.add_argument(
        "--noise", type=float, default=6.0, help="max pixel noise standard deviation (0-255)"
    )
    data.add_argument(
        "--copy-paste",
        type=float,
        default=0.0,
        metavar="P",
        help="with probability P, paste another training image's rare-class pixels (classes "
        "rarer than the median class) into a training image before the geometry (default 0)",
    )
    data.add_argument(
        "--limit-train", type=int, default=0, help="use only the first N training images"
    )
    data.add_argument(
        "--limit-val", type=int, default=0, help="use only the first N validation images"
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (the poly schedule spans them all; default 100, or the resumed run's)",
    )
    opt.add_argument("--batch-size", type=int, default=8)
    opt.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW base learning rate (poly decay, power 0.9)"
    )
    opt.add_argument(
        "--backbone-lr",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="the encoder's learning rate as a fraction of --lr (e.g. 0.1 to fine-tune a "
        "pretrained backbone gently; default 1)",
    )
    opt.add_argument("--weight-decay", type=float, default=1e-4)
    opt.add_argument(
        "--class-weighting",
        choices=("median", "sqrt", "none"),
        default="sqrt",
        help="class balancing: median frequency (SegNet), its square root (default) or none",
    )
    opt.add_argument(
        "--ohem",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="train on the hardest FRACTION of pixels only (e.g. 0.25; 0: all pixels)",
    )
    opt.add_argument(
        "--ema",
        type=float,
        default=0.999,
        metavar="DECAY",
        help="moving average of the weights used for validation and export (0: off)",
    )
    opt.add_argument("--seed", type=int, default=0)

    runtime = parser.add_argument_group("run")
    runtime.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    runtime.add_argument(
        "--no-amp",
        action="store_true",
        help="train in plain fp32 (default: fp16 autocast on CUDA, bf16 on CPUs with native bf16)",
    )
    runtime.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default 0)"
    )
    runtime.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default 0: torch's)"
    )
    runtime.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="minutes of wall time, then stop with a resumable last.pt (0: no limit)",
    )
    runtime.add_argument(
        "--precise-bn",
        type=int,
        default=10,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches before each "
        "validation and export (0: keep the running averages)",
    )
    runtime.add_argument(
        "--val-every", type=int, default=None, help="epochs between validations (default 1)"
    )
    runtime.add_argument(
        "--save-every",
        type=float,
        default=None,
        metavar="MIN",
        help="also write last.pt mid-epoch every MIN minutes (0: at epoch ends only)",
    )
    runtime.add_argument("--output", default="", help="run folder (default: runs/<name>)")
    runtime.add_argument(
        "--resume", default="", help="continue from a last.pt checkpoint (schedule included)"
    )
    runtime.add_argument(
        "--export-bundled",
        default="",
        help="after training, write best.pt as fp16 safetensors with its spec, val metrics (fp32, "
        "re-measured) and CPU latency here, plus a model card (.md) beside it",
    )
    runtime.add_argument(
        "--latency-frames",
        type=int,
        default=20,
        help="frames timed per backend for the model card's CPU latency (0: skip)",
    )
    runtime.add_argument(
        "--recipe-run",
        action="append",
        default=[],
        metavar="RUN",
        help="with --export-bundled: also report this run's validation scores in the card "
        "(the best.pt of the same recipe on another split, e.g. new-drive, or the weights "
        "bundled from it); repeatable",
    )
    runtime.add_argument(
        "--ablation",
        default="",
        metavar="JSON",
        help="with --export-bundled: an ablation table for the card "
        '(a JSON list of {"change": ..., "miou": ...} rows)',
    )
    runtime.add_argument(
        "--bundle",
        default="",
        metavar="CHECKPOINT",
        help="do not train: write this checkpoint (e.g. runs/x/best.pt) to --export-bundled",
    )
    parser.set_defaults(func=run)


RESUME_OVERRIDES = (
    "time_limit_min",
    "threads",
    "workers",
    "device",
    "val_every",
    "save_every_min",
)


def _bundle(args, checkpoint) -> None:
    import logging

    from seg_ros.training import bundle, load_ablation
    from seg_ros.training.bundling import recipe_split

    runs = {recipe_split(run): run for run in args.recipe_run}
    card = bundle(
        checkpoint,
        args.export_bundled,
        latency_frames=args.latency_frames,
        recipe_runs=runs,
        ablation=load_ablation(args.ablation) if args.ablation else None,
        name=args.name,
    )
    logging.getLogger("seg_ros.train").info(
        "wrote %s and its model card %s", args.export_bundled, card
    )


def _resumed_config(args):
    """Take the resumed run's own settings, with the few a new command line may change."""
    from seg_ros.training import load_training_checkpoint
    from seg_ros.training.config import from_plain

    cfg = from_plain(load_training_checkpoint(args.resume)["config"])
    cfg.resume = args.resume
    if args.epochs is not None:
        cfg.epochs = args.epochs
    values = {
        "time_limit_min": args.time_limit,
        "threads": args.threads,
        "workers": args.workers,
        "device": args.device,
        "val_every": args.val_every,
        "save_every_min": args.save_every,
    }
    for key in RESUME_OVERRIDES:
        if values[key] is not None:  # not given: the run's own setting
            setattr(cfg, key, values[key])
    return cfg


def _new_config(args):
    from seg_ros.training import TrainConfig

    options = {
        key: getattr(args, key)
        for key in ("backbone", "version", "output_stride", "light_weight", "variant", "crf_rnn")
        if getattr(args, key) is not None
    }
    if args.crf_rnn_iterations is not None:
        options["crf_iterations"] = args.crf_rnn_iterations
    if args.init_weights:
        from seg_ros.models.checkpoint import read_spec, resolve_weights_path

        # The run's network is the weights' own, plus what this command line asks to change.
        start = read_spec(resolve_weights_path(args.init_weights))
        args.model = args.model or start.family
        if args.model == start.family:
            options = {**start.options, **options}
    if not args.model or not args.data:
        raise ValueError("seg_ros train needs --model and --data (or --resume or --init-weights)")
    name = args.name or f"{args.model}_{args.dataset}"
    return TrainConfig(
        model=args.model,
        model_options=options,
        dataset=args.dataset,
        data=args.data,
        split=args.split,
        num_classes=args.num_classes,
        class_table=args.class_table,
        ignore_index=args.ignore_index,
        size=args.size,
        crop=args.crop or (0, 0),
        scale_range=args.scale_range,
        jitter=args.jitter,
        gamma=args.gamma,
        hue=args.hue,
        blur=args.blur,
        noise=args.noise,
        copy_paste=args.copy_paste,
        epochs=100 if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        weight_decay=args.weight_decay,
        class_weighting=args.class_weighting,
        ohem=args.ohem,
        ema=args.ema,
        workers=args.workers or 0,
        threads=args.threads or 0,
        device=args.device or "auto",
        amp=not args.no_amp,
        time_limit_min=args.time_limit or 0.0,
        val_every=args.val_every or 1,
        save_every_min=10.0 if args.save_every is None else args.save_every,
        precise_bn=args.precise_bn,
        output=args.output or f"runs/{name}",
        pretrained_backbone=args.pretrained_backbone,
        init_weights=args.init_weights,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        name=name,
    )


def run(args: argparse.Namespace) -> int:
    """Train (or resume, or only bundle) as the flags say; 130 when interrupted (Ctrl-C, TERM)."""
    import logging
    from pathlib import Path

    from seg_ros.training import train

    log = logging.getLogger("seg_ros.train")
    if args.bundle:
        if not args.export_bundled:
            raise ValueError("--bundle needs --export-bundled PATH (where to write the weights)")
        _bundle(args, args.bundle)
        return 0
    cfg = _resumed_config(args) if args.resume else _new_config(args)
    if args.resume and args.output:
        cfg.output = args.output
    elif args.resume:
        cfg.output = str(Path(args.resume).parent)
    result = train(cfg)  # Ctrl-C or kill (TERM): finishes the step, saves last.pt, stops
    if result.interrupted:
        return 130
    log.info(
        "best validation mIoU %.4f -> %s (last: %s)",
        result.best_miou,
        result.best_checkpoint,
        result.last_checkpoint,
    )
    if args.export_bundled:
        _bundle(args, result.best_checkpoint)
    return 0
