"""Int8 defaults that depend on the model family and the target CPU, each with the rule that chose it.

Measured (docs/ARCHITECTURE.md): quantizing every op type breaks transformers (MiniLM cosine 0.85 vs 0.945 with
MatMul/Gemm/Gather only) and recurrent nets (a VAD model lost 13 points until only Conv/Gemm were
quantized); x86 without VNNI saturates u8*s8 products unless weights are bounded (reduce_range: 7 bits in
ORT, pair-bounded 8-bit levels here: passes/pair_bounded_weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from edgeport.passes.context import QuantTarget
from edgeport.passes.graph_edit import read_counts
from edgeport.passes.pair_bounded_weights import bounds_pairs
from edgeport.runtimes.hostcpu import X86_ARCHES

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN", "Scan", "Loop"})
ATTENTION_MARKERS = frozenset({"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention"})
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm", "Gather")
RECURRENT_OP_TYPES = ("Conv", "Gemm")


@dataclass(frozen=True)
class Choice:
    value: object
    rule: str


def model_family(model: onnx.ModelProto) -> str:
    """'recurrent', 'transformer' or 'convolutional' (CNNs and plain MLPs) from the graph's ops."""
    op_types = {node.op_type for node in model.graph.node}
    if op_types & RECURRENT_OPS:
        return "recurrent"
    initializers = {t.name for t in model.graph.initializer}
    activation_matmul = any(
        node.op_type == "MatMul" and all(i not in initializers for i in node.input) for node in model.graph.node
    )
    int_inputs = any(
        i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        for i in model.graph.input
        if i.name not in initializers
    )
    if (op_types & ATTENTION_MARKERS and activation_matmul) or (int_inputs and "Gather" in op_types and "MatMul" in op_types):
        return "transformer"
    return "convolutional"


def choose_op_types(model: onnx.ModelProto) -> Choice:
    family = model_family(model)
    if family == "recurrent":
        return Choice(RECURRENT_OP_TYPES, "recurrent graph (LSTM/GRU/RNN): only Conv/Gemm are quantized, recurrent cells stay float")
    if family == "transformer":
        return Choice(TRANSFORMER_OP_TYPES, "transformer graph (attention/embeddings): only MatMul/Gemm/Gather are quantized")
    return Choice(None, "convolutional graph: every op type ONNX Runtime can quantize")


# Measured on the development hosts (docs/ARCHITECTURE.md): int8 QDQ ResNet-18 ran at 0.30x of fp32 with
# AVX-512 VNNI and 1.02x on AVX2 without it. Other CPUs: unknown unless a profile states its peaks.
HOST_INT8_SPEEDUP = {("x86", True): 1 / 0.30, ("x86", False): 1.0}


def int8_speedup(target: QuantTarget) -> Choice:
    """How much faster int8 MACs run than fp32 ones on the target, and where the figure comes from."""
    if target.int8_speedup:
        return Choice(target.int8_speedup, f"{target.source}: peak_gops_int8 / peak_gops_fp32 = {target.int8_speedup:.2f}")
    family = "x86" if target.arch in X86_ARCHES else target.arch
    known = HOST_INT8_SPEEDUP.get((family, target.has_vnni))
    if known is None:
        return Choice(None, f"{target.source} is {target.arch}, whose int8 speed-up is unknown here: give a --profile for a latency estimate")
    return Choice(known, f"{target.source}: x86 {'with' if target.has_vnni else 'without'} VNNI, where int8 ran at "
                         f"{1 / known:.2f}x of fp32 on the hosts measured (docs/ARCHITECTURE.md)")


def choose_reduce_range(target: QuantTarget) -> Choice:
    if target.arch in X86_ARCHES and not target.has_vnni:
        return Choice(True, f"reduce_range on: {target.source} is x86 without VNNI, where u8*s8 products can saturate")
    if target.arch in X86_ARCHES:
        return Choice(False, f"reduce_range off: {target.source} is x86 with VNNI, which accumulates 8-bit products without saturation")
    return Choice(False, f"reduce_range off: {target.source} is {target.arch}, whose int8 kernels do not saturate")


def depthwise_weights(model: onnx.ModelProto) -> list[str]:
    """The weight initializers of 2-D depthwise Convs (one input and one output channel per group).
    ORT runs those in its own depthwise kernels (MLAS ConvSymDepthwise for symmetric weights, qdwconv
    otherwise), which widen 8-bit operands to 16 bits before they multiply, so they cannot saturate
    as u8*s8 GEMMs do without VNNI: reduce_range need not take their eighth bit. Real MobileNetV2,
    AVX2 host: 12.3 -> 14.6 dB SQNR all-int8 (16.0 -> 16.3 dB once biases are corrected, which
    fixes much of the same error); 8 bits everywhere saturated, 9.8 dB."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    readers = read_counts(model.graph)
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1])
        # a weight another node also reads would take 8 bits there too
        if group > 1 and shape is not None and len(shape) == 4 and shape[0] == group and shape[1] == 1 and readers[node.input[1]] == 1:
            found.append(node.input[1])
    return list(dict.fromkeys(found))


def eight_bit_under_reduce_range(model: onnx.ModelProto, reduce_range: bool, op_types: list[str]) -> list[str]:
    """The weights that keep all 8 bits where reduce_range bounds the others: the quantizer's list and
    the report's, from one place."""
    return depthwise_weights(model) if reduce_range and "Conv" in op_types else []


def reduce_range_decision(rule: str, reduce_range: bool, model: onnx.ModelProto, op_types: list[str], config: Any = None) -> str:
    """The reduce_range rule as the report states it, naming the weights that kept 8 bits anyway and,
    for ``config`` (the StaticInt8Config quantized with), how the others were bounded."""
    kept = eight_bit_under_reduce_range(model, reduce_range, op_types)
    pair_bounded = config is not None and bounds_pairs(reduce_range, config)
    return rule + (f"; the weights of {len(kept)} depthwise Convs keep 8 bits: ORT's depthwise kernels widen to 16 bits "
                   "before they multiply, so they cannot saturate" if kept else "") \
        + ("; the other int8 Conv/MatMul/Gemm weights take 8-bit levels scaled so that no two the kernel adds in 16 bits "
           "sum past 128, instead of 7 bits, where their scale and bias can follow (passes/pair_bounded_weights.py)"
           if pair_bounded else "")
