"""`seg_ros export`: write a network (with its weights) as ONNX for TensorRT or ONNX Runtime."""

from __future__ import annotations

import argparse

from seg_ros.commands.options import add_model_arguments, model_options_from_args

EPILOG = """\
The file has input `image` (1x3xHxW float32, ImageNet-normalised RGB) and, by
default, outputs `label` (1xHxW int32), `confidence` (1xHxW float32, winning
softmax probability) and `probabilities` (1xCxHxW float32); --logits writes a
single output `logits` instead. The export is checked with onnx.checker, for
operators TensorRT's ONNX parser rejects, and against PyTorch with ONNX
Runtime on a random image (skip with --no-verify).

Examples:
  seg_ros export --model deeplab --onnx deeplab.onnx                 (bundled weights, trained size)
  seg_ros export --model segnet --backbone basic --num-classes 11 --weights segnet.safetensors \\
      --height 360 --width 480 --onnx segnet.onnx
"""


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
    out.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from seg_ros.export import (
        DEFAULT_OPSET,
        compare_with_torch,
        export_onnx,
        onnx_opset,
        unsupported_tensorrt_ops,
    )
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
        "exporting %s (%s, %d classes) at %dx%d",
        spec.name,
        spec.family,
        spec.num_classes,
        width,
        height,
    )
    path = export_onnx(
        loaded.module,
        args.onnx,
        height,
        width,
        head=not args.logits,
        opset=args.opset or DEFAULT_OPSET,
    )
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
        image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
        result = compare_with_torch(loaded.module, path, image)
        what = "logits" if args.logits else "probabilities"
        print(
            f"ONNX Runtime vs PyTorch: label agreement {result['label_agreement']:.4%}, "
            f"max |{what} difference| {result['max_abs_diff']:.2e} ({result['max_rel_diff']:.1e} of the largest)"
        )
        if result["label_agreement"] < 0.999:
            raise RuntimeError(
                f"{path}: ONNX Runtime disagrees with PyTorch on "
                f"{1 - result['label_agreement']:.2%} of pixels"
            )
    return 0
