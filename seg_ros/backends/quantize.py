"""INT8 as an explicitly quantised (QDQ) ONNX graph, for ONNX Runtime and TensorRT alike.

``quantized_onnx(loaded, height, width, calibration, profile=...)`` is the
entry point both backends use: it exports (or reuses) the fp32 head graph,
calibrates it (or takes a shipped range table), inserts
QuantizeLinear/DequantizeLinear pairs with onnxruntime.quantization and caches
the result. ONNX Runtime runs the file as it is; TensorRT parses it and builds
it strongly typed (explicit quantisation).

One calibration, two encodings of it (``PROFILES``), because the two runtimes
want different integers for the same ranges: TensorRT requires symmetric
signed activations (zero point 0); ONNX Runtime's x86 kernels are fast with
unsigned asymmetric activations and slow with signed ones (measured 2.5x
slower on AVX2), and on x86 CPUs without VNNI their u8×s8 multiply-add
saturates with 8-bit weights (first-layer outputs wrong, 80 % of labels kept),
so weights get 7 bits there. Weights are per-channel symmetric INT8 in both.
ONNX Runtime's graph has each BatchNorm+PReLU split into INT8 convolutions
(seg_ros.backends.prelu_split); calibration measures the graph as exported and
split in one pass, so one table serves every profile.
The head (seg_ros.models.head: max, argmax, exp, sum), the classifier convolution and the
up-sampling of its logits stay fp32: argmax over 8-bit logits ties classes,
and they cost little beside the network. The TensorRT encoding also keeps the
encoder's high-resolution stem fp32 (``stem_nodes``; see PROFILES for why), and a
model's table can name operator types it keeps fp32 (``RangeTable.fp32_op_types``).

Calibration is two steps so that shipped tables and a user's own frames meet
in one place: ``calibrate`` turns frames into a ``RangeTable`` (tensor name ->
(min, max), ONNX Runtime's MinMax calibrator), ``write_qdq_onnx`` turns an fp32
graph and a table into the QDQ graph. The bundled models ship their table
(models/<name>.calibration.json, scripts/make_calibration_tables.py), so
``precision: int8`` needs no data for them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_ros.backends.base import INPUT_NAME, BackendError
from seg_ros.backends.onnx_cache import (
    METADATA_KEY,
    atomic_write,
    cached_onnx,
    digest,
    enforce_cache_limit,
    export_key,
    normalised,
    read_cache_key,
    safe_name,
    store_cache_key,
)
from seg_ros.backends.prelu_split import split_prelu

LOG = logging.getLogger(__name__)

# How each runtime wants the ranges encoded, and which layers beyond the head stay fp32 ("fp32",
# see ``fp32_nodes``); a profile's entry goes into the cache keys, so changing it re-quantises.
PROFILES = {
    # TensorRT (and ONNX Runtime's CUDA provider): symmetric INT8 activations, zero point 0. Its
    # signed range spends a bit on the sign of non-negative activations, and that error compounds
    # through the encoder's high-resolution stem (``stem_nodes``), which stays fp32. Label
    # agreement with PyTorch fp32, 20 CamVid val frames, all INT8 -> stem fp32: DeepLab v3+
    # 94.77 -> 97.42 %, SegNet-Basic 96.95 -> 98.21 %, LW-RefineNet 98.26 -> 98.82 % (the first
    # conv alone: DeepLab 95.11 %, SegNet 97.46 %; depthwise convs, ASPP pooling, decoder,
    # Resize/Concat or SegNet's unpooling kept fp32 gained < 0.2 points each).
    # It has its own PReLU layer, so its graph keeps PReLU as exported ("prelu": "native").
    "tensorrt": {
        "activations": "int8-symmetric",
        "weight_bits": 8,
        "fp32": ["stem"],
        "prelu": "native",
    },
    # ONNX Runtime on the CPU: asymmetric UINT8 activations (every bit used); all but the head
    # INT8, as an fp32 stem would cost speed and these kept >= 97.4 % of labels (README, INT8).
    # It has no INT8 PReLU or BatchNorm kernel: those are split into INT8 convolutions
    # ("prelu": "split", seg_ros.backends.prelu_split).
    "cpu": {"activations": "uint8", "weight_bits": 8, "fp32": [], "prelu": "split"},
    # The same on an x86 CPU without VNNI, whose u8*s8 multiply-add saturates on 8-bit weights.
    "cpu-7bit-weights": {"activations": "uint8", "weight_bits": 7, "fp32": [], "prelu": "split"},
}
# What every profile shares; bump "format" when the graph changes in a way the key cannot see.
SETTINGS = {
    "format": 2,
    "calibration": "minmax",
    "weights": "per-channel-symmetric",
    "fp32": "head",
}
# How a calibration turns the activations it saw into ranges: every value (MinMax, the default,
# what seg_ros uses on a user's calibration data), or a histogram's central 99.99 % (a table can
# ask for it: one outlier then stops widening a range for all the other values; chosen per
# bundled model in scripts/make_calibration_tables.py).
CALIBRATION_METHODS = {
    "minmax": {},
    "percentile": {"percentile": 99.99, "symmetric": False, "num_bins": 2048},
}
TABLE_FORMAT = 1
# A table may miss this share of a graph's tensors (their nodes then stay fp32); more, and it is
# a table for another network.
MAX_UNCOVERED = 0.05


def cpu_profile() -> str:
    """Pick the profile for ONNX Runtime's CPU provider on this machine."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "cpu"  # ARM's dot-product instructions do not saturate
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu-7bit-weights"  # cannot tell: the setting that is right everywhere
    return "cpu" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "cpu-7bit-weights"


@dataclass(frozen=True)
class RangeTable:
    """Activation ranges of one network: tensor name -> (min, max) over the calibration frames."""

    ranges: dict[str, tuple[float, float]]
    info: dict = field(default_factory=dict)  # model, size, frames, data fingerprint, method
    # Operator types this network keeps fp32 beyond the profile's (``write_qdq_onnx``): chosen
    # per model by measurement when its table is made (scripts/make_calibration_tables.py).
    fp32_op_types: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """Identify the ranges and the fp32 operator types (not where they came from)."""
        ranges = {k: [float(v[0]), float(v[1])] for k, v in self.ranges.items()}
        if not self.fp32_op_types:
            return digest(ranges)
        return digest({"ranges": ranges, "fp32_op_types": sorted(self.fp32_op_types)})

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically); returns the path."""
        path = Path(path)
        body = {
            "format": TABLE_FORMAT,
            "info": self.info,
            "fp32_op_types": sorted(self.fp32_op_types),
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.ranges.items())},
        }
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(body, indent=1) + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RangeTable:
        """Read a table written by ``save``; ValueError with the reason when it is not one."""
        path = Path(path)
        try:
            body = json.loads(path.read_text())
            if body.get("format") != TABLE_FORMAT:
                raise ValueError(f"format {body.get('format')!r}, expected {TABLE_FORMAT}")
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in body["ranges"].items()}
            fp32_op_types = tuple(str(op) for op in body.get("fp32_op_types", []))
        except (OSError, KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"{path} is not a seg_ros calibration table ({exc})") from exc
        if not ranges or any(not lo <= hi for lo, hi in ranges.values()):
            raise ValueError(f"{path} is not a usable calibration table (empty or min > max)")
        return cls(ranges, dict(body.get("info", {})), fp32_op_types)


def import_quantization():
    """onnxruntime.quantization, or BackendError when this onnxruntime cannot write QDQ graphs."""
    try:
        import inspect

        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.calibrate import (
            TensorsData,
            create_calibrator,
            save_tensors_data,
        )
    except ImportError as exc:
        raise BackendError(f"INT8 needs onnxruntime's quantisation tools ({exc})") from exc
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise BackendError(
            f"INT8 needs an onnxruntime whose quantize_static takes calibration ranges "
            f"(calibration_cache_path); this is {onnxruntime.__version__}: "
            "pip install -U onnxruntime"
        )
    return (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
        TensorsData,
        create_calibrator,
        save_tensors_data,
    )


def _quantised_op_types() -> list[str]:
    """List the operator types onnxruntime's QDQ quantiser handles (quantize_static's default)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def head_nodes(model) -> tuple[list[str], str]:
    """(names of the nodes kept fp32, the logits tensor): everything from the logits on.

    The logits are the input of the head's ArgMax (seg_ros.models.head); the
    nodes that make them from the last Conv (the classifier, and any
    Resize/Identity up to full size) stay fp32 too, so the head reads
    unquantised logits.
    """
    nodes = list(model.graph.node)
    argmax = [n for n in nodes if n.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ValueError(f"expected one ArgMax (the head) in the graph, found {len(argmax)}")
    logits = argmax[0].input[0]
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    keep: dict[str, object] = {}
    stack = [logits]
    while stack:  # downstream of the logits: the head itself
        for n in consumers.get(stack.pop(), []):
            if n.name not in keep:
                keep[n.name] = n
                stack.extend(n.output)
    tensor = logits
    while tensor in producer:  # upstream through the up-sampling to the classifier conv
        n = producer[tensor]
        keep[n.name] = n
        if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            break
        data_inputs = [i for i in n.input if i in producer]
        if len(data_inputs) != 1:
            break
        tensor = data_inputs[0]
    if any(not name for name in keep):
        raise ValueError("the graph has unnamed nodes; cannot keep its head in fp32")
    return sorted(keep), logits


def stem_nodes(model) -> list[str]:
    """Names of the encoder's high-resolution stem: the nodes the image reaches at >= 1/2 size.

    A node belongs to the stem when every data input is the image or a stem
    node's output of at least half the input's height and width; the layer that
    strides below half size is the stem's last. Read from the graph's shapes, so
    the rule holds for every family and export (SegNet: the first two encoder
    convolutions; DeepLab and LW-RefineNet: MobileNet's first conv and blocks).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    _, _, height, width = shapes[INPUT_NAME]
    constants = {init.name for init in inferred.graph.initializer}
    constants |= {out for n in inferred.graph.node if n.op_type == "Constant" for out in n.output}
    reached, stem = {INPUT_NAME}, []
    for node in inferred.graph.node:  # topologically sorted, as ONNX requires
        data = [name for name in node.input if name and name not in constants]
        if not data or not set(data) <= reached:
            continue
        stem.append(node.name)
        for out in node.output:
            shape = shapes.get(out, [])
            if len(shape) == 4 and 2 * shape[2] >= height and 2 * shape[3] >= width:
                reached.add(out)
    return stem


def fp32_nodes(model, profile: str) -> list[str]:
    """Names of the nodes ``profile`` keeps fp32: the head and the layers its "fp32" names."""
    keep, _ = head_nodes(model)
    if "stem" in PROFILES[profile]["fp32"]:
        keep = sorted({*keep, *stem_nodes(model)})
    return keep


def _needed_tensors(model, op_types: list[str], excluded: set[str]) -> set[str]:
    """List the float activations the quantiser touches (onnxruntime's calibrator's rule)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    infos.update({vi.name: vi for vi in (*inferred.graph.input, *inferred.graph.output)})
    initializers = {init.name for init in inferred.graph.initializer}
    wanted = set()
    for node in inferred.graph.node:
        if node.op_type not in op_types or node.name in excluded:
            continue
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if (
                info is not None
                and name not in initializers
                and info.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT,)
            ):
                wanted.add(name)
    return wanted


class _FrameReader:
    """onnxruntime CalibrationDataReader over network input batches, in chunks, with progress.

    ``get_next`` ends each chunk of ``chunk`` frames with None so the
    calibrator folds those frames' outputs into its ranges and frees them
    (its own max_intermediate_outputs drops them instead in some versions).
    """

    def __init__(self, batches: Iterable[np.ndarray], count: int, desc: str, chunk: int = 4):
        from tqdm import tqdm

        self._batches = iter(batches)
        self._bar = tqdm(total=count, desc=desc, unit="frame")
        self._chunk = chunk
        self._in_chunk = 0
        self.seen = 0
        self.done = False

    def get_next(self):
        if self._in_chunk == self._chunk:
            self._in_chunk = 0
            return None
        batch = next(self._batches, None)  # a data error propagates: no partial calibration
        if batch is None:
            self.done = True
            return None
        self.seen += 1
        self._in_chunk += 1
        self._bar.update(1)
        return {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    def close(self):
        self._bar.close()


def calibrate(
    fp32_onnx: str | Path,
    batches: Iterable[np.ndarray],
    count: int,
    *,
    info: dict | None = None,
    desc: str = "INT8 calibration",
    method: str = SETTINGS["calibration"],
) -> RangeTable:
    """Run ``count`` batches (N×3×H×W) through the fp32 graph; the ranges the quantiser needs.

    ``method`` is one of CALIBRATION_METHODS. Raises ValueError when the data gave fewer
    frames than ``count`` and lets any data error through: a calibration on part of the data
    is never returned.
    """
    import onnx

    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}: expected one of {sorted(CALIBRATION_METHODS)}"
        )
    methods, _, _, _, _, create_calibrator, _ = import_quantization()
    model = onnx.load(str(fp32_onnx))
    excluded, _ = head_nodes(model)
    op_types = _quantised_op_types()
    reader = _FrameReader(batches, count, desc)
    with tempfile.TemporaryDirectory(prefix="seg_ros-calibration-") as tmp:
        # One pass measures both graphs a profile may quantise: as exported and PReLU-split.
        both = Path(tmp) / "original-and-split.onnx"
        onnx.save(split_prelu(model, keep_original=True), str(both))
        calibrator = create_calibrator(
            both,
            op_types,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods.MinMax if method == "minmax" else methods.Percentile,
            extra_options=CALIBRATION_METHODS[method],
        )
        try:
            while not reader.done and reader.seen < count:
                try:
                    calibrator.collect_data(reader)
                except ValueError:  # histograms refuse a chunk that ended before any frame
                    if not reader.done:
                        raise
        finally:
            reader.close()
        if reader.seen != count:
            raise ValueError(
                f"calibration data gave {reader.seen} of {count} frames: "
                "not calibrating on part of it"
            )
        computed = calibrator.compute_data()
        del calibrator
    wanted = _needed_tensors(model, op_types, set(excluded))
    wanted |= _needed_tensors(split_prelu(model), op_types, set(excluded))
    ranges = {}
    for name in sorted(wanted):
        if name in computed:
            low, high = computed[name].range_value
            ranges[name] = (float(np.min(low)), float(np.max(high)))
    missing = wanted - set(ranges)
    if missing:
        raise ValueError(
            f"calibration found no range for {len(missing)} tensors, e.g. {min(missing)}"
        )
    return RangeTable(ranges, dict(info or {}, frames=count, method=method))


class _DropPreprocessingHint(logging.Filter):
    """Drop quantize_static's advice to pre-process (shape inference): our graph is static."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def write_qdq_onnx(
    fp32_onnx: str | Path, out_path: str | Path, table: RangeTable, profile: str = "tensorrt"
) -> Path:
    """Write the QDQ INT8 graph of ``fp32_onnx``, quantised with ``table``, to ``out_path``.

    ``profile`` is a key of PROFILES; its "prelu" entry says whether BatchNorm+PReLU
    pairs are split first (seg_ros.backends.prelu_split). The head and logits stay fp32 (see
    ``head_nodes``), so do the layers the profile names (``fp32_nodes``), the
    nodes of the table's ``fp32_op_types`` and the few nodes whose tensors the
    table lacks;
    ValueError when it lacks more than MAX_UNCOVERED of them (a table made for
    another network or another export).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown INT8 profile {profile!r}: expected one of {sorted(PROFILES)}")
    encoding = PROFILES[profile]
    symmetric = encoding["activations"] == "int8-symmetric"
    import onnx

    (
        method,
        quant_format,
        quant_type,
        quantize_static,
        tensors_data,
        _,
        save_tensors_data,
    ) = import_quantization()
    model = onnx.load(str(fp32_onnx))
    if encoding["prelu"] == "split":
        model = split_prelu(model)
    excluded = fp32_nodes(model, profile)
    kept_types = set(table.fp32_op_types)
    excluded = sorted({*excluded, *(n.name for n in model.graph.node if n.op_type in kept_types)})
    op_types = _quantised_op_types()
    wanted = _needed_tensors(model, op_types, set(excluded))
    missing = wanted - set(table.ranges)
    if len(missing) > MAX_UNCOVERED * len(wanted):
        raise ValueError(
            f"the calibration table lacks {len(missing)} of this graph's {len(wanted)} tensors "
            f"(e.g. {min(missing)!r}): it was made for another network or export"
        )
    if missing:  # exporter-numbered constants (val_N) can differ with the input size
        uncovered = [n.name for n in model.graph.node if missing & {*n.input, *n.output}]
        LOG.info(
            "calibration table has no range for %d tensors (%s): %d nodes stay fp32",
            len(missing),
            ", ".join(sorted(missing)[:3]),
            len(uncovered),
        )
        excluded = sorted({*excluded, *uncovered})
        wanted = _needed_tensors(model, op_types, set(excluded))
    ranges = {
        name: (np.array(lo, np.float32), np.array(hi, np.float32))
        for name, (lo, hi) in table.ranges.items()
        if name in wanted
    }
    out_path = Path(out_path)
    hint = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        with tempfile.TemporaryDirectory(prefix="seg_ros-qdq-") as tmp:
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(tensors_data(method.MinMax, ranges), cache)
            prepared = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(prepared))
            quantize_static(
                str(prepared),
                str(out_path),
                calibration_data_reader=None,
                calibration_cache_path=cache,
                calibrate_method=method.MinMax,
                quant_format=quant_format.QDQ,
                per_channel=True,
                reduce_range=encoding["weight_bits"] == 7,
                activation_type=quant_type.QInt8 if symmetric else quant_type.QUInt8,
                weight_type=quant_type.QInt8,
                op_types_to_quantize=op_types,
                nodes_to_exclude=excluded,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
    finally:
        logging.getLogger().removeFilter(hint)
    return out_path


def _table_for(loaded, fp32: Path, height: int, width: int, calibration, folder: Path):
    """Return the given range table, or compute one from the frames (cached by fingerprint)."""
    if isinstance(calibration, RangeTable):
        return calibration
    key = normalised(
        {
            "export": export_key(loaded, height, width, head=True),
            "frames": calibration.fingerprint(),
            "settings": SETTINGS,
        }
    )
    path = (
        folder / f"{safe_name(loaded.spec.name)}-{height}x{width}-{digest(key)[:16]}.ranges.json"
    )
    if path.is_file():
        try:
            table = RangeTable.load(path)
        except ValueError as exc:
            LOG.warning("recalibrating: %s", exc)
        else:
            if table.info.get("key") == key:
                LOG.info("using the cached INT8 calibration %s", path)
                return table
    LOG.info(
        "INT8 calibration of %s with up to %d frames of %s",
        loaded.spec.name,
        calibration.frames,
        calibration.describe(),
    )
    table = calibrate(
        fp32,
        calibration.batches(height, width, loaded.spec.mean, loaded.spec.std),
        calibration.count(),
        info={"model": loaded.spec.name, "height": height, "width": width, "key": key},
    )
    table.save(path)  # only reached when every frame went in
    return table


def quantized_onnx(
    loaded,
    height: int,
    width: int,
    calibration,
    *,
    profile: str = "tensorrt",
    cache_root: Path | None = None,
) -> Path:
    """Path of the QDQ INT8 head graph for ``loaded`` at height×width (N×3×H×W input, N dynamic).

    The shared INT8 entry point. ``calibration`` is a
    seg_ros.backends.calibration.CalibrationSource (frames from images or a
    bag) or a RangeTable (a shipped table); ``resolve_calibration`` picks one
    from the backend options. ``profile``: "tensorrt" for TensorRT and ONNX
    Runtime's CUDA provider, ``cpu_profile()`` for ONNX Runtime on the CPU.
    Cached (graph and calibration) under a key of the fp32 export, the
    calibration data's fingerprint, SETTINGS and the profile; a calibration
    that fails part-way raises and caches nothing. Raises BackendError when
    this onnxruntime cannot quantise, ValueError for unusable calibration data.
    """
    import onnxruntime

    if profile not in PROFILES:
        raise ValueError(f"unknown INT8 profile {profile!r}: expected one of {sorted(PROFILES)}")
    fp32 = cached_onnx(loaded, height, width, head=True, cache_root=cache_root)
    folder = fp32.parent  # the cache, or the scratch folder for random-initialised models
    if isinstance(calibration, RangeTable):
        data = {"table": calibration.fingerprint()}
    else:
        data = {"frames": calibration.fingerprint()}
    key = normalised(
        {
            "export": export_key(loaded, height, width, head=True),
            "calibration": data,
            "settings": SETTINGS,
            "profile": {profile: PROFILES[profile]},
            "onnxruntime": onnxruntime.__version__,
        }
    )
    name = f"{safe_name(loaded.spec.name)}-{height}x{width}-int8-{profile}-{digest(key)[:16]}.onnx"
    path = folder / name
    if path.is_file() and read_cache_key(path) == key:
        LOG.debug("reusing INT8 graph %s", path)
        os.utime(path)
        return path
    table = _table_for(loaded, fp32, height, width, calibration, folder)
    LOG.info("quantising %s to INT8 (%s profile)", loaded.spec.name, profile)

    def write(tmp: Path) -> None:
        write_qdq_onnx(fp32, tmp, table, profile)
        store_cache_key(tmp, key)

    atomic_write(path, write)
    enforce_cache_limit(folder, keep=(path, fp32))
    return path


__all__ = [
    "METADATA_KEY",
    "PROFILES",
    "RangeTable",
    "SETTINGS",
    "cpu_profile",
    "calibrate",
    "fp32_nodes",
    "head_nodes",
    "quantized_onnx",
    "write_qdq_onnx",
]
