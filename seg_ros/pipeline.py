"""The ROS-free core every entry point shares (node, evaluate, benchmark, segment).

image (numpy RGB, any size) -> resize + normalise -> backend -> label /
confidence / probabilities at network size -> optional dense CRF -> resize
back to the image's size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

# Imported up front so switching crf.enabled on at run time does not stall a frame on the import.
from seg_ros.crf import dense_crf
from seg_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from seg_ros.visualize import colorize

LOG = logging.getLogger(__name__)

COMPACT_OUTPUTS = ("label", "confidence")
FULL_OUTPUTS = ("label", "confidence", "probabilities")


# The CRF's kernel parameters and iterations: what `seg_ros tune-crf` fits and a model can store.
CRF_PARAMETERS = (
    "iterations",
    "gaussian_sxy",
    "gaussian_weight",
    "bilateral_sxy",
    "bilateral_srgb",
    "bilateral_weight",
)


@dataclass(frozen=True)
class CrfSettings:
    """Dense-CRF parameters (meanings as in Krähenbühl & Koltun / pydensecrf)."""

    enabled: bool = False
    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_weight: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_weight: float = 10.0
    downsample: int = (
        0  # message-passing grid factor: 0 auto (fast), 1 full resolution (matches pydensecrf)
    )

    def with_model_parameters(self, fitted: dict, explicit: tuple | None = None) -> CrfSettings:
        """Take the model's fitted parameters (its spec's ``crf``) where none was set explicitly.

        explicit: the names the user set; None treats a value still at its default as not set.
        """
        defaults = CrfSettings()
        values = {
            name: fitted[name]
            for name in CRF_PARAMETERS
            if name in fitted
            and (
                name not in explicit
                if explicit is not None
                else getattr(self, name) == getattr(defaults, name)
            )
        }
        return replace(self, **values) if values else self

    def kwargs(self) -> dict:
        return {
            "iterations": self.iterations,
            "gaussian_sxy": self.gaussian_sxy,
            "gaussian_weight": self.gaussian_weight,
            "bilateral_sxy": self.bilateral_sxy,
            "bilateral_srgb": self.bilateral_srgb,
            "bilateral_weight": self.bilateral_weight,
            "downsample": self.downsample,
        }


@dataclass(frozen=True)
class PipelineConfig:
    """Everything needed to build a pipeline; the node's parameters and CLI flags map onto it."""

    model: str = ""  # segnet | deeplab | refinenet; "" = the best bundled model
    weights: str = ""  # "" = the family's bundled weights (random init with a warning if none)
    num_classes: int = 0  # 0 = from the weights, else from the class table
    class_table: str = ""  # "" = from the weights' metadata, else camvid
    model_options: dict = field(
        default_factory=dict
    )  # backbone, version, light_weight, output_stride
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch
    precision: str = "fp32"  # fp32 | fp16 | int8
    input_height: int = 0  # network input size; 0 = the size the model was trained at
    input_width: int = 0
    threads: int = 0  # CPU threads for the backend; 0 = library default
    # The node's tensorrt.* and calibration.* parameters, passed to the backend.
    backend_options: dict = field(default_factory=dict)
    crf: CrfSettings = field(default_factory=CrfSettings)
    # CRF parameter names set explicitly; the others come from the model's fitted ones (spec.crf).
    # None: a parameter still at its default counts as not set.
    crf_explicit: tuple | None = None


# Output pixels per network pixel from which the colour mask is looked up at network size.
COLOR_AT_NETWORK_SIZE_RATIO = 4


@dataclass
class SegmentationResult:
    label: np.ndarray  # H×W uint8 (uint16 above 254 classes), input image size
    confidence: np.ndarray  # H×W float32 in [0, 1]: the winning class's probability
    probabilities: np.ndarray | None  # H×W×C float32, only when asked for
    timings_ms: dict[str, float]  # preprocess, inference, crf, postprocess
    # The network-size label ``label`` was resized from by nearest neighbour (None: not resized).
    network_label: np.ndarray | None = None

    @property
    def total_ms(self) -> float:
        """Wall-clock time of the whole pipeline: its stages, not their ``*_cpu`` twins."""
        return sum(value for stage, value in self.timings_ms.items() if not stage.endswith("_cpu"))

    def color_mask(self, palette: np.ndarray) -> np.ndarray:
        """Colour the label; from the network-size label where that has far fewer pixels.

        Same pixels either way (nearest neighbour); 1.5 against 2.1 ms at 1080×1920 from
        240×320, but 0.56 against 0.34 ms at 480×640 from 360×480, where resizing three
        channels costs more than looking up the larger label (``scripts/output_stages.py``).
        """
        small = self.network_label
        if small is None or small.size * COLOR_AT_NETWORK_SIZE_RATIO > self.label.size:
            return colorize(self.label, palette)
        return colorize(small, palette, size=self.label.shape)


class SegmentationPipeline:
    """One backend plus the pre/post-processing around it. Not thread-safe: one caller at once."""

    def __init__(
        self,
        backend,
        *,
        num_classes: int,
        input_size: tuple[int, int],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crf: CrfSettings | None = None,
        tensor_stages: bool | None = None,
    ):
        self.backend = backend
        self.num_classes = int(num_classes)
        self.input_height, self.input_width = (int(v) for v in input_size)
        self._preprocess = Preprocessor(self.input_height, self.input_width, mean, std)
        self.crf = crf or CrfSettings()
        self.fitted_crf: dict = {}  # the model's CRF parameters from tune-crf (spec.crf)
        self.label_dtype = np.uint8 if self.num_classes <= 254 else np.uint16
        # Torch-tensor stages where they pay: on a GPU (one upload, everything there); on a CPU
        # OpenCV's uint8 resizing is faster, so only when asked (the tests run them there).
        device = getattr(backend, "tensor_device", None)
        if tensor_stages is None:
            tensor_stages = device is not None and device.type != "cpu"
        self._tensors = None
        if tensor_stages:
            from seg_ros.pipeline_torch import TorchStages

            self._tensors = TorchStages(
                backend,
                input_size=(self.input_height, self.input_width),
                mean=mean,
                std=std,
                label_dtype=self.label_dtype,
            )

    def set_crf(self, crf: CrfSettings, explicit: tuple | None = None) -> None:
        """Swap CRF settings (the model's fitted ones fill those not set); from the next frame."""
        self.crf = crf.with_model_parameters(self.fitted_crf, explicit)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB (or mono) uint8 H×W[×3] -> (network-size RGB uint8, 1×3×h×w float32 batch)."""
        return self._preprocess(image)

    def process(self, image: np.ndarray, want_probabilities: bool = False) -> SegmentationResult:
        """Segment one image (see ``process_batch``)."""
        return self.process_batch([image], want_probabilities)[0]

    def process_batch(
        self, images: list[np.ndarray], want_probabilities: bool = False
    ) -> list[SegmentationResult]:
        """Segment images of any sizes in one backend call (chunks of the backend's batch limit).

        A backend that runs on torch tensors (``tensor_device``) gets resizing,
        normalisation and the head's outputs resized back on its device
        (seg_ros.pipeline_torch); the dense CRF and other backends run here on numpy.
        Every result's timings hold the whole batch's inference time; ``*_cpu`` entries are
        this thread's CPU time for a stage (what it costs, whatever else runs).
        """
        crf = self.crf
        need_full = want_probabilities or crf.enabled
        names = FULL_OUTPUTS if need_full else COMPACT_OUTPUTS
        if self._tensors is not None and not crf.enabled:
            return self._tensors.process(images, names, want_probabilities)
        prepared, preprocess_ms = [], []
        for image in images:
            t0, c0 = time.perf_counter(), time.thread_time()
            prepared.append(self.preprocess(image))
            preprocess_ms.append(
                ((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3)
            )
        t1 = time.perf_counter()
        out = self._infer(np.concatenate([batch for _, batch in prepared]), names)
        inference_ms = (time.perf_counter() - t1) * 1e3
        results = []
        for i, (image, (small, _)) in enumerate(zip(images, prepared)):
            timings = {
                "preprocess": preprocess_ms[i][0],
                "preprocess_cpu": preprocess_ms[i][1],
                "inference": inference_ms,
            }
            own = {name: value[i] for name, value in out.items()}
            results.append(self._postprocess(image, small, own, timings, want_probabilities, crf))
        return results

    def _infer(self, batch: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        limit = max(1, int(getattr(self.backend, "max_batch", 1)))
        if len(batch) <= limit:
            return self.backend.infer(batch, names)
        parts = [
            self.backend.infer(batch[i : i + limit], names) for i in range(0, len(batch), limit)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    def _postprocess(
        self,
        image: np.ndarray,
        small: np.ndarray,
        out: dict[str, np.ndarray],
        timings: dict[str, float],
        want_probabilities: bool,
        crf: CrfSettings,
    ) -> SegmentationResult:
        t2 = time.perf_counter()
        probabilities = None
        label, confidence = out["label"], out["confidence"]
        if "probabilities" in out:
            probabilities = out["probabilities"]
            if crf.enabled:
                probabilities = dense_crf(small, probabilities, **crf.kwargs())
                timings["crf"] = (time.perf_counter() - t2) * 1e3
                label = probabilities.argmax(axis=0)
                confidence = probabilities.max(axis=0)
        t3, c3 = time.perf_counter(), time.thread_time()

        height, width = image.shape[:2]
        label = label.astype(self.label_dtype, copy=False)
        confidence = confidence.astype(np.float32, copy=False)
        network_label = None
        if (height, width) != label.shape:
            network_label = label
            label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
            confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_LINEAR)
            np.clip(confidence, 0.0, 1.0, out=confidence)
        if want_probabilities:
            hwc = np.ascontiguousarray(probabilities.transpose(1, 2, 0), dtype=np.float32)
            if hwc.shape[:2] != (height, width):
                hwc = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
                if hwc.ndim == 2:  # OpenCV drops a single channel axis
                    hwc = hwc[..., None]
            probabilities = hwc
        else:
            probabilities = None
        timings["postprocess"] = (time.perf_counter() - t3) * 1e3
        timings["postprocess_cpu"] = (time.thread_time() - c3) * 1e3
        return SegmentationResult(label, confidence, probabilities, timings, network_label)


@dataclass
class BuiltPipeline:
    pipeline: SegmentationPipeline
    spec: object  # seg_ros.models.ModelSpec of the loaded model
    class_table: object  # seg_ros.classes.ClassTable
    backend_name: str


def build_pipeline(config: PipelineConfig) -> BuiltPipeline:
    """Load the model, start the backend and wrap both.

    Raises ValueError, FileNotFoundError or RuntimeError with the reason.
    """
    from seg_ros.backends import create_backend
    from seg_ros.classes import generic_table, load_class_table
    from seg_ros.models import load_model

    loaded = load_model(
        config.model,
        weights=config.weights,
        num_classes=config.num_classes,
        class_table=config.class_table,
        **config.model_options,
    )
    spec = loaded.spec
    table_name = config.class_table or spec.class_table
    table = load_class_table(table_name) if table_name else generic_table(spec.num_classes)
    if table.num_classes != spec.num_classes:
        if config.class_table:
            raise ValueError(
                f"class table {table.name!r} has {table.num_classes} classes but the model "
                f"predicts {spec.num_classes}"
            )
        table = generic_table(spec.num_classes)
    height = config.input_height or spec.input_height
    width = config.input_width or spec.input_width
    backend = create_backend(
        config.backend,
        loaded,
        height=height,
        width=width,
        precision=config.precision,
        threads=config.threads,
        options=dict(config.backend_options),
    )
    LOG.info("model %s (%s) on %s at %dx%d", spec.family, spec.name, backend.name, width, height)
    pipeline = SegmentationPipeline(
        backend,
        num_classes=spec.num_classes,
        input_size=(height, width),
        mean=spec.mean,
        std=spec.std,
    )
    pipeline.fitted_crf = dict(spec.crf)
    pipeline.set_crf(config.crf, config.crf_explicit)
    return BuiltPipeline(pipeline, spec, table, backend.name)
