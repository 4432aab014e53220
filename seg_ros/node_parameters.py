"""The segmentation node's parameters, without ROS: names, defaults, ranges, validation.

One table serves the node (which declares every entry with a descriptor and
checks run-time changes against it), the launch file (which builds the node's
parameter list with ``launch_parameters``) and the tests (which read the same
YAML files the node gets through ``--params-file``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from seg_ros.backends.base import BackendOptions
from seg_ros.choices import BACKENDS, FAMILIES, PRECISIONS
from seg_ros.dds import RELIABILITIES
from seg_ros.pipeline import CrfSettings, PipelineConfig

NODE_NAME = "segmentation_node"
TRANSPORTS = ("raw", "compressed")
PIPELINING = ("auto", "overlap", "serial")
OUTPUTS = ("label", "confidence", "color", "overlay", "probabilities")
# A camera name is a relative ROS name: it prefixes the camera's input and output topics.
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: its type comes from the default's Python type."""

    name: str
    default: bool | int | float | str | tuple
    description: str
    choices: tuple[str, ...] = ()  # allowed strings; empty = any
    minimum: float | None = None  # inclusive range for int/float
    maximum: float | None = None
    step: int = 0  # integer range step (0 or 1 = any integer); floats are continuous
    runtime: bool = False  # may change while the node runs (else: needs a restart)

    def check(self, value) -> str | None:
        """Return why ``value`` is unacceptable, or None when it is fine."""
        kind = type(self.default)
        if kind is tuple:
            return _check_camera_names(self.name, value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            return (
                f"{self.name} must be of type {kind.__name__}, "
                f"got {value!r} ({type(value).__name__})"
            )
        if kind is float and not math.isfinite(value):
            return f"{self.name} must be a finite number, got {value!r}"
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            return f"{self.name} must be one of {allowed}, got {value!r}"
        if (
            self.minimum is not None
            and value < self.minimum
            or self.maximum is not None
            and value > self.maximum
        ):
            return f"{self.name} must be in [{self.minimum:g}, {self.maximum:g}], got {value!r}"
        if kind is int and self.step > 1 and (value - int(self.minimum or 0)) % self.step:
            return (
                f"{self.name} must be a multiple of {self.step} from {self.minimum:g}, "
                f"got {value!r}"
            )
        return None


def _check_camera_names(name: str, value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return f"{name} must be a list of strings, got {value!r}"
    bad = [v for v in value if not _CAMERA_NAME.match(v)]
    if bad:
        return (
            f"{name}: {', '.join(repr(v) for v in bad)} is not a relative ROS name "
            "(letters, digits, _ and /, starting with a letter)"
        )
    if len(set(value)) != len(value):
        return f"{name} lists a camera twice: {list(value)!r}"
    return None


_RESTART = " Fixed at start-up: restart the node to change it."
PARAMETERS: tuple[ParameterSpec, ...] = (
    # Model: loading weights and starting a backend is slow, so these need a restart.
    ParameterSpec(
        "model",
        "",
        "Network family: segnet, deeplab, refinenet or fcn; empty = the best bundled." + _RESTART,
        choices=("",) + FAMILIES,
    ),
    ParameterSpec(
        "backbone",
        "",
        "Backbone (segnet: vgg16_bn|basic; deeplab: resnet50|resnet101|"
        "mobilenet_v3_large; refinenet: resnet101|resnet50|mobilenet_v2); "
        "empty = the bundled variant." + _RESTART,
    ),
    ParameterSpec(
        "version",
        "",
        "DeepLab version: v3 or v3plus; empty = the bundled variant." + _RESTART,
        choices=("", "v3", "v3plus"),
    ),
    ParameterSpec(
        "output_stride",
        0,
        "DeepLab output stride 8 or 16; 0 = the bundled variant." + _RESTART,
        minimum=0,
        maximum=16,
        step=8,
    ),
    ParameterSpec("light_weight", False, "RefineNet: use Light-Weight RefineNet." + _RESTART),
    ParameterSpec(
        "variant",
        "",
        "FCN on VGG16: 32s, 16s or 8s; empty = the default (8s)." + _RESTART,
        choices=("", "32s", "16s", "8s"),
    ),
    ParameterSpec(
        "aux_head", False, "FCN on ResNet: the weights carry torchvision's aux head." + _RESTART
    ),
    ParameterSpec(
        "crf_rnn",
        False,
        "End the network in the CRF-as-RNN layer (starts as the model's fitted CRF)." + _RESTART,
    ),
    ParameterSpec(
        "crf_rnn_iterations",
        0,
        "Mean-field iterations of the CRF-as-RNN layer; 0 = the layer's default." + _RESTART,
        minimum=0,
        maximum=20,
    ),
    ParameterSpec(
        "weights", "", "Safetensors checkpoint; empty = the family's bundled weights." + _RESTART
    ),
    ParameterSpec(
        "num_classes",
        0,
        "Number of classes; 0 = from the weights or the class table." + _RESTART,
        minimum=0,
        maximum=65535,
        step=1,
    ),
    ParameterSpec(
        "class_table",
        "",
        "Class table: camvid, cityscapes, voc or a YAML file; empty = from the "
        "weights." + _RESTART,
    ),
    ParameterSpec(
        "backend",
        "auto",
        "Inference backend; auto tries TensorRT, ONNX Runtime, then PyTorch." + _RESTART,
        choices=BACKENDS,
    ),
    ParameterSpec(
        "precision",
        "fp32",
        "Inference precision: fp16 needs TensorRT or a CUDA GPU; int8 runs on TensorRT and ONNX "
        "Runtime (bundled models bring their calibration, else set calibration.*)." + _RESTART,
        choices=PRECISIONS,
    ),
    ParameterSpec(
        "input_height",
        0,
        "Network input height in pixels; 0 = the size the model was trained at." + _RESTART,
        minimum=0,
        maximum=4096,
        step=1,
    ),
    ParameterSpec(
        "input_width",
        0,
        "Network input width in pixels; 0 = the size the model was trained at." + _RESTART,
        minimum=0,
        maximum=4096,
        step=1,
    ),
    ParameterSpec(
        "threads",
        0,
        "CPU threads for the backend; 0 = the library default." + _RESTART,
        minimum=0,
        maximum=256,
        step=1,
    ),
    ParameterSpec(
        "tensorrt.engine_cache",
        "",
        "Folder for built TensorRT engines; empty = ~/.cache/seg_ros." + _RESTART,
    ),
    ParameterSpec(
        "tensorrt.workspace_mb",
        0,
        "TensorRT builder workspace limit in MiB; 0 = TensorRT's default." + _RESTART,
        minimum=0,
        maximum=262144,
        step=1,
    ),
    ParameterSpec(
        "tensorrt.dla_core",
        -1,
        "Jetson DLA core to run on; -1 = the GPU." + _RESTART,
        minimum=-1,
        maximum=7,
        step=1,
    ),
    ParameterSpec(
        "tensorrt.implicit_precision",
        False,
        "TensorRT 10 only: build fp16/int8 the implicit (weakly typed) way, builder flags and "
        "TensorRT's entropy calibrator (int8 needs calibration.images or .bag); TensorRT 11 "
        "removed it and refuses, so backend auto falls back." + _RESTART,
    ),
    # INT8 calibration data, for TensorRT and ONNX Runtime alike (bundled models ship a table).
    ParameterSpec("calibration.images", "", "Folder of images for INT8 calibration." + _RESTART),
    ParameterSpec("calibration.bag", "", "rosbag2 with images for INT8 calibration." + _RESTART),
    ParameterSpec("calibration.topic", "", "Image topic in calibration.bag." + _RESTART),
    ParameterSpec(
        "calibration.frames",
        BackendOptions.calibration_frames,
        "INT8 calibration frames, drawn evenly from the images or the bag." + _RESTART,
        minimum=1,
        maximum=100000,
        step=1,
    ),
    # Topics and QoS: fixed once the subscription and publishers exist.
    ParameterSpec(
        "cameras",
        (),
        "Camera names: each subscribes to <name>/image and publishes ~/<name>/label etc., "
        "all served by one model in batches; empty = one camera on image with outputs ~/label etc."
        + _RESTART,
    ),
    ParameterSpec(
        "image_transport",
        "raw",
        "raw: subscribe to image (sensor_msgs/Image); compressed: to "
        "image/compressed (sensor_msgs/CompressedImage)." + _RESTART,
        choices=TRANSPORTS,
    ),
    ParameterSpec(
        "qos.reliability",
        "auto",
        "Reliability of the image subscription (depth 1: the newest frame wins): auto = "
        "reliable when every publisher offers it (camera-sized frames then survive lost "
        "fragments), else best effort, the sensor-data profile." + _RESTART,
        choices=RELIABILITIES,
    ),
    ParameterSpec(
        "qos.depth",
        5,
        "History depth of the (reliable) output publishers; with 1, a subscriber "
        "that acknowledges slowly loses frames (the next one replaces the unacknowledged one)."
        + _RESTART,
        minimum=1,
        maximum=100,
        step=1,
    ),
    # Cheap: read for every frame.
    ParameterSpec(
        "pipelining",
        "auto",
        "overlap: publish a frame while the next one is segmented; serial: publish between "
        "inferences; auto: overlap only when the network runs on a GPU (on a CPU backend its "
        "threads need every core, and publishing beside them slows it by more than it costs).",
        choices=PIPELINING,
        runtime=True,
    ),
    ParameterSpec(
        "overlay_alpha",
        0.5,
        "Weight of the colour mask in ~/overlay: 0 = camera image, 1 = mask.",
        minimum=0.0,
        maximum=1.0,
        runtime=True,
    ),
    *(
        ParameterSpec(
            f"publish.{name}",
            name != "probabilities",
            f"Publish ~/{name} (only computed while someone subscribes).",
            runtime=True,
        )
        for name in OUTPUTS
    ),
    ParameterSpec("crf.enabled", False, "Refine with a dense CRF (slow on a CPU).", runtime=True),
    ParameterSpec(
        "crf.iterations",
        5,
        "Mean-field iterations of the dense CRF.",
        minimum=1,
        maximum=50,
        step=1,
        runtime=True,
    ),
    ParameterSpec(
        "crf.gaussian_sxy",
        3.0,
        "Spatial standard deviation of the smoothness kernel (pixels).",
        minimum=0.1,
        maximum=100.0,
        runtime=True,
    ),
    ParameterSpec(
        "crf.gaussian_weight",
        3.0,
        "Weight of the smoothness kernel.",
        minimum=0.0,
        maximum=100.0,
        runtime=True,
    ),
    ParameterSpec(
        "crf.bilateral_sxy",
        80.0,
        "Spatial standard deviation of the appearance kernel (pixels).",
        minimum=0.1,
        maximum=1000.0,
        runtime=True,
    ),
    ParameterSpec(
        "crf.bilateral_srgb",
        13.0,
        "Colour standard deviation of the appearance kernel.",
        minimum=0.1,
        maximum=255.0,
        runtime=True,
    ),
    ParameterSpec(
        "crf.bilateral_weight",
        10.0,
        "Weight of the appearance kernel.",
        minimum=0.0,
        maximum=100.0,
        runtime=True,
    ),
    ParameterSpec(
        "crf.downsample",
        0,
        "Grid factor for message passing: 0 automatic (fastest), 1 full "
        "resolution (matches pydensecrf), 2..8 in between.",
        minimum=0,
        maximum=8,
        step=1,
        runtime=True,
    ),
)
SPECS: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}
# Former names: a params file that still sets one is refused with the new name.
RENAMED = {
    "tensorrt.calibration_images": "calibration.images",
    "tensorrt.calibration_bag": "calibration.bag",
    "tensorrt.calibration_topic": "calibration.topic",
}
# Published by the node from the class table, never set by users.
READ_ONLY_CLASS_PARAMETERS = ("classes.names", "classes.colors")


def defaults() -> dict:
    return {spec.name: spec.default for spec in PARAMETERS}


def unknown_reason(name: str) -> str:
    """Why ``name`` is not a parameter: renamed (naming the new name) or unknown."""
    if name in RENAMED:
        return (
            f"{name} was renamed {RENAMED[name]} (INT8 calibration serves ONNX Runtime too): "
            "use the new name"
        )
    return f"unknown parameter {name!r}"


def check_change(name: str, value) -> str | None:
    """Why a run-time change of ``name`` to ``value`` is refused, or None if it is allowed."""
    if name in READ_ONLY_CLASS_PARAMETERS:
        return f"{name} is read-only: it comes from the class table"
    spec = SPECS.get(name)
    if spec is None:
        return unknown_reason(name)
    if not spec.runtime:
        return (
            f"{name} cannot change at run time (it rebuilds the model, backend or topics): "
            "restart the node"
        )
    return spec.check(value)


def validate(values: dict) -> dict:
    """Defaults updated with ``values``; raises ValueError listing every bad or unknown entry."""
    problems = [
        unknown_reason(name)
        for name in values
        if name not in SPECS and name not in READ_ONLY_CLASS_PARAMETERS
    ]
    problems += [
        reason
        for name, value in values.items()
        if name in SPECS and (reason := SPECS[name].check(value))
    ]
    if problems:
        raise ValueError("invalid segmentation_node parameters: " + "; ".join(problems))
    merged = defaults()
    merged.update({name: value for name, value in values.items() if name in SPECS})
    merged["cameras"] = tuple(merged["cameras"])
    return merged


def parse_camera_list(text: str) -> list[str]:
    """``front,rear`` or ``[front, rear]`` (a launch argument) -> ['front', 'rear']."""
    return [name for name in re.split(r"[\s,]+", text.strip().strip("[]")) if name]


def crf_settings(values: dict) -> CrfSettings:
    return CrfSettings(
        enabled=bool(values["crf.enabled"]),
        iterations=int(values["crf.iterations"]),
        gaussian_sxy=float(values["crf.gaussian_sxy"]),
        gaussian_weight=float(values["crf.gaussian_weight"]),
        bilateral_sxy=float(values["crf.bilateral_sxy"]),
        bilateral_srgb=float(values["crf.bilateral_srgb"]),
        bilateral_weight=float(values["crf.bilateral_weight"]),
        downsample=int(values["crf.downsample"]),
    )


def pipeline_config(values: dict) -> PipelineConfig:
    """Map (validated) parameter values onto the pipeline's config; unset variants stay unset."""
    model_options = {}
    if values["backbone"]:
        model_options["backbone"] = values["backbone"]
    if values["version"]:
        model_options["version"] = values["version"]
    if values["output_stride"]:
        model_options["output_stride"] = values["output_stride"]
    if values["light_weight"]:
        model_options["light_weight"] = True
    if values["variant"]:
        model_options["variant"] = values["variant"]
    if values["aux_head"]:
        model_options["aux_head"] = True
    if values["crf_rnn"]:
        model_options["crf_rnn"] = True
    if values["crf_rnn_iterations"]:
        model_options["crf_iterations"] = values["crf_rnn_iterations"]
    backend_options = {
        option: values[name]
        for option, name in (
            ("engine_cache", "tensorrt.engine_cache"),
            ("implicit_precision", "tensorrt.implicit_precision"),
            ("calibration_images", "calibration.images"),
            ("calibration_bag", "calibration.bag"),
            ("calibration_topic", "calibration.topic"),
        )
        if values[name]
    }
    if values["calibration.frames"] != BackendOptions.calibration_frames:
        backend_options["calibration_frames"] = values["calibration.frames"]
    if values["tensorrt.workspace_mb"] > 0:
        backend_options["workspace_mb"] = values["tensorrt.workspace_mb"]
    if values["tensorrt.dla_core"] >= 0:
        backend_options["dla_core"] = values["tensorrt.dla_core"]
    if len(values["cameras"]) > 1:  # waiting frames of all cameras run as one batch
        backend_options["max_batch"] = len(values["cameras"])
    return PipelineConfig(
        model=values["model"],
        weights=values["weights"],
        num_classes=values["num_classes"],
        class_table=values["class_table"],
        model_options=model_options,
        backend=values["backend"],
        precision=values["precision"],
        input_height=values["input_height"],
        input_width=values["input_width"],
        threads=values["threads"],
        backend_options=backend_options,
        crf=crf_settings(values),
    )


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'crf': {'enabled': True}} -> {'crf.enabled': True} (ROS parameter YAML nesting)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict:
    """Read the flat parameter values a params file gives ``node_name`` (``/**`` included)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected '<node name>: {{ros__parameters: {{...}}}}' at the top level"
        )
    values = {}
    for key, section in data.items():
        if key.lstrip("/").split("/")[-1] not in ("**", node_name):
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ValueError(f"{path}: section {key!r} needs a 'ros__parameters' mapping")
        values.update(flatten(section["ros__parameters"]))
    return values


def default_params_file() -> Path:
    from seg_ros.paths import config_dir

    return config_dir() / "segmentation.yaml"


def parse_launch_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name} must be true or false, got {text!r}")


def launch_parameters(
    *,
    model: str = "",
    backend: str = "",
    precision: str = "",
    use_crf: str = "",
    cameras: str = "",
    params_file: str = "",
) -> list:
    """Build the node's ``parameters=`` for launch_ros: the params file, then the arguments.

    Empty arguments keep the file's values. Everything is validated here so a bad
    ``ros2 launch ... model:=foo`` fails with the reason before any process starts.
    """
    path = Path(params_file) if params_file else default_params_file()
    file_values = read_params_file(path)
    overrides = {}
    if model:
        overrides["model"] = model
    if backend:
        overrides["backend"] = backend
    if precision:
        overrides["precision"] = precision
    if use_crf:
        overrides["crf.enabled"] = parse_launch_bool("use_crf", use_crf)
    if cameras:
        overrides["cameras"] = parse_camera_list(cameras)
    validate({**file_values, **overrides})
    return [str(path), overrides] if overrides else [str(path)]


def rviz_remappings(namespace: str = "", node_name: str = NODE_NAME) -> list[tuple[str, str]]:
    """Point the RViz config's displays (for /segmentation_node/*) at the node in ``namespace``."""
    namespace = namespace.strip("/")
    if not namespace:
        return []
    return [
        (f"/{node_name}/{topic}", f"/{namespace}/{node_name}/{topic}")
        for topic in ("overlay", "color")
    ]
