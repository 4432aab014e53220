"""`seg_ros tune-crf`: fit the dense CRF's kernel parameters and iterations on labelled frames."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Objectives (--objective): miou-keep-bf1 (default) = highest mIoU among the
settings whose boundary F1 is not below the CRF off; miou; boundary_f1; mean
(of the two). When no setting beats the CRF off, tune-crf says so and
--write-to stores enabled=false with the scores.

--write-to WEIGHTS stores the fitted parameters in the weights' metadata
(ModelSpec.crf) and rewrites their model card; `evaluate --crf`, `benchmark
--crf` and the node then use them unless CRF options are given explicitly.
Tune only on training/validation data (the default: the new-drive split's
held-out drive 0006R0), never on a test set, and with a network that did not
train on those frames: for weights trained on all 468 frames, tune with the
new-drive run of the same recipe (--weights) and store into the bundled file
(--write-to).

examples:
  seg_ros tune-crf --data ../shared/datasets/camvid --json crf.json
  seg_ros tune-crf --data ../shared/datasets/camvid --weights runs/new_drive.safetensors \\
      --write-to models/refinenet_lw_mobilenet_v2_camvid.safetensors
"""


def register(subparsers) -> None:
    """Add the tune-crf sub-command."""
    from seg_ros.commands.options import add_pipeline_arguments

    parser = subparsers.add_parser(
        "tune-crf",
        help="fit the dense CRF's parameters on labelled frames (default: the new-drive split)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("labelled frames (a CamVid split, or two folders)")
    data.add_argument("--data", help="CamVid root folder (train/, trainannot/, val/, valannot/)")
    data.add_argument(
        "--split",
        choices=("new-drive", "val"),
        default="new-drive",
        help="whose validation frames to tune on (default new-drive: drive 0006R0)",
    )
    data.add_argument("--images", help="folder of images (instead of --data)")
    data.add_argument("--labels", help="folder of labels named like the images")
    data.add_argument("--limit", type=int, default=0, help="use only the first N frames (0: all)")
    search = parser.add_argument_group("search")
    search.add_argument(
        "--objective",
        choices=("miou-keep-bf1", "miou", "boundary_f1", "mean"),
        default="miou-keep-bf1",
        help="what to maximise (see below)",
    )
    search.add_argument(
        "--passes", type=int, default=2, help="coordinate-descent rounds over the parameters"
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--json", help="write the baseline, the choice and every trial here")
    out.add_argument(
        "--table-rows", type=int, default=15, help="rows of the printed table (0: all)"
    )
    out.add_argument(
        "--write-to",
        metavar="WEIGHTS",
        help="store the fitted parameters in these bundled weights (.safetensors) and their card "
        "(default network to tune with, unless --weights names another)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run)


def _pairs(args) -> tuple[list, str]:
    from seg_ros.datasets import SPLITS, split_pairs

    if args.data and (args.images or args.labels):
        raise ValueError("give either --data (a CamVid split) or --images and --labels")
    if args.data:
        pairs = split_pairs("camvid", args.data, args.split)[1]
        where = f"CamVid {args.data} split {args.split}: {SPLITS[args.split]}"
    elif args.images and args.labels:
        labels = {p.stem: p for p in Path(args.labels).iterdir()}
        images = sorted(Path(args.images).iterdir())
        pairs = [(p, labels[p.stem]) for p in images if p.stem in labels]
        where = f"images {args.images} vs labels {args.labels}"
        if not pairs:
            raise ValueError(f"no image in {args.images} has a label in {args.labels}")
    else:
        raise ValueError("nothing to tune on: give --data CAMVID_ROOT, or --images and --labels")
    return pairs[: args.limit or None], where


def write_fitted(weights: str, fitted: dict) -> Path:
    """Store fitted CRF parameters in bundled weights' metadata and in their model card.

    A card the generator can restate is rewritten whole; an older bundle's card gets its Dense
    CRF section replaced and the rest kept (``records_recipe``). Returns the card.
    """
    from seg_ros.models import load_model, save_checkpoint
    from seg_ros.training import records_recipe, update_crf_section, write_model_card

    loaded = load_model(weights=weights)
    spec = loaded.spec
    spec.crf = fitted
    save_checkpoint(weights, loaded.module, spec, half=True)
    card = Path(weights).with_suffix(".md")
    if records_recipe(spec) or not card.exists():
        return write_model_card(weights, spec.metrics.get("cpu_latency", []))
    return update_crf_section(card, fitted)


def run(args) -> int:
    """Collect the network's probabilities once, search, print the table, store the choice."""
    import json
    import logging
    from dataclasses import replace

    from seg_ros.commands.options import pipeline_config_from_args
    from seg_ros.pipeline import CRF_PARAMETERS, build_pipeline
    from seg_ros.tune_crf import format_table, network_frames, tune

    log = logging.getLogger("seg_ros.tune_crf")
    pairs, where = _pairs(args)
    config = pipeline_config_from_args(args)
    if args.write_to and not config.weights:
        config = replace(config, weights=args.write_to)
    built = build_pipeline(config)
    table = built.class_table
    log.info("tuning on %d frames of %s", len(pairs), where)
    if args.data:
        from seg_ros.datasets import seen_in_training

        training = built.spec.metrics.get("training") or {}
        warning = seen_in_training(training, "camvid", args.data, [i for i, _ in pairs])[1]
        if warning:
            log.warning("tuning the CRF on them: %s", warning)
    frames = network_frames(
        built.pipeline,
        pairs,
        table.num_classes,
        table.ignore_index,
        progress=not args.no_progress,
    )
    start = {name: getattr(built.pipeline.crf, name) for name in CRF_PARAMETERS}
    result = tune(
        frames,
        table.num_classes,
        table.ignore_index,
        start=start,
        objective=args.objective,
        passes=args.passes,
        downsample=built.pipeline.crf.downsample,
        progress=not args.no_progress,
    )
    print(format_table(result, args.table_rows))
    base, chosen = result.baseline, result.chosen
    print(
        f"CRF off: mIoU {100 * base.miou:.2f}%  boundary F1 {100 * base.boundary_f1:.2f}%\n"
        + (
            f"chosen: mIoU {100 * chosen.miou:.2f}%  boundary F1 {100 * chosen.boundary_f1:.2f}%"
            f"  {json.dumps(result.best, sort_keys=True)}"
            if result.best
            else f"no setting beats the CRF off under {args.objective}: keep it off"
        )
    )
    summary = {
        "source": where,
        "frames": len(frames),
        "model": built.spec.name,
        "weights": built.spec.weights_path or "random init",
        "objective": args.objective,
        "baseline": base.row(),
        "chosen": chosen.row(),
        "best": result.best,
        "trials": [t.row() for t in result.trials],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.write_to:
        fitted = dict(result.best or {"enabled": False})
        fitted.update(
            tuned_on=f"{len(frames)} frames of {where}"
            + (f" with the network {built.spec.weights_path}" if args.weights else ""),
            objective=args.objective,
            scores={
                "CRF off": {"miou": base.miou, "boundary_f1": base.boundary_f1},
                "CRF fitted": {"miou": chosen.miou, "boundary_f1": chosen.boundary_f1},
            },
        )
        write_fitted(args.write_to, fitted)
        log.info("stored the CRF parameters in %s and its model card", args.write_to)
    return 0
