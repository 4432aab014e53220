"""The one small interface every inference backend implements, and its options.

The pipeline only ever calls ``infer(batch, outputs)`` and ``close()``; the
names, shapes and dtypes of the outputs are those of the exported ONNX head
(seg_ros.export): ``label`` N×H×W int32, ``confidence`` N×H×W float32,
``probabilities`` N×C×H×W float32.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from seg_ros.choices import DEVICES as _DEVICES

OUTPUT_NAMES = ("label", "confidence", "probabilities")
INPUT_NAME = "image"
# The batch limit of a backend that takes any batch (PyTorch, a symbolic ONNX batch): it only
# bounds memory.
MAX_BATCH = 64
DEVICES = ("", *_DEVICES)  # "" = best available


class BackendError(RuntimeError):
    """A backend could not start (missing library, no GPU, unsupported precision, failed build)."""


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings from the node's ``tensorrt.*`` and ``calibration.*`` parameters or the CLI.

    Empty strings and the defaults mean "let the backend decide".
    """

    engine_cache: str = ""  # folder for TensorRT engines; "" = seg_ros.paths.cache_dir()/engines
    workspace_mb: int = (
        0  # TensorRT builder workspace limit; 0 = TensorRT's default (all device memory)
    )
    dla_core: int = -1  # Jetson DLA core for TensorRT; -1 = GPU only
    calibration_images: str = ""  # INT8: folder of images
    calibration_bag: str = ""  # INT8: rosbag2 (folder or .mcap/.db3) ...
    calibration_topic: str = ""  # ... and its image topic
    calibration_frames: int = 100  # INT8: frames drawn evenly from the source
    build_only: bool = (
        False  # TensorRT: build/verify the engine, do not start an execution context
    )
    # TensorRT 10 only: fp16/int8 from the fp32 graph with builder flags and TensorRT's entropy
    # calibrator (weakly typed, removed in TensorRT 11) instead of the fp16 / QDQ graph.
    implicit_precision: bool = False
    # torch: cpu|cuda; onnxruntime: cpu|cuda|tensorrt (execution provider); "" = best available
    device: str = ""
    # The largest batch the caller will send (the node: one frame per camera); TensorRT builds
    # its optimisation profile for 1..max_batch.
    max_batch: int = 1

    @classmethod
    def from_dict(cls, options: dict | None) -> BackendOptions:
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in (options or {}).items():
            if key not in known:
                raise ValueError(
                    f"unknown backend option {key!r}: expected one of {sorted(known)}"
                )
            if value is None:
                continue
            default = known[key].default
            try:
                if isinstance(default, bool):
                    value = (
                        value
                        if isinstance(value, bool)
                        else str(value).lower() in ("1", "true", "yes")
                    )
                else:
                    value = type(default)(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"backend option {key!r}: cannot use {value!r} ({exc})") from exc
            values[key] = value
        result = cls(**values)
        if result.workspace_mb < 0:
            raise ValueError(
                f"backend option 'workspace_mb' must be >= 0, got {result.workspace_mb}"
            )
        if result.dla_core < -1:
            raise ValueError(
                "backend option 'dla_core' must be -1 (GPU) or a DLA core index, "
                f"got {result.dla_core}"
            )
        if result.max_batch < 1:
            raise ValueError(f"backend option 'max_batch' must be >= 1, got {result.max_batch}")
        if result.calibration_frames <= 0:
            raise ValueError(
                "backend option 'calibration_frames' must be positive, "
                f"got {result.calibration_frames}"
            )
        if result.device not in DEVICES:
            raise ValueError(
                f"backend option 'device' must be one of {DEVICES[1:]} or empty, "
                f"got {result.device!r}"
            )
        return result


class Backend:
    """Runs the network on N×3×H×W float32 batches, N up to ``max_batch``; subclasses do ``_run``.

    ``input_shape`` is the batch-1 shape. A backend that computes on torch tensors sets
    ``tensor_device`` and implements ``infer_tensor`` (same outputs as torch tensors on that
    device), so the pipeline can resize and normalise there (seg_ros.pipeline_torch).
    """

    tensor_device = None  # torch.device, or None for numpy only
    # The network's threads run on the host's cores (not on a GPU): the node then publishes
    # between inferences instead of during them (seg_ros.node, parameter ``pipelining``).
    computes_on_cpu = True

    def __init__(
        self,
        *,
        name: str,
        precision: str,
        input_shape: tuple[int, int, int, int],
        num_classes: int,
        reason: str = "",
        max_batch: int = 1,
    ):
        self.max_batch = int(max_batch)
        self.name = name
        self.precision = precision
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.reason = reason

    def infer(
        self, batch: np.ndarray, outputs: tuple[str, ...] = ("label", "confidence")
    ) -> dict[str, np.ndarray]:
        """Return the requested subset of label / confidence / probabilities for ``batch``."""
        outputs = tuple(outputs)
        if not outputs:
            raise ValueError(f"ask for at least one output of {OUTPUT_NAMES}")
        unknown = [name for name in outputs if name not in OUTPUT_NAMES]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}: a backend produces {OUTPUT_NAMES}")
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise ValueError(
                f"the batch must be a float32 numpy array, got {type(batch).__name__} "
                f"{getattr(batch, 'dtype', '')}"
            )
        if batch.shape[1:] != self.input_shape[1:] or not 1 <= len(batch) <= self.max_batch:
            raise ValueError(
                f"{self.name} was built for input {self.input_shape} (batches of 1 to "
                f"{self.max_batch}), got a batch of shape {batch.shape}"
            )
        return self._run(np.ascontiguousarray(batch), outputs)

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_tensor(self, batch, outputs: tuple[str, ...]) -> dict:
        """Run like ``infer`` on a torch tensor on ``tensor_device``; results stay there."""
        raise NotImplementedError(f"{self.name} computes on numpy arrays only")

    def close(self) -> None:
        """Release the session / engine; the backend cannot be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.precision} input={self.input_shape}>"


def head_io(
    num_classes: int, height: int, width: int, batch: int = 1
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map name -> (shape, dtype) of the head's input and outputs, as every backend gives them.

    ``batch`` -1 is a dynamic batch, as TensorRT reports it.
    """
    return {
        INPUT_NAME: ((batch, 3, height, width), "float32"),
        "label": ((batch, height, width), "int32"),
        "confidence": ((batch, height, width), "float32"),
        "probabilities": ((batch, num_classes, height, width), "float32"),
    }
