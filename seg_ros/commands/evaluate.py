"""`seg_ros evaluate`: accuracy and latency of a model on a rosbag2 or on image/label folders."""

from __future__ import annotations

import argparse
from seg_ros.sizes import format_size

JSON_KEYS_HELP = """\
--json FILE keys (ratios are fractions in [0, 1], null where a class can not be scored):
  miou, per_class_iou {class: IoU}, pixel_accuracy, mean_class_accuracy,
  per_class_accuracy, boundary_f1 (BF score, tolerance 0.75 % of the image
  diagonal), per_class_boundary_f1, latency_ms {stage: {p50, p95, mean, count}},
  frames {used, skipped: {reason: count}, total}, pixels, classes, ignore_index,
  confusion_matrix (rows: ground truth, columns: prediction, last column:
  predicted unlabelled), model, backend, source; with --data also
  frames_in_training_data (frames the weights' recipe trained on: then the
  figure is not a held-out one).
Skip reasons: no_ground_truth, label_without_image, size_mismatch,
  undecodable_image, undecodable_label, invalid_ground_truth, duplicate_stamp.

examples:
  seg_ros evaluate --bag drive.mcap --image-topic /camera/image_raw --label-topic /camera/labels \\
      --json metrics.json --report report/
  seg_ros evaluate --images camvid/val --labels camvid/valannot --model deeplab \\
      --backend onnxruntime
  seg_ros evaluate --data ../shared/datasets/camvid --split new-drive --json new_drive.json
"""


def register(subparsers) -> None:
    from seg_ros.commands.options import add_pipeline_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="mIoU, boundary F1 and latency on a rosbag2 or image/label folders",
        description=__doc__,
        epilog=JSON_KEYS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("input (a bag, or two folders)")
    source.add_argument("--bag", help="rosbag2 folder or .db3/.mcap file")
    source.add_argument(
        "--image-topic",
        help="image topic in --bag (Image, or CompressedImage; <topic>/compressed is tried too)",
    )
    source.add_argument(
        "--label-topic",
        help="ground-truth label topic in --bag (mono8/mono16 Image or png "
        "CompressedImage), matched to images by exact header stamp",
    )
    source.add_argument("--images", help="folder of images")
    source.add_argument(
        "--labels", help="folder of label images named like the images (any extension)"
    )
    source.add_argument(
        "--data",
        help="CamVid root: score the validation frames of --split (instead of the folders)",
    )
    source.add_argument(
        "--split",
        choices=("new-drive", "val"),
        default="new-drive",
        help="with --data: new-drive = drive 0006R0, held out of every new-drive training run "
        "(predicts a new street); val = val/ (drive 0016E5, which training frames also come "
        "from: optimistic)",
    )
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="ground-truth label left out of the scores (default: the class table's, CamVid 11)",
    )
    scoring.add_argument(
        "--limit", type=int, default=0, help="stop after this many image frames (0: all)"
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--json", help="write the metrics as JSON to this file (keys below)")
    out.add_argument("--report", help="write a Markdown report with plots into this folder")
    out.add_argument(
        "--save-predictions",
        metavar="DIR",
        help="one mono8 PNG per frame, named <sec:010d>_<nanosec:09d>.png from the image stamp "
        "(folders: the image's file name)",
    )
    out.add_argument(
        "--output-bag",
        metavar="PATH",
        help="write the bag again with /<ns>/label, /<ns>/confidence and /<ns>/overlay added",
    )
    out.add_argument(
        "--output-namespace",
        default="segmentation_node",
        help="namespace of the added topics (default: segmentation_node, like the node's ~/ "
        "topics)",
    )
    out.add_argument(
        "--output-storage",
        choices=("sqlite3", "mcap"),
        default=None,
        help="storage of --output-bag (default: the input bag's)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run)


def _check_args(args) -> None:
    if sum(bool(x) for x in (args.bag, args.images or args.labels, args.data)) > 1:
        raise ValueError("give one of --bag, --images/--labels or --data")
    if args.data:
        return
    if args.bag:
        if not args.image_topic or not args.label_topic:
            raise ValueError("--bag needs --image-topic and --label-topic")
    elif not (args.images and args.labels):
        raise ValueError(
            "nothing to evaluate: give --bag with --image-topic and --label-topic, "
            "or --images and --labels"
        )
    if args.output_bag and not args.bag:
        raise ValueError("--output-bag needs --bag")
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")


def _split_source(root: str, split: str):
    """Return a FolderSource over the validation frames of a CamVid split (one folder pair)."""
    from seg_ros.datasets import split_pairs
    from seg_ros.evaluation.sources import FolderSource

    pairs = split_pairs("camvid", root, split)[1]
    folders = {(image.parent, label.parent) for image, label in pairs}
    if len(folders) != 1:
        raise ValueError(f"the {split} split's validation frames span folders {sorted(folders)}")
    (images, labels) = folders.pop()
    source = FolderSource(images, labels)
    source.paths = [image for image, _ in pairs]
    return source


def run(args) -> int:
    import json
    import logging
    from contextlib import ExitStack
    from pathlib import Path

    from seg_ros.commands.options import pipeline_config_from_args
    from seg_ros.evaluation.metrics import Evaluation
    from seg_ros.evaluation.offline import evaluate_frames
    from seg_ros.pipeline import build_pipeline

    log = logging.getLogger("seg_ros.evaluate")
    _check_args(args)
    with ExitStack() as stack:
        writer = None
        # Open the input first: a wrong topic or folder is reported before the slow model load.
        if args.bag:
            from seg_ros.evaluation.bag_writer import OutputBagWriter, storage_of
            from seg_ros.evaluation.sources import BagSource

            source = BagSource(args.bag, args.image_topic, args.label_topic)
            stack.callback(source.close)
        elif args.data:
            source = _split_source(args.data, args.split)
        else:
            from seg_ros.evaluation.sources import FolderSource

            source = FolderSource(args.images, args.labels)
        built = build_pipeline(pipeline_config_from_args(args))
        table = built.class_table
        ignore_index = table.ignore_index if args.ignore_index is None else args.ignore_index
        evaluation = Evaluation(table.names, ignore_index)
        if args.output_bag:  # implies --bag (checked above)
            if not source.ros2:
                raise ValueError("--output-bag needs a rosbag2 input (sqlite3 or mcap)")
            writer = stack.enter_context(
                OutputBagWriter(
                    args.output_bag,
                    source.reader.connections,
                    namespace=args.output_namespace,
                    storage=args.output_storage or storage_of(Path(args.bag)),
                    input_typestore=source.reader.typestore,
                )
            )
            source.on_message = writer.copy
        description = (
            f"bag {args.bag} ({source.image_topic} vs {source.label_topic})"
            if args.bag
            else f"CamVid {args.data} split {args.split}: {len(source)} validation frames"
            if args.data
            else f"images {args.images} vs labels {args.labels}"
        )
        result = evaluate_frames(
            built.pipeline,
            source,
            evaluation,
            total=len(source),
            limit=args.limit,
            save_predictions=Path(args.save_predictions) if args.save_predictions else None,
            output_bag=writer,
            palette=table.palette(),
            progress=not args.no_progress,
        )

    summary = evaluation.to_dict()
    summary.update(
        model={
            "family": built.spec.family,
            "name": built.spec.name,
            "weights": built.spec.weights_path or "random init",
        },
        backend=built.backend_name,
        source=description,
    )
    if args.data:
        from seg_ros.datasets import seen_in_training

        training = built.spec.metrics.get("training") or {}
        seen, warning = seen_in_training(training, "camvid", args.data, source.paths)
        summary["frames_in_training_data"] = seen
        if warning:
            log.warning(warning)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.report:
        from seg_ros.evaluation.report import write_report

        details = {
            "source": description,
            "model": f"{built.spec.family} {built.spec.name} "
            f"({built.spec.weights_path or 'random init'})",
            "backend": built.backend_name,
            "network input (HxW)": format_size(
                built.pipeline.input_height, built.pipeline.input_width
            ),
            "dense CRF": "on" if args.crf else "off",
        }
        path = write_report(
            args.report,
            summary,
            normalized_confusion=evaluation.confusion.normalized(),
            worst=result.worst,
            frame_totals_ms=result.frame_totals_ms,
            palette=table.palette(),
            details=details,
        )
        log.info("report: %s", path)

    frames = summary["frames"]
    if frames["used"] == 0:
        raise RuntimeError(
            f"no frame could be scored ({frames['skipped'] or 'the source is empty'}); "
            "check the topics/folders and the log above"
        )
    bf = summary["boundary_f1"]
    print(
        f"mIoU {100 * summary['miou']:.2f}%  "
        f"pixel accuracy {100 * summary['pixel_accuracy']:.2f}%  "
        f"mean class accuracy {100 * summary['mean_class_accuracy']:.2f}%  "
        f"boundary F1 {'n/a' if bf is None else f'{100 * bf:.2f}%'}  "
        f"frames {frames['used']} scored, {sum(frames['skipped'].values())} skipped "
        f"{frames['skipped'] or ''}"
    )
    return 0
