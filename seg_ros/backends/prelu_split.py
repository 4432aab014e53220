"""PReLU, with the BatchNorm before it, rewritten as operators ONNX Runtime runs in INT8.

ONNX Runtime has no quantised PReLU or BatchNormalization kernel, so in a QDQ
graph every BN+PReLU pair runs in fp32 between a DequantizeLinear and a
QuantizeLinear: in the ESPNet-C encoder that was PReLU 10 ms, DequantizeLinear
9.5 ms and BatchNormalization 5 ms of an 82 ms INT8 frame (360×480, 2-core
EPYC, onnxruntime's profiler). With per-channel slopes a < 1 and the
BatchNorm's per-channel scale s and shift t, exactly

    PReLU(s·x + t) = Relu((1−a)·s·x + (1−a)·t) + a·s·x + a·t

because Relu(c·y) = c·Relu(y) for c > 0. Both terms are depthwise 1×1
convolutions, the first with a ReLU; ONNX Runtime quantises them to
QLinearConv and the sum to QLinearAdd, so the frame stays in INT8 from one
convolution to the next.
"""

from __future__ import annotations

import numpy as np

# The suffix of the rewritten sum's output when the original PReLU is kept beside it
# (``keep_original``): the calibration graph holds both, and both compute the same values.
SPLIT_SUM_SUFFIX = "/prelu_split_sum"


def _attribute(node, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def split_prelu(model, *, keep_original: bool = False):
    """Return a copy of ``model`` with each per-channel PReLU (and its BatchNorm) split.

    A PReLU is rewritten when its slope has one entry per channel, all below 1
    (a scalar slope or a ≥ 1 slope is left as it is). A BatchNormalization that
    feeds only that PReLU is folded into the two convolutions. With
    ``keep_original`` the original nodes stay and the rewritten sum becomes an
    extra graph output named ``<PReLU output>`` + SPLIT_SUM_SUFFIX: one pass of
    that graph gives activation ranges for the original and the rewritten
    graph alike (the calibration in seg_ros.backends.quantize).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    replaced: dict[str, list] = {}  # PReLU node name -> the nodes that replace it
    folded: set[str] = set()  # BatchNorm nodes folded into a split
    new_initializers, extra_outputs = [], []
    if keep_original:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        known_types = {vi.name: vi for vi in (*inferred.value_info, *inferred.output)}
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers or not node.name:
            continue
        slope = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64).ravel()
        if slope.size < 2 or not np.all(slope < 1.0):
            continue
        channels = slope.size
        source, scale, shift = node.input[0], np.ones(channels), np.zeros(channels)
        norm = producer.get(source)
        if (
            norm is not None
            and norm.op_type == "BatchNormalization"
            and consumers.get(source) == 1
            and len(norm.output) == 1
            and all(name in initializers for name in norm.input[1:5])
        ):
            gamma, beta, mean, var = (
                numpy_helper.to_array(initializers[name]).astype(np.float64)
                for name in norm.input[1:5]
            )
            if gamma.size == channels:
                scale = gamma / np.sqrt(var + _attribute(norm, "epsilon", 1e-5))
                shift = beta - mean * scale
                source = norm.input[0]
                if not keep_original:
                    folded.add(norm.name)

        def depthwise(branch: str, gain: np.ndarray):
            weight, bias = f"{node.name}/{branch}_weight", f"{node.name}/{branch}_bias"
            new_initializers.extend(
                [
                    numpy_helper.from_array(
                        (gain * scale).reshape(channels, 1, 1, 1).astype(np.float32), weight
                    ),
                    numpy_helper.from_array((gain * shift).astype(np.float32), bias),
                ]
            )
            out = f"{node.name}/{branch}"
            conv = helper.make_node(
                "Conv",
                [source, weight, bias],
                [out],
                name=out,
                group=channels,
                kernel_shape=[1, 1],
            )
            return conv, out

        relu_conv, relu_in = depthwise("relu_branch", 1.0 - slope)
        linear_conv, linear = depthwise("linear_branch", slope)
        relu = helper.make_node("Relu", [relu_in], [relu_in + "_relu"], name=relu_in + "_relu")
        total = node.output[0] + SPLIT_SUM_SUFFIX if keep_original else node.output[0]
        add = helper.make_node(
            "Add", [relu.output[0], linear], [total], name=f"{node.name}/prelu_split_sum"
        )
        replaced[node.name] = [relu_conv, relu, linear_conv, add]
        if keep_original and node.output[0] in known_types:  # typed as the PReLU's output
            output = onnx.ValueInfoProto()
            output.CopyFrom(known_types[node.output[0]])
            output.name = total
            extra_outputs.append(output)
    if not replaced:
        return model
    nodes = []
    for node in graph.node:
        if node.name in folded:
            continue
        if node.name in replaced:
            nodes.extend([node] if keep_original else [])
            nodes.extend(replaced[node.name])
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    graph.output.extend(extra_outputs)
    used = {name for n in graph.node for name in n.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # shapes are re-inferred by whoever needs them
    return model


__all__ = ["SPLIT_SUM_SUFFIX", "split_prelu"]
