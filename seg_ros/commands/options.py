"""Command-line flags shared by segment, benchmark, evaluate and build-engine.

One place maps flags onto ``PipelineConfig`` so every command builds its
pipeline the same way the node does from its parameters.
"""

from __future__ import annotations

import argparse

from seg_ros.choices import BACKENDS, DEVICES, FAMILIES, PRECISIONS

# Flag destination -> key in PipelineConfig.model_options (only passed when given).
_MODEL_OPTIONS = {
    "backbone": "backbone",
    "version": "version",
    "output_stride": "output_stride",
    "light_weight": "light_weight",
    "separable": "separable",
    "variant": "variant",
    "aux_head": "aux_head",
    "crf_rnn": "crf_rnn",
    "crf_rnn_iterations": "crf_iterations",
}
# Flags passed to PipelineConfig.backend_options under their own name, only when given.
_BACKEND_OPTIONS = (
    "device",
    "engine_cache",
    "workspace_mb",
    "dla_core",
    "calibration_images",
    "calibration_bag",
    "calibration_topic",
    "calibration_frames",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model / backend / CRF / TensorRT flags to ``parser``."""
    add_model_arguments(parser)
    _add_backend_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that choose a network and its weights (also `seg_ros export`'s)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=FAMILIES,
        default="",
        help="network family (default: the best bundled model on CamVid)",
    )
    model.add_argument(
        "--backbone",
        default=None,
        help="segnet: vgg16_bn|basic; deeplab: resnet50|resnet101|mobilenet_v3_large; "
        "refinenet: resnet101|resnet50|mobilenet_v2; fcn: vgg16|resnet50|resnet101 "
        "(default: the bundled variant)",
    )
    model.add_argument(
        "--variant",
        choices=("8s", "16s", "32s"),
        default=None,
        help="fcn: FCN-8s/16s/32s skip architecture (vgg16; resnet backbones are 8s)",
    )
    model.add_argument(
        "--aux-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fcn on resnet: keep torchvision's auxiliary head (its checkpoints load as they are)",
    )
    model.add_argument(
        "--crf-rnn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end the network in the trainable, exportable CRF-as-RNN layer (windowed dense CRF)",
    )
    model.add_argument(
        "--crf-rnn-iterations",
        type=_positive_int,
        default=None,
        help="mean-field iterations the CRF-as-RNN layer unrolls (default 5)",
    )
    model.add_argument("--version", choices=("v3", "v3plus"), default=None, help="deeplab version")
    model.add_argument(
        "--output-stride", type=int, choices=(8, 16), default=None, help="deeplab output stride"
    )
    model.add_argument(
        "--light-weight",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refinenet: Light-Weight RefineNet, or the paper's 4-cascade one with "
        "--no-light-weight",
    )
    model.add_argument(
        "--separable",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deeplab v3+: depthwise-separable ASPP and decoder (the paper's choice)",
    )
    model.add_argument(
        "--weights",
        default="",
        help="seg_ros .safetensors or torchvision .pt/.pth state_dict (default: the family's "
        "bundled weights; random with a warning if none)",
    )
    model.add_argument(
        "--num-classes",
        type=_non_negative_int,
        default=0,
        help="number of classes (default: from the weights or the class table)",
    )
    model.add_argument(
        "--class-table",
        default="",
        help="class table name (camvid, cityscapes, voc) or YAML file (default: from the weights)",
    )


def model_options_from_args(args: argparse.Namespace) -> dict:
    """Return the variant flags given, as ``build_model`` / ``load_model`` options."""
    return {
        key: getattr(args, dest)
        for dest, key in _MODEL_OPTIONS.items()
        if getattr(args, dest, None) is not None
    }


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    backend = parser.add_argument_group("backend")
    backend.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="inference backend; auto picks TensorRT, then ONNX Runtime, then PyTorch",
    )
    backend.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="torch: cpu|cuda; onnxruntime: its execution provider cpu|cuda|tensorrt "
        "(default: the best available)",
    )
    backend.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="inference precision"
    )
    backend.add_argument(
        "--height",
        type=_non_negative_int,
        default=0,
        help="network input height (default: the size the model was trained at)",
    )
    backend.add_argument(
        "--width",
        type=_non_negative_int,
        default=0,
        help="network input width (default: the size the model was trained at)",
    )
    backend.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        help="CPU threads for the backend (0: library default)",
    )

    crf = parser.add_argument_group("dense CRF")
    crf.add_argument("--crf", action="store_true", help="refine with a dense CRF (slow on CPU)")
    crf.add_argument(
        "--crf-iterations",
        type=_positive_int,
        default=None,
        help="mean-field iterations (default: the model's fitted value from tune-crf, else 5)",
    )
    crf.add_argument(
        "--crf-downsample",
        type=_non_negative_int,
        default=0,
        help="message-passing grid factor: 0 automatic (fastest), 1 full resolution (as "
        "pydensecrf)",
    )

    trt = parser.add_argument_group("TensorRT")
    trt.add_argument(
        "--engine-cache",
        default=None,
        help="folder for built engines (default: ~/.cache/seg_ros or $SEG_ROS_CACHE)",
    )
    trt.add_argument(
        "--workspace-mb", type=_positive_int, default=None, help="builder workspace limit in MiB"
    )
    trt.add_argument(
        "--dla-core", type=int, default=None, help="Jetson DLA core to run on (-1: GPU)"
    )
    calib = parser.add_argument_group("INT8 calibration (TensorRT and ONNX Runtime)")
    calib.add_argument(
        "--calibration-images",
        default=None,
        help="folder of images for INT8 calibration, TensorRT and ONNX Runtime "
        "(default: the table shipped with bundled weights)",
    )
    calib.add_argument(
        "--calibration-bag", default=None, help="rosbag2 with images for INT8 calibration"
    )
    calib.add_argument(
        "--calibration-topic", default=None, help="image topic in --calibration-bag"
    )
    calib.add_argument(
        "--calibration-frames",
        type=_positive_int,
        default=None,
        help="INT8 calibration frames, drawn evenly from the images or bag (default 100)",
    )


def pipeline_config_from_args(args: argparse.Namespace):
    """Map the flags added by ``add_pipeline_arguments`` onto a ``PipelineConfig``."""
    from seg_ros.pipeline import PipelineConfig

    backend_options = {
        key: getattr(args, key) for key in _BACKEND_OPTIONS if getattr(args, key, None) is not None
    }
    return PipelineConfig(
        model=args.model,
        weights=args.weights,
        num_classes=args.num_classes,
        class_table=args.class_table,
        model_options=model_options_from_args(args),
        backend=args.backend,
        precision=args.precision,
        input_height=args.height,
        input_width=args.width,
        threads=args.threads,
        backend_options=backend_options,
        crf=crf_settings_from_args(args),
        crf_explicit=crf_explicit_from_args(args),
    )


def crf_settings_from_args(args: argparse.Namespace):
    """Return the CRF flags as CrfSettings (flags not given keep the library defaults)."""
    from seg_ros.pipeline import CrfSettings

    return CrfSettings(
        enabled=bool(args.crf),
        iterations=args.crf_iterations or CrfSettings.iterations,
        downsample=args.crf_downsample,
    )


def crf_explicit_from_args(args: argparse.Namespace) -> tuple:
    """Name the CRF parameters given on the command line: the model's fitted ones fill the rest."""
    return ("iterations",) if getattr(args, "crf_iterations", None) is not None else ()
