"""`seg_ros train`: train or fine-tune a network on CamVid, Cityscapes or image/label folders."""

from __future__ import annotations

import argparse

from seg_ros.commands.options import FAMILIES

EPILOG = """\
Writes <output>/last.pt (resume with --resume), <output>/best.pt (best val mIoU)
and <output>/history.jsonl (one JSON line per epoch: epoch, step, lr, train_loss,
val_miou, val_per_class_iou, val_pixel_accuracy, val_mean_class_accuracy,
elapsed_s). --export-bundled writes best.pt as fp16 safetensors that
`--weights` (and models/ for bundled weights) accepts.

Data layouts: camvid: <data>/{train,val}/*.png + {train,val}annot/ (label 11 =
void); cityscapes: leftImg8bit/ + gtFine/*_labelTrainIds.png (255 = void);
folders: <data>/{train,val}/images/* + labels/<stem>.png (class index per pixel).

Example (CPU, 2 h budget):
  seg_ros train --model deeplab --version v3plus --backbone mobilenet_v3_large \\
      --dataset camvid --data ../shared/datasets/camvid --crop 240x320 \\
      --time-limit 120 --output runs/deeplab --export-bundled models/deeplab.safetensors
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
    from seg_ros.datasets import parse_size

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
        "--model", choices=FAMILIES, help="network family (required unless --bundle)"
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
        "--pretrained-backbone",
        default="",
        help="local ImageNet backbone weights (.pth/.safetensors)",
    )
    model.add_argument(
        "--name", default="", help="model name stored in the weights (default: <model>_<dataset>)"
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=("camvid", "cityscapes", "folders"),
        default="camvid",
        help="data layout",
    )
    data.add_argument("--data", default="", help="dataset root folder (required unless --bundle)")
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
        help="network size HxW: validation size and the size stored in the weights (default 360x480)",
    )
    data.add_argument(
        "--crop", type=_size, default=None, help="training crop HxW (default: --size)"
    )
    data.add_argument(
        "--scale-range",
        type=_pair,
        default=(0.5, 1.0),
        help="random scale LOW,HIGH relative to --size before cropping (default 0.5,1.0)",
    )
    data.add_argument("--jitter", type=float, default=0.2, help="colour jitter strength (0 = off)")
    data.add_argument(
        "--limit-train", type=int, default=0, help="use only the first N training images"
    )
    data.add_argument(
        "--limit-val", type=int, default=0, help="use only the first N validation images"
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs", type=int, default=100, help="epochs (the poly schedule spans them all)"
    )
    opt.add_argument("--batch-size", type=int, default=8)
    opt.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW base learning rate (poly decay, power 0.9)"
    )
    opt.add_argument("--weight-decay", type=float, default=1e-4)
    opt.add_argument(
        "--class-weighting",
        choices=("median", "none"),
        default="median",
        help="median-frequency class balancing (SegNet) or none",
    )
    opt.add_argument("--seed", type=int, default=0)

    runtime = parser.add_argument_group("run")
    runtime.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    runtime.add_argument(
        "--no-amp",
        action="store_true",
        help="train in plain fp32 (default: fp16 autocast on CUDA, bf16 on CPUs with native bf16)",
    )
    runtime.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    runtime.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    runtime.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="minutes of wall time: the poly schedule ends there (or at the last epoch, if sooner), "
        "then it validates and keeps the best model (0: no limit)",
    )
    runtime.add_argument(
        "--precise-bn",
        type=int,
        default=10,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches before each "
        "validation and export (0: keep the running averages)",
    )
    runtime.add_argument("--val-every", type=int, default=1, help="epochs between validations")
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
        "--bundle",
        default="",
        metavar="CHECKPOINT",
        help="do not train: write this checkpoint (e.g. runs/x/best.pt) to --export-bundled",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from seg_ros.training import TrainConfig, bundle, train

    log = logging.getLogger("seg_ros.train")
    if args.bundle:
        if not args.export_bundled:
            raise ValueError("--bundle needs --export-bundled PATH (where to write the weights)")
        card = bundle(args.bundle, args.export_bundled, latency_frames=args.latency_frames)
        log.info("wrote %s and its model card %s", args.export_bundled, card)
        return 0
    if not args.model or not args.data:
        raise ValueError("seg_ros train needs --model and --data")
    options = {
        key: getattr(args, key)
        for key in ("backbone", "version", "output_stride", "light_weight")
        if getattr(args, key) is not None
    }
    name = args.name or f"{args.model}_{args.dataset}"
    cfg = TrainConfig(
        model=args.model,
        model_options=options,
        dataset=args.dataset,
        data=args.data,
        num_classes=args.num_classes,
        class_table=args.class_table,
        ignore_index=args.ignore_index,
        size=args.size,
        crop=args.crop or (0, 0),
        scale_range=args.scale_range,
        jitter=args.jitter,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        class_weighting=args.class_weighting,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        amp=not args.no_amp,
        time_limit_min=args.time_limit,
        val_every=args.val_every,
        precise_bn=args.precise_bn,
        output=args.output or f"runs/{name}",
        resume=args.resume,
        pretrained_backbone=args.pretrained_backbone,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        name=name,
    )
    result = train(cfg)
    log.info(
        "best val mIoU %.4f -> %s (last: %s)",
        result.best_miou,
        result.best_checkpoint,
        result.last_checkpoint,
    )
    if args.export_bundled:
        card = bundle(
            result.best_checkpoint, args.export_bundled, latency_frames=args.latency_frames
        )
        log.info("wrote %s and its model card %s", args.export_bundled, card)
    return 0
