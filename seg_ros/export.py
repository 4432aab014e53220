"""ONNX export of the segmentation networks, in a form TensorRT's ONNX parser accepts.

With ``head=True`` the graph ends in what the node needs, so backends move
compact tensors: ``label`` (argmax, int32), ``confidence`` (winning softmax
probability) and ``probabilities`` (softmax, for CRF and evaluation); with
``head=False`` it returns the raw ``logits`` (training, evaluation, debugging).
SegNet is exported with its TensorRT-friendly unpooling (see seg_ros.models.segnet).

``convert_to_fp16`` turns the fp32 head graph into the graph TensorRT builds
strongly typed for fp16 (ONNX Runtime runs it too): fp16 everywhere except
the FP32 islands ``FP32_OPS`` and the head (classifier, softmax, argmax,
confidence), with fp32 input and outputs. INT8 is the QDQ graph of
seg_ros.backends.quantize; ``tensorrt_qdq_problems`` checks it is one
TensorRT can build (signed INT8, zero points 0).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_ros.models.head import segmentation_head

LOG = logging.getLogger(__name__)

INPUT_NAME = "image"
BATCH_DIM = "batch"  # the symbolic batch dimension's name in the exported graph
HEAD_OUTPUTS = ("label", "confidence", "probabilities")
LOGITS_OUTPUT = "logits"
MIN_OPSET = 17
# torch's exporter (torch.export + onnxscript) implements opset 18 and up; 17 needs a version
# conversion that fails for some ops (Pad, ReduceMean). TensorRT 10 parses opsets 9 to 20.
DEFAULT_OPSET = 18

# ONNX operators the TensorRT 10 ONNX parser supports (onnx-tensorrt docs/operators.md,
# TensorRT 10.x: opsets 9 to 20 for 10.0); restrictions that matter for these networks are
# checked in code below.
TENSORRT_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)
# Kept fp32 in the fp16 graph: normalisations that compute statistics at run time (their sums of
# squares overflow fp16's 65504). BatchNormalization is not among them: the exporter folds it into
# the convolutions. The head (from the classifier on) stays fp32 too: see convert_to_fp16.
FP32_OPS = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "MeanVarianceNormalization",
    "LpNormalization",
)
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}


class _ExportGraph(nn.Module):
    """The network plus, optionally, the head the node consumes (seg_ros.models.head)."""

    def __init__(self, module: nn.Module, head: bool):
        super().__init__()
        self.module = module
        self.head = head

    def forward(self, image: torch.Tensor):
        logits = self.module(image)
        if not self.head:
            return logits
        return segmentation_head(logits)


@contextlib.contextmanager
def tensorrt_friendly(module: nn.Module):
    """Switch on each submodule's ``tensorrt_friendly`` flag (SegNet's unpooling) in the block."""
    flagged = [m for m in module.modules() if hasattr(m, "tensorrt_friendly")]
    before = [m.tensorrt_friendly for m in flagged]
    for m in flagged:
        m.tensorrt_friendly = True
    try:
        yield module
    finally:
        for m, value in zip(flagged, before):
            m.tensorrt_friendly = value


@contextlib.contextmanager
def _quiet_exporter_logs():
    """Keep the CLI's INFO output readable: the exporter's passes log every rewrite at INFO."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    module: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    *,
    head: bool = True,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``module`` for an N×3×height×width input to ``path``; returns the path.

    With ``dynamic_batch`` N is the symbolic ``BATCH_DIM`` (height and width
    stay static), so one session or engine runs the frames of several cameras
    at once; else N is 1. The file passes ``onnx.checker`` and has outputs
    ``label``/``confidence``/``probabilities`` (``head=True``) or ``logits``.
    Raises ValueError for bad sizes/opsets, RuntimeError if the exporter fails.
    """
    import onnx

    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"export size must be positive, got {height}x{width}")
    if int(opset) < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: TensorRT export needs opset >= {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    graph = _ExportGraph(module.eval(), head)
    example = torch.zeros(1, 3, int(height), int(width))
    outputs = list(HEAD_OUTPUTS) if head else [LOGITS_OUTPUT]
    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None
    try:
        with (
            tensorrt_friendly(module),
            torch.no_grad(),
            warnings.catch_warnings(),
            _quiet_exporter_logs(),
        ):
            warnings.simplefilter(
                "ignore"
            )  # the exporter's chatter about opset conversion and tracing
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_shapes=dynamic_shapes,
                opset_version=int(opset),
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:
        raise RuntimeError(
            f"ONNX export of {type(module).__name__} at {height}x{width} failed: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    written = onnx_opset(path)
    if written != int(opset):
        raise RuntimeError(
            f"{path}: the exporter could not convert {type(module).__name__} to opset {opset} "
            f"(it wrote opset {written}); use opset {DEFAULT_OPSET}"
        )
    return path


def _node_problems(
    nodes, constants: set[str], local_functions: set[tuple[str, str]], problems: set[str]
) -> None:
    from onnx import helper

    for node in nodes:
        op = node.op_type
        if (node.domain, op) in local_functions:
            continue  # the parser inlines local functions; their bodies are checked on their own
        if node.domain not in ("", "ai.onnx"):
            problems.add(f"{node.domain}::{op}")
        elif op not in TENSORRT_OPS:
            problems.add(op)
        elif op == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.add("MaxPool (indices output)")
        elif (
            op.startswith("Reduce")
            and len(node.input) > 1
            and node.input[1]
            and node.input[1] not in constants
        ):
            problems.add(f"{op} (axes not constant)")
        elif op == "Resize":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            mode = attrs.get("mode", b"nearest").decode()
            transform = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if (
                mode not in _RESIZE_MODES
                or transform not in _RESIZE_TRANSFORMS
                or attrs.get("antialias", 0)
            ):
                problems.add(f"Resize ({mode}, {transform})")
        for attr in node.attribute:  # If/Loop/Scan bodies
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _node_problems(sub.node, constants | _constants(sub), local_functions, problems)


def _constants(graph) -> set[str]:
    """Names of initializers and Constant outputs: inputs TensorRT sees as build-time constants."""
    names = {init.name for init in getattr(graph, "initializer", [])}
    return names | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }


def unsupported_tensorrt_ops(onnx_path: str | Path) -> list[str]:
    """List operators (or uses) in the file that TensorRT 10's ONNX parser rejects; [] if none."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    local_functions = {(f.domain, f.name) for f in model.functions}
    problems: set[str] = set()
    _node_problems(model.graph.node, _constants(model.graph), local_functions, problems)
    for function in model.functions:
        _node_problems(function.node, _constants(function), local_functions, problems)
    return sorted(problems)


def onnx_opset(onnx_path: str | Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _topological_order(graph) -> None:
    """Sort ``graph``'s nodes so each follows the producers of its inputs (ONNX requires it)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in known for name in node.input):
                order.append(node)
                known.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise RuntimeError(f"the graph has a cycle or a missing input at {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(order)


def convert_to_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Write the fp16 graph of an fp32 head graph to ``out_path``: what TensorRT builds for fp16.

    Tensors and weights become fp16, except the nodes of ``FP32_OPS`` and the
    head (quantize.head_nodes: classifier, upsampling, softmax, argmax, max),
    which read fp32 through inserted Casts; input and outputs keep their
    types. Measured on the bundled models (README): labels agree with PyTorch
    fp32 on 99.7 to 99.95 % of CamVid val pixels. RuntimeError when the result
    would not parse in TensorRT.
    """
    import onnx
    from onnx import inliner
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from seg_ros.backends.quantize import head_nodes

    model = inliner.inline_local_functions(onnx.load(str(fp32_path)))
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    keep, _ = head_nodes(model)
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=keep
    )
    _topological_order(half.graph)
    del half.graph.value_info[:]  # the converter leaves some stale fp32 entries; re-inferred below
    _drop_fp16_round_trips(half, onnx.load(str(fp32_path)))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    rejected = unsupported_tensorrt_ops(out_path)
    if rejected:
        raise RuntimeError(
            f"{out_path}: the fp16 graph has operators TensorRT rejects: {rejected}"
        )
    return out_path


def _drop_fp16_round_trips(half, original) -> None:
    """Undo what the fp16 converter does between fp32 nodes: Casts to fp16 and straight back.

    It casts every kept-fp32 node's output to fp16 and the next fp32 node's
    input back, and keeps their weights as fp16 + Cast: that would round the
    logits and the classifier to fp16 after all. Here fp32 flows from one fp32
    node to the next, with the original fp32 weights.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = half.graph
    weights = {init.name: init for init in original.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(half)
    elem = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    elem.update({init.name: init.data_type for init in graph.initializer})

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next(
            (helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None
        )

    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    drop = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Cast" else ""
        if cast_to(node) == TensorProto.FLOAT and elem.get(source) == TensorProto.FLOAT16:
            if source in weights and weights[source].data_type == TensorProto.FLOAT:
                fp32 = onnx.TensorProto()
                fp32.CopyFrom(weights[source])
                fp32.name = node.output[0]
                graph.initializer.append(fp32)  # the weight as it was, not rounded to fp16
                drop.append(node)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT16 or elem.get(node.input[0]) != TensorProto.FLOAT:
            continue
        after = consumers.get(node.output[0], [])
        if node.output[0] in outputs or not after:
            continue
        if all(cast_to(c) == TensorProto.FLOAT for c in after):
            drop.append(node)
            for back in after:
                if back.output[0] in outputs:  # a graph output keeps its name: an Identity
                    back.op_type = "Identity"
                    back.input[0] = node.input[0]
                    del back.attribute[:]
                else:
                    rename[back.output[0]] = node.input[0]
                    drop.append(back)
    dropped = {id(node) for node in drop}
    kept = [node for node in graph.node if id(node) not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def _constant_values(graph) -> dict:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def for_tensorrt_qdq(qdq_path: str | Path, out_path: str | Path) -> Path:
    """Write the QDQ graph as TensorRT takes it: int32 (bias) DequantizeLinear folded into fp32.

    ONNX Runtime quantises conv biases to int32 behind a DequantizeLinear
    (its QLinearConv wants that); TensorRT's DequantizeLinear reads only
    8-bit (and narrower) data and keeps biases fp32 itself. The folded bias is
    the dequantised value, so both run the same numbers.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        data = numpy_helper.to_array(initializers[node.input[0]])
        if data.dtype != np.int32:
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        zero = (
            numpy_helper.to_array(initializers[node.input[2]]).astype(np.int64)
            if len(node.input) > 2 and node.input[2]
            else 0
        )
        value = ((data.astype(np.int64) - zero) * scale).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    del model.metadata_props[:]  # cache keys of the files it came from: not this file's
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    return out_path


def tensorrt_qdq_problems(onnx_path: str | Path) -> list[str]:
    """Why TensorRT could not build this QDQ graph ([] if it can).

    TensorRT quantises symmetrically to signed INT8: every Quantize/
    DequantizeLinear needs a constant positive scale and a constant int8 zero
    point of 0 (a missing zero point means uint8 in ONNX), and constant
    DequantizeLinear data must be int8 (see ``for_tensorrt_qdq``).
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    constants = _constant_values(model.graph)
    problems: set[str] = set()
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += 1
        data = constants.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.dtype != np.int8:
            problems.add(f"DequantizeLinear {node.name}: {data.dtype} data (TensorRT reads int8)")
        scale = constants.get(node.input[1])
        if scale is None or not np.all(scale > 0):
            problems.add(f"{node.op_type} {node.name}: scale not a positive constant")
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            problems.add(f"{node.op_type} {node.name}: no constant zero point (uint8)")
        elif zero.dtype not in (np.int8, data.dtype if data is not None else np.int8) or np.any(
            zero != 0
        ):
            problems.add(f"{node.op_type} {node.name}: zero point {zero.dtype} not int8 0")
    if count == 0:
        problems.add("no QuantizeLinear/DequantizeLinear nodes: not an INT8 QDQ graph")
    return sorted(problems)


def compare_with_torch(
    module: nn.Module, onnx_path: str | Path, images, *, optimized: bool = False
) -> dict[str, float]:
    """Run the file with ONNX Runtime (CPU) and the module with PyTorch on N×3×H×W batches.

    ``images`` is one batch or a list of them. Returns ``label_agreement``
    (mean fraction of pixels with the same argmax), ``max_abs_diff`` (logits
    for a head-less file, probabilities otherwise) and ``max_rel_diff`` (that
    over the largest reference magnitude).

    With ``optimized`` False (the check of the export itself) ONNX Runtime's
    graph optimisations are off, so it evaluates the graph as written: an fp32
    export then matches PyTorch to about 1e-5, and QDQ nodes compute what
    TensorRT does. With them on (as the backends run), fusing BatchNorm into
    the convolutions rounds differently at the 1e-6 level, and where a pooling
    window holds two maxima that close, SegNet's index unpooling puts the value
    in the other position: a few logits move by up to ~5e-2 (PyTorch itself
    moves them as much under 1e-6 input noise); and on x86 CPUs without VNNI
    the fused INT8 kernels saturate.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    batches = [images] if isinstance(images, np.ndarray) else list(images)
    agreement, max_abs, largest = [], 0.0, 1e-12
    for image in batches:
        image = np.ascontiguousarray(image, dtype=np.float32)
        result = dict(zip(names, session.run(None, {INPUT_NAME: image})))
        with torch.no_grad():
            logits = module.eval()(torch.from_numpy(image)).numpy()
        if LOGITS_OUTPUT in result:
            other, reference = result[LOGITS_OUTPUT], logits
            label = other.argmax(axis=1)
        else:
            other = result["probabilities"]
            reference = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
            label = result["label"]
        agreement.append(float((label == logits.argmax(axis=1)).mean()))
        max_abs = max(max_abs, float(np.abs(other.astype(np.float32) - reference).max()))
        largest = max(largest, float(np.abs(reference).max()))
    return {
        "label_agreement": float(np.mean(agreement)),
        "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / largest,
    }
