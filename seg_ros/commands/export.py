"""`seg_ros export`: write a network (with its weights) as ONNX for TensorRT or ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_ros.commands.options import add_model_arguments, model_options_from_args

EPILOG = """\
The file has input `image` (Nx3xHxW float32, ImageNet-normalised RGB; the
batch N is dynamic, H and W fixed) and, by default, outputs `label` (NxHxW
int32), `confidence` (NxHxW float32, winning softmax probability) and
`probabilities` (NxCxHxW float32); --logits writes a
single output `logits` instead. --precision fp16 writes the graph TensorRT
builds strongly typed for fp16 (fp16 tensors, the head kept fp32); int8 the
QDQ graph (symmetric INT8, calibrated from --calibration-images or
--calibration-bag/--calibration-topic, else the model's shipped table) that
both ONNX Runtime and TensorRT run. The export is checked with onnx.checker,
for what TensorRT's ONNX parser rejects, and against PyTorch with ONNX Runtime
on a random image, or on --verify-images frames (skip with --no-verify).

Examples:
  seg_ros export --model deeplab --onnx deeplab.onnx        (bundled weights, trained size)
  seg_ros export --model refinenet --precision int8 --onnx lw_int8.onnx   (shipped calibration)
  seg_ros export --model segnet --backbone basic --num-classes 11 --weights segnet.safetensors \\
      --height 360 --width 480 --onnx segnet.onnx
"""

# Label agreement with PyTorch fp32 below which the export is refused (fp32: the graph itself
# is checked with ONNX Runtime's optimisations off) or reported as poor (fp16, int8).
AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a network to ONNX (TensorRT-compatible)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--onnx", required=True, help="ONNX file to write")
    out.add_argument(
        "--height", type=int, default=0, help="input height (default: the trained size)"
    )
    out.add_argument(
        "--width", type=int, default=0, help="input width (default: the trained size)"
    )
    out.add_argument(
        "--logits",
        action="store_true",
        help="output raw logits instead of label/confidence/probabilities",
    )
    out.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, >= 17 (default: 18, see seg_ros.export)",
    )
    out.add_argument(
        "--precision",
        choices=tuple(AGREEMENT),
        default="fp32",
        help="fp32, fp16 (strongly typed fp16 graph) or int8 (QDQ graph)",
    )
    out.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    out.add_argument(
        "--verify-images",
        default="",
        help="compare on frames from this folder (drawn evenly) instead of one random image",
    )
    out.add_argument(
        "--verify-frames", type=int, default=10, help="frames for --verify-images (default 10)"
    )
    calib = parser.add_argument_group("INT8 calibration (default: the model's shipped table)")
    calib.add_argument("--calibration-images", default="", help="folder of calibration images")
    calib.add_argument("--calibration-bag", default="", help="rosbag2 with calibration images")
    calib.add_argument("--calibration-topic", default="", help="image topic in the bag")
    calib.add_argument(
        "--calibration-frames", type=int, default=100, help="frames drawn evenly (default 100)"
    )
    parser.set_defaults(func=run)


def _write(args, loaded, height: int, width: int) -> Path:
    """Export the graph for ``args.precision`` to ``args.onnx``."""
    import tempfile

    from seg_ros.export import DEFAULT_OPSET, convert_to_fp16, export_onnx

    opset = args.opset or DEFAULT_OPSET
    if args.precision == "fp32":
        return export_onnx(
            loaded.module, args.onnx, height, width, head=not args.logits, opset=opset
        )
    if args.logits:
        raise ValueError(f"--precision {args.precision} writes the head graph: drop --logits")
    with tempfile.TemporaryDirectory(prefix="seg_ros-export-") as tmp:
        fp32 = export_onnx(loaded.module, Path(tmp) / "fp32.onnx", height, width, opset=opset)
        if args.precision == "fp16":
            return convert_to_fp16(fp32, args.onnx)
        return _write_int8(args, loaded, fp32, height, width)


def _write_int8(args, loaded, fp32: Path, height: int, width: int) -> Path:
    from seg_ros.backends import BackendOptions
    from seg_ros.backends.calibration import resolve_calibration
    from seg_ros.backends.quantize import RangeTable, calibrate, write_qdq_onnx
    from seg_ros.export import for_tensorrt_qdq, tensorrt_qdq_problems

    options = BackendOptions.from_dict(
        {
            "calibration_images": args.calibration_images,
            "calibration_bag": args.calibration_bag,
            "calibration_topic": args.calibration_topic,
            "calibration_frames": args.calibration_frames,
        }
    )
    spec = loaded.spec
    source = resolve_calibration(options, spec)
    if isinstance(source, RangeTable):
        print(f"INT8 calibration: the table shipped with {spec.weights_path}")
        table = source
    else:
        print(f"INT8 calibration: {source.count()} frames of {source.describe()}")
        table = calibrate(fp32, source.batches(height, width, spec.mean, spec.std), source.count())
    qdq = write_qdq_onnx(fp32, fp32.with_name("qdq.onnx"), table)
    path = for_tensorrt_qdq(qdq, args.onnx)
    problems = tensorrt_qdq_problems(path)
    if problems:
        raise RuntimeError(f"{path}: TensorRT could not build this INT8 graph: {problems}")
    return path


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from seg_ros.export import onnx_opset, unsupported_tensorrt_ops
    from seg_ros.models import load_model

    log = logging.getLogger("seg_ros.export")
    loaded = load_model(
        args.model,
        weights=args.weights,
        num_classes=args.num_classes,
        class_table=args.class_table,
        **model_options_from_args(args),
    )
    spec = loaded.spec
    height = args.height or spec.input_height
    width = args.width or spec.input_width
    log.info(
        "exporting %s (%s, %d classes) at %dx%d (HxW), %s",
        spec.name,
        spec.family,
        spec.num_classes,
        height,
        width,
        args.precision,
    )
    path = _write(args, loaded, height, width)
    print(f"wrote {path} (opset {onnx_opset(path)}, {path.stat().st_size / 1e6:.1f} MB)")
    rejected = unsupported_tensorrt_ops(path)
    if rejected:
        log.warning(
            "TensorRT's ONNX parser will reject: %s (ONNX Runtime can still run the file)",
            ", ".join(rejected),
        )
    else:
        print("TensorRT operator check: all operators supported")
    if not args.no_verify:
        if args.verify_images:
            from seg_ros.backends.calibration import CalibrationSource

            frames = CalibrationSource(images=args.verify_images, frames=args.verify_frames)
            frames.validate()
            images = list(frames.batches(height, width, spec.mean, spec.std))
            where = f"{len(images)} frames of {args.verify_images}"
        else:
            rng = np.random.default_rng(0)
            images = [rng.standard_normal((1, 3, height, width), dtype=np.float32)]
            where = "a random image"
        what = "logits" if args.logits else "probabilities"
        _verify(loaded.module, path, images, args.precision, what, where)
    return 0


def _verify(module, path: Path, images, precision: str, what: str, where: str) -> None:
    """Print how the file agrees with PyTorch fp32; refuse an fp32 export that differs from it."""
    from seg_ros.export import compare_with_torch

    graph = compare_with_torch(module, path, images)
    deployed = compare_with_torch(module, path, images, optimized=True)
    print(f"compared with PyTorch fp32 on {where}:")
    print(
        f"ONNX Runtime ({precision} graph as written) vs PyTorch fp32: label agreement "
        f"{graph['label_agreement']:.4%}, max |{what} difference| {graph['max_abs_diff']:.2e}"
    )
    moved = deployed["max_abs_diff"] > 10 * graph["max_abs_diff"] + 1e-4
    print(
        f"ONNX Runtime with its graph optimisations (as the backends run it): label agreement "
        f"{deployed['label_agreement']:.4%}, max |{what} difference| "
        f"{deployed['max_abs_diff']:.2e}"
        + (
            " (fused kernels round differently; where two pooled maxima tie that closely, "
            "SegNet's unpooling moves the value to the other cell, and INT8 kernels saturate "
            "on x86 CPUs without VNNI)"
            if moved
            else ""
        )
    )
    if graph["label_agreement"] < AGREEMENT[precision]:
        message = (
            f"{path}: ONNX Runtime disagrees with PyTorch on "
            f"{1 - graph['label_agreement']:.2%} of pixels of {where}"
        )
        if precision == "fp32":
            raise RuntimeError(message)
        print(f"warning: {message} (check on real frames: --verify-images)")
