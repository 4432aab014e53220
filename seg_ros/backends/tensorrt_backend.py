"""TensorRT 10: build an engine from the exported head graph, cache it, run it on torch CUDA buffers.

Building (FP32, FP16, or INT8 with an entropy calibrator and a calibration
cache; workspace limit; timing cache; optional Jetson DLA core with GPU
fallback) takes minutes on a Jetson, so it shows progress (TensorRT's
IProgressMonitor -> tqdm) and stores the result in the EngineCache, keyed by
everything that makes an engine valid. Inference binds torch CUDA tensors as
I/O (set_tensor_address) and runs execute_async_v3 on a torch CUDA stream;
no pycuda. ``tensorrt`` is imported only when this backend is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_ros.backends.base import INPUT_NAME, Backend, BackendError, BackendOptions
from seg_ros.backends.calibration import CalibrationSource
from seg_ros.backends.devices import gpu_identity, import_tensorrt
from seg_ros.backends.engine_cache import EngineCache, engine_io, engine_key
from seg_ros.backends.onnx_cache import atomic_write, digest, export_key, prepare_onnx_for_tensorrt

LOG = logging.getLogger(__name__)


@dataclass
class EngineArtifact:
    path: Path  # the cached engine file
    key: dict  # what it was built for (engine_cache.engine_key)
    payload: bytes  # the serialized engine
    built: bool  # built now (False: loaded from the cache)
    gpu: str


def check_engine_request(precision: str, options: BackendOptions) -> CalibrationSource | None:
    """Settings TensorRT would reject, caught before any work; the INT8 calibration source if any."""
    if options.dla_core >= 0 and precision == "fp32":
        raise BackendError(
            "a DLA core runs fp16 or int8 only: set precision fp16 (or int8), or dla_core -1"
        )
    if precision != "int8":
        return None
    try:
        return CalibrationSource.from_options(options)
    except (ValueError, FileNotFoundError) as exc:
        raise BackendError(f"INT8 calibration: {exc}") from exc


def prepare_engine(
    loaded,
    *,
    height: int,
    width: int,
    precision: str,
    options: BackendOptions,
    force: bool = False,
) -> EngineArtifact:
    """The engine for this model and settings: from the cache when its key matches, else built now."""
    calibration = check_engine_request(precision, options)
    trt = import_tensorrt()
    gpu_name, capability = gpu_identity()
    network_key = export_key(loaded, height, width, head=True)
    calibration_key = {
        "network": network_key,
        "data": calibration.fingerprint() if calibration else {},
        "tensorrt": trt.__version__,
    }
    key = engine_key(
        network_key,
        precision=precision,
        calibration=digest(calibration_key),
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        dla_core=options.dla_core,
    )
    cache = EngineCache(options.engine_cache)
    name = loaded.spec.name
    path = cache.engine_path(name, height, width, precision, options.dla_core)

    def build() -> bytes:
        onnx_path = prepare_onnx_for_tensorrt(loaded, height, width)
        calibrator = None
        if calibration is not None:
            LOG.info(
                "INT8 calibration with up to %d frames of %s",
                calibration.frames,
                calibration.describe(),
            )
            calibrator = _entropy_calibrator(
                trt,
                calibration.batches(height, width, loaded.spec.mean, loaded.spec.std),
                calibration.count(),
                (1, 3, height, width),
                cache.calibration_cache_path(name, height, width, calibration_key),
            )
        return build_serialized_engine(
            trt,
            onnx_path,
            precision=precision,
            workspace_mb=options.workspace_mb,
            dla_core=options.dla_core,
            calibrator=calibrator,
            timing_cache=cache.timing_cache_path(trt.__version__, gpu_name, capability),
        )

    io = engine_io(loaded.spec.num_classes, height, width)
    payload, built = cache.load_or_build(path, key, io, build, force=force)
    return EngineArtifact(path, key, payload, built, gpu_name)


def build_serialized_engine(
    trt,
    onnx_path: Path,
    *,
    precision: str,
    workspace_mb: int,
    dla_core: int,
    calibrator,
    timing_cache: Path,
) -> bytes:
    """Parse the ONNX file and build a serialized engine with the given settings."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_mb > 0:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(
            trt.BuilderFlag.FP16
        )  # int8 engines fall back to fp16, not fp32, where int8 is slower
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = (
            calibrator  # implicit quantization: deprecated in 10.1+, still supported in 10.x
        )
    if dla_core >= 0:
        if dla_core >= builder.num_DLA_cores:
            raise BackendError(
                f"DLA core {dla_core} requested but this device has {builder.num_DLA_cores} DLA cores"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        LOG.warning("TensorRT rejected the timing cache %s; starting a new one", timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor
    LOG.info(
        "building a TensorRT %s engine from %s%s: this takes a few minutes on a Jetson",
        precision,
        onnx_path.name,
        f" on DLA core {dla_core}" if dla_core >= 0 else "",
    )
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        monitor.close()
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build an engine from {onnx_path} (its errors are logged above)"
        )
    timing = config.get_timing_cache()
    if timing is not None:
        atomic_write(timing_cache, lambda tmp: tmp.write_bytes(bytes(timing.serialize())))
    return bytes(serialized)


def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int8: "int8"}
    if hasattr(trt, "int64"):
        names[trt.int64] = "int64"
    return names.get(dtype, str(dtype))


class TensorRTBackend(Backend):
    """Runs a cached (or freshly built) engine; with ``build_only`` it only makes sure the engine exists."""

    def __init__(
        self,
        loaded,
        *,
        height: int,
        width: int,
        precision: str = "fp16",
        options: BackendOptions | None = None,
    ):
        options = options or BackendOptions()
        artifact = prepare_engine(
            loaded, height=height, width=width, precision=precision, options=options
        )
        self.engine_path = artifact.path
        self.engine_built = artifact.built
        dla = f" DLA{options.dla_core}" if options.dla_core >= 0 else ""
        super().__init__(
            name=f"tensorrt:{artifact.gpu}{dla}",
            precision=precision,
            input_shape=(1, 3, height, width),
            num_classes=loaded.spec.num_classes,
        )
        self._context = None
        if options.build_only:
            return
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if options.dla_core >= 0:
            self._runtime.DLA_core = options.dla_core
        engine = self._runtime.deserialize_cuda_engine(artifact.payload)
        if engine is None and not artifact.built:
            LOG.warning("TensorRT could not deserialize %s; rebuilding it", artifact.path)
            artifact = prepare_engine(
                loaded,
                height=height,
                width=width,
                precision=precision,
                options=options,
                force=True,
            )
            engine = self._runtime.deserialize_cuda_engine(artifact.payload)
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialize the engine it just built ({artifact.path})"
            )
        self._engine = engine
        io = engine_io(loaded.spec.num_classes, height, width)
        found = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            found[name] = (
                is_input,
                list(engine.get_tensor_shape(name)),
                _dtype_name(trt, engine.get_tensor_dtype(name)),
            )
        expected = {
            name: (name == INPUT_NAME, spec["shape"], spec["dtype"]) for name, spec in io.items()
        }
        if found != expected:
            raise BackendError(f"engine {artifact.path} has I/O {found}, expected {expected}")
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._device, self._host = {}, {}
        for name, spec in io.items():
            dtype = getattr(torch, spec["dtype"])
            self._device[name] = torch.empty(spec["shape"], dtype=dtype, device="cuda")
            self._host[name] = torch.empty(spec["shape"], dtype=dtype, pin_memory=True)
            if not self._context.set_tensor_address(name, self._device[name].data_ptr()):
                raise BackendError(f"TensorRT refused the buffer for {name!r}")
        torch.cuda.synchronize()

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError(
                f"{self.name} was started with build_only (or closed): it cannot infer"
            )
        torch = self._torch
        self._host[INPUT_NAME].numpy()[...] = batch
        with torch.cuda.stream(self._stream):
            self._device[INPUT_NAME].copy_(self._host[INPUT_NAME], non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed ({self.engine_path})")
            for name in outputs:
                self._host[name].copy_(self._device[name], non_blocking=True)
        self._stream.synchronize()
        return {name: self._host[name].numpy().copy() for name in outputs}

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._device, self._host = {}, {}


def _logger(trt):
    """A TensorRT logger that writes into Python logging (so ROS sees build errors)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                LOG.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                LOG.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.INFO:
                LOG.debug("TensorRT: %s", msg)

    return _Logger()


def _progress_monitor(trt):
    """Tqdm bars for TensorRT's build phases, nested as TensorRT nests them."""
    from tqdm import tqdm

    class _BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict = {}
            self._depth: dict = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=phase_name, position=depth, leave=depth == 0, unit="step"
                )

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(max(0, step + 1 - bar.n))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                self._depth.pop(phase_name, None)
                if bar is not None:
                    bar.close()

        def close(self):
            with self._lock:
                for bar in self._bars.values():
                    bar.close()
                self._bars.clear()

    return _BuildProgress()


def _entropy_calibrator(
    trt, batches: Iterator[np.ndarray], count: int, shape: tuple, cache_path: Path
):
    """IInt8EntropyCalibrator2 fed one frame at a time through a torch CUDA buffer, with a calibration cache."""
    import torch
    from tqdm import tqdm

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._buffer = torch.empty(shape, dtype=torch.float32, device="cuda")
            self._bar = None

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            try:
                batch = next(self._batches, None)
            except Exception as exc:  # an exception must not cross into TensorRT
                LOG.error("INT8 calibration data failed: %s", exc)
                batch = None
            if batch is None:
                if self._bar is not None:
                    self._bar.close()
                return None
            if self._bar is None:
                self._bar = tqdm(total=count, desc="INT8 calibration", unit="frame")
            self._buffer.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            self._bar.update(1)
            return [int(self._buffer.data_ptr())]

        def read_calibration_cache(self):
            if cache_path.is_file():
                LOG.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(cache)))
            LOG.info("wrote INT8 calibration cache %s", cache_path)

    return _Calibrator()
