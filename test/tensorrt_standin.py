"""A stand-in for the ``tensorrt`` module, as TensorRT 10.x or 11.x's Python bindings present it.

TensorRT cannot be installed here, so the backend's build and run flow is
exercised against this (the only mock in the tests). It follows the pybind
bindings where seg_ros touches them:

- 10.x: NetworkDefinitionCreationFlag EXPLICIT_BATCH (ignored) and
  STRONGLY_TYPED; BuilderFlag FP16/INT8 (weak typing, deprecated) next to
  GPU_FALLBACK/TF32; IInt8EntropyCalibrator2 and IBuilderConfig.int8_calibrator.
- 11.x: strongly typed only; no FP16/INT8 builder flags, no calibrator
  classes, no int8_calibrator attribute (setting it raises AttributeError, as
  on a pybind class), no set_calibration_profile; STRONGLY_TYPED is kept and
  ignored.
- both: dynamic shapes as the bindings have them. A parsed network's inputs
  (num_inputs, get_input(i).name/.shape) show a symbolic ONNX dimension as
  -1; Builder.create_optimization_profile() gives an IOptimizationProfile
  whose set_shape(input, min, opt, max) IBuilderConfig.add_optimization_profile
  takes (its index, -1 when invalid); a network with a dynamic input and no
  profile for it does not build. The engine answers get_tensor_profile_shape
  (name, profile index) with [min, opt, max], and reports -1 for dynamic
  dimensions until IExecutionContext.set_input_shape (False outside the
  profile) fixes them for a run; execute_async_v3 fails while one is unset.

Builds record what they were given and check what TensorRT checks
(precision flags on a strongly typed network fail the build; an INT8 build
runs the calibrator as TensorRT does: read cache, batches, write cache). The
"plan" carries the parsed ONNX graph, and an execution context runs it with
ONNX Runtime on the addresses passed to set_tensor_address, so the runtime
path works on CPU tensors.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import types
from pathlib import Path

import numpy as np

PLAN_MAGIC = b"STANDIN-PLAN\n"
TIMING_MAGIC = b"STANDIN-TIMING\n"


class _Flag:
    """A pybind enum value: hashable, with an int value."""

    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return self.name


def _enum(name: str, members: dict) -> type:
    return type(name, (), {key: _Flag(key, value) for key, value in members.items()})


class DataType(_Flag):
    pass


def make_tensorrt(
    version: str = "10.3.0", *, strongly_typed_flag: bool = True, timing_error: str = "raise"
) -> types.ModuleType:
    """Make a fresh stand-in module for ``version``; ``record`` holds what it was asked to do.

    ``timing_error`` is how create_timing_cache answers an unreadable blob:
    "raise" (an exception from the bindings) or "none" (a null cache).
    """
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec answers
    trt.__version__ = version
    record = types.SimpleNamespace(
        loggers=[], networks=[], configs=[], builds=[], calibration=[], refuse_deserialize=0
    )
    trt.record = record

    creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11 else {}
    if major >= 11 and strongly_typed_flag:
        creation["STRONGLY_TYPED"] = 1  # kept for compatibility, ignored: always strongly typed
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", creation)
    builder_flags = {"GPU_FALLBACK": 4, "TF32": 7, "REFIT": 3}
    if major < 11:
        builder_flags.update({"FP16": 0, "INT8": 1, "OBEY_PRECISION_CONSTRAINTS": 11})
    trt.BuilderFlag = _enum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = _enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    for name, value in (("float32", 0), ("float16", 1), ("int8", 2), ("int32", 3), ("int64", 8)):
        setattr(trt, name, DataType(name, value))
    numpy_types = {
        "float32": np.float32,
        "float16": np.float16,
        "int8": np.int8,
        "int32": np.int32,
        "int64": np.int64,
    }
    onnx_types = {1: "float32", 10: "float16", 3: "int8", 6: "int32", 7: "int64"}

    class ILogger:
        Severity = _enum(
            "Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
        )

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    if major < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    def _logged(logger):
        assert isinstance(logger, ILogger), "TensorRT takes an ILogger"
        record.loggers.append(logger)
        return logger

    class TimingCache:
        def __init__(self, entries: list):
            self.entries = list(entries)

        def serialize(self):
            return TIMING_MAGIC + json.dumps(self.entries).encode()

    config_slots = [
        "flags",
        "pools",
        "timing_cache",
        "progress_monitor",
        "default_device_type",
        "DLA_core",
        "profiles",
    ]
    if major < 11:
        config_slots += ["int8_calibrator", "calibration_profile"]

    class IBuilderConfig:
        __slots__ = config_slots

        def __init__(self):
            self.flags, self.pools, self.timing_cache = set(), {}, None
            self.progress_monitor = None
            self.default_device_type, self.DLA_core = trt.DeviceType.GPU, -1
            self.profiles = []
            if major < 11:
                self.int8_calibrator = None
                self.calibration_profile = None

        def add_optimization_profile(self, profile):
            assert isinstance(profile, IOptimizationProfile)
            if not profile.valid:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        if major < 11:

            def set_calibration_profile(self, profile):
                assert isinstance(profile, IOptimizationProfile)
                if not profile.valid:
                    return False
                self.calibration_profile = profile
                return True

            def get_calibration_profile(self):
                return self.calibration_profile

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool.name] = size

        def set_flag(self, flag):
            assert isinstance(flag, _Flag)
            self.flags.add(flag.name)

        def create_timing_cache(self, blob):
            blob = bytes(blob)
            if not blob:
                return TimingCache([])
            if not blob.startswith(TIMING_MAGIC):
                if timing_error == "raise":
                    raise RuntimeError("Failed to deserialize the timing cache")
                return None
            return TimingCache(json.loads(blob[len(TIMING_MAGIC) :]))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class ITensor:
        def __init__(self, name: str, shape: tuple):
            self.name, self.shape = name, shape

    class IOptimizationProfile:
        def __init__(self):
            self.shapes = {}
            self.valid = True

        def set_shape(self, input, min, opt, max):
            shapes = [tuple(int(d) for d in dims) for dims in (min, opt, max)]
            low, mid, high = shapes
            if len({len(d) for d in shapes}) != 1 or not all(
                1 <= a <= b <= c for a, b, c in zip(low, mid, high)
            ):
                self.valid = False  # TensorRT logs the error; the profile is then rejected
            self.shapes[input] = shapes

        def get_shape(self, input):
            return self.shapes[input]

    def _dims(value_info) -> tuple:
        return tuple(
            d.dim_value if d.HasField("dim_value") else -1
            for d in value_info.type.tensor_type.shape.dim
        )

    class INetworkDefinition:
        def __init__(self, flags: int):
            known = sum(
                1 << int(f)
                for f in vars(trt.NetworkDefinitionCreationFlag).values()
                if isinstance(f, _Flag)
            )
            if flags & ~known:
                raise ValueError(f"unknown network creation flags {flags:#x}")
            self.flags = flags
            strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            self.strongly_typed = major >= 11 or bool(strong and flags & (1 << int(strong)))
            self.onnx = None
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network
            _logged(logger)

        def parse_from_file(self, path):
            data = Path(path).read_bytes()
            import onnx

            model = onnx.load_from_string(data)  # raises for a file that is not ONNX
            constants = {init.name for init in model.graph.initializer}
            self.network.inputs = [
                ITensor(v.name, _dims(v)) for v in model.graph.input if v.name not in constants
            ]
            self.network.onnx = data
            return True

        def get_error(self, index):
            raise IndexError(index)

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger):
            _logged(logger)

        def create_network(self, flags=0):
            network = INetworkDefinition(int(flags))
            record.networks.append(network)
            return network

        def create_builder_config(self):
            config = IBuilderConfig()
            record.configs.append(config)
            return config

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            record.builds.append((network, config))
            if network.onnx is None:
                return None
            precision_flags = config.flags & {"FP16", "INT8"}
            if network.strongly_typed and precision_flags:
                return None  # TensorRT: precision flags are not allowed in strongly typed mode
            profiles = self._profiles(network, config.profiles)
            if profiles is None:
                return None  # TensorRT: dynamic inputs, but no (fitting) optimisation profile
            calibrator = getattr(config, "int8_calibrator", None)
            if "INT8" in config.flags:
                if calibrator is None:
                    return None
                if profiles:  # a network with runtime dimensions calibrates on its own profile
                    single = config.calibration_profile
                    if single is None or self._profiles(network, [single]) is None:
                        return None
                    image = next(iter(single.shapes.values()))
                    assert image[0] == image[2] and image[1][0] == calibrator.get_batch_size()
                self._calibrate(calibrator)
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic timing", "Building engine", 3)
                for step in range(3):
                    assert monitor.step_complete("Tactic timing", step) is True
                monitor.phase_finish("Tactic timing")
                monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
            if config.timing_cache is not None:
                config.timing_cache.entries.append(len(record.builds))
            header = json.dumps(
                {
                    "version": version,
                    "strongly_typed": network.strongly_typed,
                    "flags": sorted(config.flags),
                    "dla_core": config.DLA_core,
                    "profiles": profiles,
                }
            ).encode()
            return PLAN_MAGIC + len(header).to_bytes(4, "little") + header + network.onnx

        @staticmethod
        def _profiles(network, profiles):
            """Each profile's shapes by input: [] for a static network, None if one is unfit."""
            dynamic = {t.name: t.shape for t in network.inputs if -1 in t.shape}
            if not dynamic:
                return []
            if not profiles:
                return None
            for profile in profiles:
                for name, shape in dynamic.items():
                    if name not in profile.shapes:
                        return None
                    for dims in profile.shapes[name]:
                        if len(dims) != len(shape) or any(
                            s != -1 and s != d for s, d in zip(shape, dims)
                        ):
                            return None
            return [{name: p.shapes[name] for name in dynamic} for p in profiles]

        @staticmethod
        def _calibrate(calibrator):
            cached = calibrator.read_calibration_cache()
            if cached:
                record.calibration.append("cache")
            else:
                assert calibrator.get_batch_size() == 1
                while calibrator.get_batch(["image"]) is not None:
                    record.calibration.append("batch")
                calibrator.write_calibration_cache(b"calibration table")

    class ICudaEngine:
        def __init__(self, header: dict, data: bytes):
            import onnx
            import onnxruntime

            self.header = header
            model = onnx.load_from_string(data)
            self._io = []
            for value, mode in [(v, trt.TensorIOMode.INPUT) for v in model.graph.input] + [
                (v, trt.TensorIOMode.OUTPUT) for v in model.graph.output
            ]:
                elem = onnx_types[value.type.tensor_type.elem_type]
                self._io.append((value.name, mode, list(_dims(value)), elem))
            self.session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

        @property
        def num_io_tensors(self):
            return len(self._io)

        def get_tensor_name(self, index):
            return self._io[index][0]

        def _find(self, name):
            return next(entry for entry in self._io if entry[0] == name)

        def get_tensor_mode(self, name):
            return self._find(name)[1]

        def get_tensor_shape(self, name):
            return tuple(self._find(name)[2])

        def get_tensor_dtype(self, name):
            return getattr(trt, self._find(name)[3])

        @property
        def num_optimization_profiles(self):
            return len(self.header["profiles"])

        def get_tensor_profile_shape(self, name, profile_index):
            profile = self.header["profiles"][profile_index]
            if name not in profile:
                raise RuntimeError(f"{name!r} is not a dynamic input of profile {profile_index}")
            return [tuple(dims) for dims in profile[name]]

        def create_execution_context(self):
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.addresses = {}
            self.input_shapes = {}
            self.runs = 0

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            entry = self.engine._find(name)
            if entry[1] is not trt.TensorIOMode.INPUT or len(shape) != len(entry[2]):
                return False
            if any(s != -1 and s != d for s, d in zip(entry[2], shape)):
                return False
            if -1 in entry[2]:  # within profile 0, the one a fresh context uses
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                if not all(a <= d <= b for a, d, b in zip(low, shape, high)):
                    return False
            self.input_shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            _, mode, shape, _ = self.engine._find(name)
            if mode is trt.TensorIOMode.INPUT:
                return self.input_shapes.get(name, tuple(shape))
            # the head's outputs have the input's batch; the rest is static
            batch = next(iter(self.input_shapes.values()), (-1,))[0]
            return tuple(batch if d == -1 else d for d in shape)

        def set_tensor_address(self, name, address):
            if name not in {entry[0] for entry in self.engine._io}:
                return False
            self.addresses[name] = int(address)
            return True

        def _array(self, name):
            shape = self.get_tensor_shape(name)
            dtype = np.dtype(numpy_types[self.engine._find(name)[3]])
            size = int(np.prod(shape)) * dtype.itemsize
            buffer = (ctypes.c_char * size).from_address(self.addresses[name])
            return np.frombuffer(buffer, dtype=dtype).reshape(shape)

        def execute_async_v3(self, stream_handle):
            if set(self.addresses) != {entry[0] for entry in self.engine._io}:
                return False  # TensorRT: every I/O tensor needs an address
            if any(-1 in self.get_tensor_shape(entry[0]) for entry in self.engine._io):
                return False  # TensorRT: every dynamic input needs set_input_shape first
            inputs = {
                name: self._array(name).copy()
                for name, mode, _, _ in self.engine._io
                if mode is trt.TensorIOMode.INPUT
            }
            names = [o.name for o in self.engine.session.get_outputs()]
            for name, value in zip(names, self.engine.session.run(names, inputs)):
                self._array(name)[...] = value
            self.runs += 1
            return True

    class Runtime:
        def __init__(self, logger):
            _logged(logger)
            self.DLA_core = -1

        def deserialize_cuda_engine(self, payload):
            payload = bytes(payload)
            if record.refuse_deserialize > 0:
                record.refuse_deserialize -= 1
                return None
            if not payload.startswith(PLAN_MAGIC):
                return None
            start = len(PLAN_MAGIC)
            length = int.from_bytes(payload[start : start + 4], "little")
            header = json.loads(payload[start + 4 : start + 4 + length])
            if header["version"] != version:
                return None  # plans run only on the TensorRT that built them
            return ICudaEngine(header, payload[start + 4 + length :])

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    trt.IBuilderConfig = IBuilderConfig
    return trt
