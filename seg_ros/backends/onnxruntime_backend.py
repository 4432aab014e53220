"""ONNX Runtime inference on the exported head graph: the default without a GPU.

CPU provider with a configurable thread count, and the CUDA or TensorRT
execution providers where the installed onnxruntime build has them. INT8 runs
the QDQ graph of seg_ros.backends.quantize (the CPU profile on the CPU, the
TensorRT profile on the GPU providers), calibrated from the user's frames or
the table shipped with the weights. A graph with a symbolic batch (the export's
default) runs the frames of several cameras in one ``session.run``; a static
batch-1 graph (an older export) takes them one at a time.
"""

from __future__ import annotations

import logging

import numpy as np

from seg_ros.backends.base import (
    INPUT_NAME,
    MAX_BATCH,
    OUTPUT_NAMES,
    Backend,
    BackendError,
    BackendOptions,
)

LOG = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            f"ONNX Runtime is not installed ({exc}): pip install onnxruntime "
            "(or onnxruntime-gpu for CUDA)"
        ) from exc
    return onnxruntime


def cuda_provider_usable() -> bool:
    """Tell whether the installed onnxruntime has the CUDA provider and torch sees a GPU."""
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from seg_ros.backends.devices import cuda_available

    return cuda_available()


def _int8_graph(loaded, height: int, width: int, device: str, options):
    """Return the QDQ INT8 graph for this provider (quantised now unless cached)."""
    from seg_ros.backends.calibration import resolve_calibration
    from seg_ros.backends.quantize import cpu_profile, quantized_onnx

    # No calibration data is the user's to fix, not a reason for `auto` to try another backend:
    # ValueError / FileNotFoundError go through as they are.
    calibration = resolve_calibration(options, loaded.spec)
    profile = cpu_profile() if device == "cpu" else "tensorrt"
    return quantized_onnx(loaded, height, width, calibration, profile=profile)


class OnnxRuntimeBackend(Backend):
    def __init__(
        self,
        loaded,
        *,
        height: int,
        width: int,
        precision: str = "fp32",
        threads: int = 0,
        device: str = "",
        engine_cache: str = "",
        workspace_mb: int = 0,
        options=None,
    ):
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        device = device or ("cuda" if cuda_provider_usable() else "cpu")
        wanted = _PROVIDERS.get(device)
        if wanted is None:
            raise BackendError(f"onnxruntime runs on {sorted(_PROVIDERS)}, not {device!r}")
        if wanted not in available:
            raise BackendError(
                f"this onnxruntime build has no {wanted} (it has {available}); "
                f"install onnxruntime-gpu for CUDA/TensorRT or use device 'cpu'"
            )
        if precision == "fp16" and device != "tensorrt":
            raise BackendError(
                f"onnxruntime with {wanted} runs fp32 or int8; use the tensorrt backend "
                "(or device tensorrt) for fp16"
            )

        options = options or BackendOptions()
        providers: list = []
        if device == "tensorrt":
            from seg_ros.backends.engine_cache import EngineCache

            folder = EngineCache(engine_cache).folder / "onnxruntime"
            folder.mkdir(parents=True, exist_ok=True)
            trt_options = {
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": True,
            }
            if workspace_mb > 0:
                trt_options["trt_max_workspace_size"] = workspace_mb << 20
            # One engine for batches 1..max_batch, instead of a rebuild at each new batch size.
            largest = f"{INPUT_NAME}:{options.max_batch}x3x{height}x{width}"
            trt_options["trt_profile_min_shapes"] = f"{INPUT_NAME}:1x3x{height}x{width}"
            trt_options["trt_profile_opt_shapes"] = largest
            trt_options["trt_profile_max_shapes"] = largest
            providers.append(("TensorrtExecutionProvider", trt_options))
        if device in ("tensorrt", "cuda"):
            providers.append("CUDAExecutionProvider")
        providers.append("CPUExecutionProvider")

        if precision == "int8":
            path = _int8_graph(loaded, height, width, device, options)
        else:
            from seg_ros.backends.onnx_cache import cached_onnx

            path = cached_onnx(loaded, height, width, head=True)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads sleep instead of spinning: in the node they would otherwise burn the
        # cores that decoding, colouring and publishing the previous frame need.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads > 0:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"ONNX Runtime could not load {path}: {exc}") from exc
        active = self._session.get_providers()
        if active[0] != wanted:
            raise BackendError(
                f"ONNX Runtime fell back to {active[0]} instead of {wanted} "
                "(see its log above for the missing library)"
            )
        inputs = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        shape = list(inputs[0].shape) if inputs else []
        static = bool(shape) and isinstance(shape[0], int)  # else a symbolic batch: any
        if (
            [i.name for i in inputs] != [INPUT_NAME]
            or shape[1:] != [3, height, width]
            or (static and shape[0] != 1)
            or not set(OUTPUT_NAMES) <= outputs
        ):
            raise BackendError(
                f"{path} does not have the head's I/O "
                f"(image Nx3x{height}x{width}, N symbolic or 1 -> {OUTPUT_NAMES})"
            )
        if static:
            max_batch = 1
        else:  # the TensorRT provider's engine stops at its profile's largest batch
            max_batch = options.max_batch if device == "tensorrt" else MAX_BATCH
        super().__init__(
            name=f"onnxruntime:{active[0]}",
            precision=precision,
            input_shape=(1, 3, height, width),
            num_classes=loaded.spec.num_classes,
            max_batch=max_batch,
        )
        self.onnx_path = path
        self.computes_on_cpu = active[0] == "CPUExecutionProvider"

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        results = self._session.run(list(outputs), {INPUT_NAME: batch})
        return dict(zip(outputs, results))

    def close(self) -> None:
        self._session = None
