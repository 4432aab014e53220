"""`seg_ros build-engine`: build the TensorRT engine ahead of time (e.g. into a vehicle image).

Same code as the node's ``tensorrt.*`` and ``calibration.*`` parameters: export (or reuse) the ONNX
head graph, check TensorRT can parse it, compute the engine key, then build
or verify the engine in the engine cache (fp16 and int8 strongly typed, from
the fp16 / QDQ graph). Without TensorRT everything up to the build still
runs, and the command fails with the reason.
"""

from __future__ import annotations

import argparse

from seg_ros.commands.options import add_pipeline_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-engine",
        help="build (or verify) the TensorRT engine for a model ahead of time",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="example: seg_ros build-engine --model deeplab --precision fp16 --height 360 "
        "--width 480 --engine-cache /opt/seg_ros/engines   (then run the node with "
        "tensorrt.engine_cache set to the same folder)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when a valid engine is cached"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="largest batch the engine's optimisation profile takes: the node's number of "
        "cameras (default 1)",
    )
    parser.add_argument(
        "--implicit-precision",
        action="store_true",
        help="TensorRT 10 only: fp16/int8 from the fp32 graph with builder flags (and the "
        "entropy calibrator for int8) instead of the strongly typed fp16 / QDQ graph",
    )
    add_pipeline_arguments(parser)
    parser.set_defaults(
        func=run, precision="fp16"
    )  # after the shared flags, so it overrides their fp32


def run(args: argparse.Namespace) -> int:
    from seg_ros.backends import BackendOptions
    from seg_ros.backends.onnx_cache import digest, export_key, prepare_onnx_for_tensorrt
    from seg_ros.backends.tensorrt_backend import check_engine_request, prepare_engine
    from seg_ros.commands.options import pipeline_config_from_args
    from seg_ros.models import load_model

    config = pipeline_config_from_args(args)
    if config.backend not in ("auto", "tensorrt"):
        raise ValueError(
            f"build-engine builds TensorRT engines; --backend {config.backend} makes no sense here"
        )
    options = dict(config.backend_options)
    options["implicit_precision"] = args.implicit_precision
    options["max_batch"] = args.max_batch
    options = BackendOptions.from_dict(options)

    loaded = load_model(
        config.model,
        weights=config.weights,
        num_classes=config.num_classes,
        class_table=config.class_table,
        **config.model_options,
    )
    spec = loaded.spec
    calibration = check_engine_request(config.precision, options, spec)
    height = config.input_height or spec.input_height
    width = config.input_width or spec.input_width
    print(
        f"model {spec.name} ({spec.family}, {spec.num_classes} classes, "
        f"weights {spec.weights_path or 'random initialisation'}) at {height}x{width} (HxW), "
        f"{config.precision}"
    )
    onnx_path = prepare_onnx_for_tensorrt(loaded, height, width)
    print(
        f"ONNX graph {onnx_path}: Nx3x{height}x{width} input (batches 1 to {options.max_batch}), "
        "every operator supported by TensorRT"
    )
    print(
        f"network key {digest(export_key(loaded, height, width))[:16]} "
        "(+ TensorRT version, GPU and compute capability once TensorRT is loaded)"
    )
    if hasattr(calibration, "describe"):
        print(f"INT8 calibration: {calibration.count()} frames of {calibration.describe()}")
    elif calibration is not None:
        print(f"INT8 calibration: the table shipped with {spec.weights_path}")

    artifact = prepare_engine(
        loaded,
        height=height,
        width=width,
        precision=config.precision,
        options=options,
        force=args.force,
    )
    state = "built" if artifact.built else "already cached and valid"
    key = artifact.key
    gpu = key["gpu"]
    print(
        f"engine {artifact.path} ({len(artifact.payload) / 1e6:.1f} MB) {state}; key "
        f"{digest(key)[:16]} for TensorRT {key['tensorrt']} ({key['typing']}ly typed) on "
        f"{gpu['name']} (sm {gpu['compute_capability']}, {gpu['multiprocessors']} SMs, "
        f"{gpu['memory_gib']} GiB)"
    )
    return 0
