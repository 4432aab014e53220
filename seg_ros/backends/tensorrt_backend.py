"""TensorRT 10 and 11: build an engine from the exported graph, cache it, run it on CUDA buffers.

Each precision is built strongly typed: TensorRT parses a graph whose tensors
already carry their types and keeps them (NetworkDefinitionCreationFlag
STRONGLY_TYPED on 10.x; 11.x has nothing else). fp32 parses the fp32 head
graph; fp16 the fp16 graph of seg_ros.export (fp16 with the head kept fp32);
int8 the QDQ graph of seg_ros.backends.quantize, the very file ONNX Runtime
runs for CPU INT8, calibrated from images, a bag or the model's shipped table.
TensorRT 10 also still has the weakly typed way (fp32 graph, BuilderFlag
FP16/INT8, entropy calibrator): used only when asked (``implicit_precision``)
and refused on 11, which removed it. Other major versions are refused with a
BackendError, so ``auto`` falls back to the next backend.

Building (workspace limit, timing cache, optional Jetson DLA core with GPU
fallback) takes minutes on a Jetson, so it shows progress (IProgressMonitor
-> tqdm) and stores the result in the EngineCache, keyed by everything that
makes an engine valid. The exported graph's batch is dynamic, so the build
adds an optimisation profile for batches 1 to ``max_batch`` (the node's number
of cameras), tuned for ``max_batch``; each run sets its batch with
set_input_shape. Inference binds torch CUDA tensors as I/O (set_tensor_address,
buffers for ``max_batch`` frames) and runs execute_async_v3 on a torch CUDA
stream; no pycuda. ``tensorrt`` is imported only when this backend is used.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_ros.backends.base import INPUT_NAME, Backend, BackendError, BackendOptions
from seg_ros.backends.devices import (
    check_tensorrt_version,
    gpu_identity,
    import_tensorrt,
)
from seg_ros.backends.engine_cache import EngineCache, engine_io, engine_key
from seg_ros.backends.onnx_cache import (
    atomic_write,
    check_onnx_for_tensorrt,
    digest,
    export_key,
    prepare_onnx_for_tensorrt,
)

LOG = logging.getLogger(__name__)

# Where the I/O buffers live: "cuda" on a real GPU; the tests' TensorRT stand-in runs on "cpu".
BUFFER_DEVICE = "cuda"


@dataclass
class EngineArtifact:
    path: Path  # the cached engine file
    key: dict  # what it was built for (engine_cache.engine_key)
    payload: bytes  # the serialized engine
    built: bool  # built now (False: loaded from the cache)
    gpu: str


@dataclass(frozen=True)
class TensorRTFeatures:
    """What the installed TensorRT's Python bindings offer, read from the module itself."""

    version: str
    major: int
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    weak_typing: bool  # BuilderFlag.FP16/INT8 and IInt8EntropyCalibrator2 exist (10.x)


def tensorrt_features(trt) -> TensorRTFeatures:
    """Read the features of ``trt``; BackendError for a major version seg_ros does not know."""
    version = str(trt.__version__)
    major = check_tensorrt_version(version)
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = trt.BuilderFlag
    return TensorRTFeatures(
        version=version,
        major=major,
        strongly_typed_flag=hasattr(creation, "STRONGLY_TYPED"),
        weak_typing=hasattr(flags, "FP16")
        and hasattr(flags, "INT8")
        and hasattr(trt, "IInt8EntropyCalibrator2"),
    )


def choose_typing(features: TensorRTFeatures, precision: str, implicit: bool) -> str:
    """Choose 'strong' (the graph carries the precision) or 'weak' (builder flags)."""
    if precision == "fp32" or not implicit:
        return "strong"
    if not features.weak_typing:
        raise BackendError(
            f"TensorRT {features.version} has no implicit precision (BuilderFlag.FP16/INT8 and "
            "the INT8 calibrators were removed in TensorRT 11): unset implicit_precision to build "
            f"the strongly typed {precision} graph"
        )
    LOG.warning(
        "building %s the implicit (weakly typed) way, deprecated since TensorRT 10.12 and "
        "removed in 11",
        precision,
    )
    return "weak"


def check_engine_request(precision: str, options: BackendOptions, spec=None):
    """Refuse settings TensorRT would reject before any work; return the INT8 calibration.

    Returns None, a CalibrationSource (frames) or a quantize.RangeTable (the
    table shipped with ``spec``'s weights).
    """
    if options.dla_core >= 0 and precision == "fp32":
        raise BackendError(
            "a DLA core runs fp16 or int8 only: set precision fp16 (or int8), or dla_core -1"
        )
    if precision != "int8":
        return None
    from seg_ros.backends.calibration import CalibrationSource, resolve_calibration

    try:
        if spec is None:
            return CalibrationSource.from_options(options)
        return resolve_calibration(options, spec)
    except (ValueError, FileNotFoundError) as exc:
        raise BackendError(f"INT8 calibration: {exc}") from exc


def _calibration_id(calibration, typing: str) -> str:
    """Identify the INT8 ranges an engine was built with (data, and how they became INT8)."""
    if calibration is None:
        return ""
    from seg_ros.backends.quantize import PROFILES, SETTINGS, RangeTable

    if isinstance(calibration, RangeTable):
        data = {"table": calibration.fingerprint()}
    else:
        data = {"frames": calibration.fingerprint()}
    if typing == "strong":
        method = {"settings": SETTINGS, "profile": PROFILES["tensorrt"]}
    else:
        method = {"calibrator": "IInt8EntropyCalibrator2"}
    return digest({"data": data, "method": method})


def tensorrt_graph(
    loaded, height: int, width: int, precision: str, typing: str, calibration, folder: Path
) -> Path:
    """Write (or find) the ONNX file TensorRT parses for this precision, checked for its parser.

    fp32 and weakly typed builds parse the fp32 head graph; a strongly typed
    fp16 build the fp16 graph, int8 the QDQ graph with its int32 biases folded
    (both written into ``folder``).
    """
    from seg_ros.export import convert_to_fp16, for_tensorrt_qdq, tensorrt_qdq_problems

    fp32 = prepare_onnx_for_tensorrt(loaded, height, width)
    if typing == "weak" or precision == "fp32":
        return fp32
    if precision == "fp16":
        path = convert_to_fp16(fp32, Path(folder) / f"{fp32.stem}-fp16.onnx")
    else:
        from seg_ros.backends.quantize import quantized_onnx

        qdq = quantized_onnx(loaded, height, width, calibration, profile="tensorrt")
        path = for_tensorrt_qdq(qdq, Path(folder) / f"{qdq.stem}-tensorrt.onnx")
        problems = tensorrt_qdq_problems(path)
        if problems:
            raise BackendError(f"{path}: TensorRT cannot build this INT8 graph: {problems}")
    check_onnx_for_tensorrt(path, height, width)
    return path


def prepare_engine(
    loaded,
    *,
    height: int,
    width: int,
    precision: str,
    options: BackendOptions,
    force: bool = False,
) -> EngineArtifact:
    """Get the engine for this model and settings: cached if its key matches, else built now."""
    calibration = check_engine_request(precision, options, loaded.spec)
    trt = import_tensorrt()
    features = tensorrt_features(trt)
    typing = choose_typing(features, precision, options.implicit_precision)
    if typing == "weak" and precision == "int8" and not hasattr(calibration, "batches"):
        raise BackendError(
            "implicit INT8 calibrates TensorRT's entropy calibrator on frames: set "
            "calibration_images or calibration_bag (the shipped table is for the QDQ graph)"
        )
    gpu = gpu_identity()
    network_key = export_key(loaded, height, width, head=True)
    key = engine_key(
        network_key,
        precision=precision,
        typing=typing,
        calibration=_calibration_id(calibration, typing),
        tensorrt_version=features.version,
        gpu=gpu,
        dla_core=options.dla_core,
        max_batch=options.max_batch,
    )
    cache = EngineCache(options.engine_cache)
    name = loaded.spec.name
    path = cache.engine_path(
        name, height, width, precision, options.dla_core, max_batch=options.max_batch
    )

    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix="seg_ros-trt-") as tmp:
            try:
                onnx_path = tensorrt_graph(
                    loaded, height, width, precision, typing, calibration, Path(tmp)
                )
            except (ValueError, RuntimeError, OSError) as exc:
                if isinstance(exc, BackendError):
                    raise
                raise BackendError(f"preparing the {precision} graph failed: {exc}") from exc
            calibrator = None
            if typing == "weak" and precision == "int8":
                calibrator = _entropy_calibrator(
                    trt,
                    calibration.batches(height, width, loaded.spec.mean, loaded.spec.std),
                    calibration.count(),
                    (1, 3, height, width),
                    cache.calibration_cache_path(name, height, width, key),
                )
            payload = build_serialized_engine(
                trt,
                onnx_path,
                precision=precision,
                typing=typing,
                workspace_mb=options.workspace_mb,
                dla_core=options.dla_core,
                max_batch=options.max_batch,
                calibrator=calibrator,
                timing_cache=cache.timing_cache_path(features.version, gpu),
            )
        return payload

    io = engine_io(loaded.spec.num_classes, height, width)
    try:
        payload, built = cache.load_or_build(path, key, io, build, force=force)
    except (AttributeError, TypeError) as exc:  # a binding this version does not have
        raise BackendError(
            f"TensorRT {features.version}'s Python API differs from what seg_ros uses: {exc}"
        ) from exc
    return EngineArtifact(path, key, payload, built, gpu.name)


def build_serialized_engine(
    trt,
    onnx_path: Path,
    *,
    precision: str,
    typing: str = "strong",
    workspace_mb: int,
    dla_core: int,
    max_batch: int = 1,
    calibrator=None,
    timing_cache: Path,
) -> bytes:
    """Parse the ONNX file and build a serialized engine with the given settings."""
    features = tensorrt_features(trt)
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0  # explicit batch is the only mode since TensorRT 10
    if typing == "strong" and features.strongly_typed_flag:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    _add_batch_profile(builder, network, config, max_batch, calibrating=calibrator is not None)
    if workspace_mb > 0:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if typing == "weak":
        if not features.weak_typing:
            raise BackendError(f"TensorRT {features.version} cannot build weakly typed networks")
        if precision in ("fp16", "int8"):
            # int8 engines fall back to fp16, not fp32, where int8 is slower
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
    if dla_core >= 0:
        if dla_core >= builder.num_DLA_cores:
            raise BackendError(
                f"DLA core {dla_core} requested but this device has {builder.num_DLA_cores} "
                "DLA cores"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    _use_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor
    LOG.info(
        "building a TensorRT %s %s engine (%s typed) from %s%s: this takes a few minutes on "
        "a Jetson",
        features.version,
        precision,
        typing,
        onnx_path.name,
        f" on DLA core {dla_core}" if dla_core >= 0 else "",
    )
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        monitor.close()
    error = getattr(calibrator, "error", None)
    if error is not None:
        raise BackendError(f"INT8 calibration data failed ({error}): no engine was built")
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build an engine from {onnx_path} (its errors are logged above)"
        )
    timing = config.get_timing_cache()
    if timing is not None:
        atomic_write(timing_cache, lambda tmp: tmp.write_bytes(bytes(timing.serialize())))
    return bytes(serialized)


def _add_batch_profile(builder, network, config, max_batch: int, *, calibrating: bool) -> None:
    """Give a dynamic-batch network the optimisation profile TensorRT needs to build it.

    Batches 1..max_batch, tuned for max_batch (a full set of cameras). The
    implicit INT8 calibrator feeds one frame at a time: it gets a batch-1
    calibration profile. A static graph needs no profile.
    """
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [(t.name, tuple(int(d) for d in t.shape[1:])) for t in inputs if t.shape[0] == -1]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for name, rest in dynamic:
        profile.set_shape(name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT refused the optimisation profile for batches 1..{max_batch}")
    if calibrating:
        single = builder.create_optimization_profile()
        for name, rest in dynamic:
            single.set_shape(name, (1, *rest), (1, *rest), (1, *rest))
        if not config.set_calibration_profile(single):
            raise BackendError("TensorRT refused the batch-1 INT8 calibration profile")


def _use_timing_cache(config, path: Path) -> None:
    """Give the builder the saved tactic timings; a file it cannot read means a fresh cache."""
    cache = None
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception as exc:  # the bindings raise on a blob TensorRT cannot deserialize
            LOG.warning("cannot read the timing cache %s (%s); starting a new one", path, exc)
        else:
            if cache is None:
                LOG.warning(
                    "TensorRT could not read the timing cache %s; starting a new one", path
                )
        if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
            LOG.warning("TensorRT rejected the timing cache %s; starting a new one", path)
            cache = None
    if cache is None:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int8: "int8"}
    if hasattr(trt, "int64"):
        names[trt.int64] = "int64"
    return names.get(dtype, str(dtype))


def engine_io_found(trt, engine) -> dict:
    """Name -> (is input, shape, dtype) of a deserialized engine's I/O tensors."""
    found = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        found[name] = (
            engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            [int(d) for d in engine.get_tensor_shape(name)],
            _dtype_name(trt, engine.get_tensor_dtype(name)),
        )
    return found


class _Buffers:
    """The engine's I/O tensors on the device for ``batch`` frames, host copies, the stream.

    A run of fewer frames uses the first ones: the tensors are contiguous, so
    those are what TensorRT reads and writes for the smaller shape.
    """

    def __init__(self, torch, io: dict, device: str, batch: int):
        self.cuda = device == "cuda"
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.device, self.host = {}, {}
        for name, spec in io.items():
            dtype = getattr(torch, spec["dtype"])
            shape = [batch if d == -1 else d for d in spec["shape"]]
            self.device[name] = torch.empty(shape, dtype=dtype, device=device)
            self.host[name] = (
                torch.empty(shape, dtype=dtype, pin_memory=True)
                if self.cuda
                else self.device[name]
            )

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream if self.cuda else 0


class TensorRTBackend(Backend):
    """Runs a cached (or freshly built) engine; ``build_only`` only makes sure it exists."""

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
        dla = f" DLA{options.dla_core}" if options.dla_core >= 0 else ""
        super().__init__(
            name=f"tensorrt:{artifact.gpu}{dla}",
            precision=precision,
            input_shape=(1, 3, height, width),
            num_classes=loaded.spec.num_classes,
            max_batch=options.max_batch,
        )
        self._context = None
        self._record(artifact)
        if options.build_only:
            return
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._runtime = trt.Runtime(tensorrt_logger(trt))
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
            self._record(artifact)
            engine = self._runtime.deserialize_cuda_engine(artifact.payload)
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialize the engine it just built ({artifact.path})"
            )
        self._engine = engine
        io = engine_io(loaded.spec.num_classes, height, width)
        found = engine_io_found(trt, engine)
        expected = {
            name: (name == INPUT_NAME, spec["shape"], spec["dtype"]) for name, spec in io.items()
        }
        if found != expected:
            raise BackendError(f"engine {artifact.path} has I/O {found}, expected {expected}")
        largest = int(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
        if largest != self.max_batch:
            raise BackendError(
                f"engine {artifact.path} takes batches up to {largest}, not {self.max_batch}"
            )
        self._context = engine.create_execution_context()
        self._buffers = _Buffers(torch, io, BUFFER_DEVICE, self.max_batch)
        for name, tensor in self._buffers.device.items():
            if not self._context.set_tensor_address(name, tensor.data_ptr()):
                raise BackendError(f"TensorRT refused the buffer for {name!r}")
        if self._buffers.cuda:
            torch.cuda.synchronize()
        self.tensor_device = torch.device(BUFFER_DEVICE)  # the pipeline's stages can run there
        self.computes_on_cpu = False

    def _record(self, artifact: EngineArtifact) -> None:
        """Say which engine this backend runs and whether it was built on this start."""
        self.engine_path = artifact.path
        self.engine_built = artifact.built

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError(
                f"{self.name} was started with build_only (or closed): it cannot infer"
            )
        buffers, n = self._buffers, len(batch)
        self._set_batch(n)
        buffers.host[INPUT_NAME][:n].numpy()[...] = batch
        if buffers.cuda:
            with self._torch.cuda.stream(buffers.stream):
                buffers.device[INPUT_NAME][:n].copy_(
                    buffers.host[INPUT_NAME][:n], non_blocking=True
                )
                self._execute()
                for name in outputs:
                    buffers.host[name][:n].copy_(buffers.device[name][:n], non_blocking=True)
            buffers.stream.synchronize()
        else:
            self._execute()
        return {name: buffers.host[name][:n].numpy().copy() for name in outputs}

    def infer_tensor(self, batch, outputs: tuple[str, ...]) -> dict:
        """Run an N×3×H×W float32 tensor on ``tensor_device``; outputs stay there (copies).

        A batch larger than the engine's profile runs in chunks of ``max_batch``.
        """
        if self._context is None:
            raise RuntimeError(f"{self.name} was started with build_only (or closed)")
        torch, buffers = self._torch, self._buffers
        if tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"{self.name} takes N×{self.input_shape[1:]}, got {tuple(batch.shape)}"
            )
        results: dict = {name: [] for name in outputs}
        caller = torch.cuda.current_stream() if buffers.cuda else None
        for chunk in batch.to(torch.float32).split(self.max_batch):
            n = len(chunk)
            self._set_batch(n)
            if buffers.cuda:
                buffers.stream.wait_stream(caller)  # the input was made on the caller's stream
                with torch.cuda.stream(buffers.stream):
                    buffers.device[INPUT_NAME][:n].copy_(chunk)
                    self._execute()
                    for name in outputs:
                        results[name].append(buffers.device[name][:n].clone())
                caller.wait_stream(buffers.stream)
            else:
                buffers.device[INPUT_NAME][:n].copy_(chunk)
                self._execute()
                for name in outputs:
                    results[name].append(buffers.device[name][:n].clone())
        return {name: torch.cat(parts) for name, parts in results.items()}

    def _set_batch(self, n: int) -> None:
        """Tell the context this run's batch size (within the optimisation profile)."""
        if not self._context.set_input_shape(INPUT_NAME, (n, *self.input_shape[1:])):
            raise RuntimeError(f"TensorRT refused a batch of {n} ({self.engine_path})")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._buffers.stream_handle):
            raise RuntimeError(f"TensorRT execution failed ({self.engine_path})")

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._buffers = None


_LOGGER_LOCK = threading.Lock()
_LOGGER: tuple | None = None  # (the tensorrt module, its logger): one per process


def tensorrt_logger(trt):
    """Return the process's one TensorRT logger, writing into Python logging (ROS sees it).

    TensorRT keeps a single logger pointer per process and warns when a
    second one is passed, so every Builder, parser and Runtime shares this one.
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER[0] is not trt:
            _LOGGER = (trt, _make_logger(trt))
        return _LOGGER[1]


def _make_logger(trt):
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
    """Make TensorRT 10's IInt8EntropyCalibrator2 (implicit INT8) with a calibration cache.

    A data error ends the calibration and is kept in ``error``: the build then
    fails and neither the calibration cache nor the engine is written.
    """
    import torch
    from tqdm import tqdm

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._buffer = torch.empty(shape, dtype=torch.float32, device=BUFFER_DEVICE)
            self._bar = None
            self.seen = 0
            self.error = None

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            try:
                batch = next(self._batches, None)
            except Exception as exc:  # an exception must not cross into TensorRT
                LOG.error("INT8 calibration data failed: %s", exc)
                self.error = exc
                batch = None
            if batch is None:
                if self._bar is not None:
                    self._bar.close()
                if self.error is None and self.seen < count:
                    self.error = ValueError(f"the data gave {self.seen} of {count} frames")
                return None
            if self._bar is None:
                self._bar = tqdm(total=count, desc="INT8 calibration", unit="frame")
            self._buffer.copy_(torch.from_numpy(batch))
            if self._buffer.is_cuda:
                torch.cuda.synchronize()
            self.seen += 1
            self._bar.update(1)
            return [int(self._buffer.data_ptr())]

        def read_calibration_cache(self):
            if cache_path.is_file():
                LOG.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            if self.error is not None:
                LOG.error("not caching a calibration on part of the data (%s)", self.error)
                return
            atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(cache)))
            LOG.info("wrote INT8 calibration cache %s", cache_path)

    return _Calibrator()
