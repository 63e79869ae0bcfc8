"""8-bit weights that ONNX Runtime's u8*s8 kernels cannot saturate on x86 without VNNI.

Without VNNI, MLAS multiplies uint8 activations by int8 weights with vpmaddubsw, which adds each
pair of neighbouring products in 16 bits with saturation: 255*127 + 255*127 overflows. ORT's
answer, ``reduce_range``, gives every weight 7 bits, a bit of resolution lost on every layer. The
pairs are fixed by how MLAS packs the weight matrix: neighbours along the reduction axis K,
starting at an even index; for a Conv, K runs over (kernel row, kernel column, input channel),
channel fastest; for MatMul/Gemm over the rows of B (measured on onnxruntime 1.32: two 127 levels
saturate when they sit at K indices 2j and 2j+1, at none of the other placements tried;
tests/passes/test_pair_bounded_weights.py keeps checking it). A pair whose two levels sum to at
most 128 cannot overflow (255 * 128 = 32640 <= 32767), so each output channel's scale is the
largest pair sum of |w| over 127: rounding adds at most half a level to each, so the levels of
any pair sum to at most 128. Steps are 0.5-1x those of 7-bit weights (measured, all-int8 per-channel
QDQ with minmax ranges on synthetic images: ResNet-18-style min cosine 0.99923 with 7 bits, 0.99944
bounded, 0.99962 with plain 8 bits; MobileNetV2-style 0.9844, 0.9867, and 0.9691 with plain 8 bits,
which saturate), and they run on the same kernels at the same speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.passes.graph_edit import read_counts

PAIR_LEVELS = 127  # the largest pair sum of |w| sits here; rounding can add 1, and 255 * 128 fits int16


def bounds_pairs(reduce_range: bool, config: Any) -> bool:
    """Whether ``config`` (a StaticInt8Config) quantized under ``reduce_range`` gets pair-bounded
    weights: int8 weights in QDQ form (QOperator files keep ORT's 7-bit ones)."""
    return reduce_range and config.format == "qdq" and config.weight_type == "int8"


def pair_bounded_scales(k_by_n: np.ndarray) -> np.ndarray:
    """Per column (output channel) of a weight laid out as MLAS reduces it (rows along K): the
    symmetric int8 scale whose levels no neighbouring pair (rows 2j, 2j+1) can push past 128."""
    magnitude = np.abs(k_by_n.astype(np.float64))
    if magnitude.shape[0] % 2:  # the last row pairs with the packing's zero padding
        magnitude = np.concatenate([magnitude, np.zeros((1, magnitude.shape[1]))])
    pair_sums = magnitude[0::2] + magnitude[1::2]
    return np.maximum(pair_sums.max(axis=0), 1e-12) / PAIR_LEVELS


def bound_weight_pairs(qdq: onnx.ModelProto, source: onnx.ModelProto, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Give every int8 Conv/MatMul/Gemm weight of ORT's QDQ model ``qdq`` pair-bounded 8-bit levels
    from its float values in ``source``, in place, with the int32 biases rescaled to match. Weights
    named in ``keep`` (float names, e.g. depthwise Convs, whose kernel widens before it multiplies)
    stay as they are, as does any weight this cannot rewrite exactly (shared, asymmetric, not read
    as input B). Returns the float names of the weights rewritten."""
    floats = {t.name: t for t in source.graph.initializer}
    inits = {t.name: t for t in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    readers = read_counts(qdq.graph)
    rewritten = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or readers.get(node.input[1]) != 1 \
                or readers.get(dequantize.input[0]) != 1 or readers.get(dequantize.input[1]) != 1 or dequantize.input[0] not in inits:
            continue
        name = dequantize.input[0].removesuffix("_quantized")
        levels = numpy_helper.to_array(inits[dequantize.input[0]])
        if name in keep or name not in floats or levels.dtype != np.int8 or not _symmetric(dequantize, inits):
            continue
        weight = numpy_helper.to_array(floats[name]).astype(np.float64)
        order = reduction_order(node, weight)
        if weight.shape != levels.shape or order is None:
            continue
        rows, out_axis = weight_rows(node, weight)
        old_scale = numpy_helper.to_array(inits[dequantize.input[1]])
        scale = pair_bounded_scales(rows[:, order].T)
        if old_scale.size == 1:
            scale = np.array(scale.max())
        elif old_scale.size != scale.size or _axis(dequantize, weight.ndim) != out_axis:
            continue
        bias = _bias(node, producers, inits, floats)
        if bias is False or (bias is not None and int(np.prod(bias[1].dims)) != old_scale.size):
            continue  # an int32 bias whose scale cannot follow the weight's
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[out_axis] = -1
        q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        inits[dequantize.input[0]].CopyFrom(numpy_helper.from_array(q, dequantize.input[0]))
        inits[dequantize.input[1]].CopyFrom(numpy_helper.from_array(scale.astype(np.float32).reshape(old_scale.shape), dequantize.input[1]))
        if bias is not None:
            _rescale_bias(*bias, scale)
        rewritten.append(name)
    return rewritten


def _symmetric(dequantize: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if len(dequantize.input) < 3 or not dequantize.input[2]:
        return True
    zero = inits.get(dequantize.input[2])
    return zero is not None and not numpy_helper.to_array(zero).any()


def _axis(dequantize: onnx.NodeProto, rank: int) -> int:
    axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
    return axis + rank if axis < 0 else axis


def reduction_order(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    """The order in which MLAS reduces one output channel's inputs, as indices into that channel's
    row of the weight (``weight_rows``); None for a weight it does not reduce so (depthwise Convs,
    whose kernel widens before it multiplies). Neighbours 2j, 2j+1 of this order are the pairs."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight.ndim < 3 or (group > 1 and weight.shape[1] == 1):
            return None
        channels, positions = weight.shape[1], int(np.prod(weight.shape[2:]))
        k = np.arange(channels * positions)  # MLAS: kernel position major, channel fastest
        return (k % channels) * positions + k // channels  # the row is (channel, kernel position)
    return np.arange(weight.shape[1] if _trans_b(node) else weight.shape[0]) if weight.ndim == 2 else None


def weight_rows(node: onnx.NodeProto, weight: np.ndarray) -> tuple[np.ndarray, int]:
    """The weight as (output channels, inputs) and the weight axis of its output channels."""
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1), 0
    return (weight, 0) if _trans_b(node) else (weight.T, 1)


def _trans_b(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def _bias(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto],
          floats: dict[str, onnx.TensorProto]) -> tuple[onnx.TensorProto, onnx.TensorProto, float, np.ndarray] | bool | None:
    """None: no int32 bias; False: one that cannot follow a new weight scale; else what rescales it
    (its levels, its scale, the input's scale, and its float value where ``floats`` has it)."""
    if node.op_type != "Conv" and node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
        return None
    dequantize = producers.get(node.input[2])
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None  # a float bias: nothing to rescale
    activation = producers.get(node.input[0])
    if dequantize.input[0] not in inits or dequantize.input[1] not in inits or activation is None \
            or activation.op_type != "DequantizeLinear" or activation.input[1] not in inits:
        return False
    input_scale = float(numpy_helper.to_array(inits[activation.input[1]]).reshape(-1)[0])
    levels, scale = inits[dequantize.input[0]], inits[dequantize.input[1]]
    value = floats.get(dequantize.input[0].removesuffix("_quantized"))
    value = numpy_helper.to_array(value).astype(np.float64) if value is not None and list(value.dims) == list(levels.dims) \
        else numpy_helper.to_array(levels).astype(np.float64) * numpy_helper.to_array(scale).astype(np.float64)  # dequantized
    return levels, scale, input_scale, value


def _rescale_bias(levels: onnx.TensorProto, scale: onnx.TensorProto, input_scale: float, value: np.ndarray, weight_scale: np.ndarray) -> None:
    """ORT quantizes a bias on input scale x weight scale: ``value`` put on the new product."""
    old_shape = tuple(scale.dims)
    new_scale = (input_scale * weight_scale).astype(np.float32)  # a scalar, or one per output channel as before
    q = np.clip(np.round(value / new_scale.astype(np.float64)), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    levels.CopyFrom(numpy_helper.from_array(q, levels.name))
    scale.CopyFrom(numpy_helper.from_array(new_scale.reshape(old_shape), scale.name))
