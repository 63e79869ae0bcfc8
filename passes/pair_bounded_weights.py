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

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.passes.graph_edit import read_counts

PAIR_LEVELS = 127  # the largest pair sum of |w| sits here; rounding can add 1, and 255 * 128 fits int16


def bounds_pairs(reduce_range: bool, config: Any) -> bool:
    """Whether ``config`` (a StaticInt8Config) quantized under ``reduce_range`` gets pair-bounded
    weights: int8 ones (uint8 weights take ORT's u8*u8 kernels, which widen before they multiply)."""
    return reduce_range and config.weight_type == "int8"


def pair_bounded_scales(k_by_n: np.ndarray) -> np.ndarray:
    """Per column (output channel) of a weight laid out as MLAS reduces it (rows along K): the
    symmetric int8 scale whose levels no neighbouring pair (rows 2j, 2j+1) can push past 128."""
    magnitude = np.abs(k_by_n)
    if magnitude.shape[0] % 2:  # the last row pairs with the packing's zero padding
        magnitude = np.concatenate([magnitude, np.zeros((1, magnitude.shape[1]), magnitude.dtype)])
    # summed in float64: exact for two float32 weights
    pair_sums = magnitude[0::2].astype(np.float64) + magnitude[1::2].astype(np.float64)
    return pair_sums.max(axis=0) / PAIR_LEVELS  # 0 for an all-zero channel: no scale follows from it


# QOperator nodes ORT's static quantizer writes that read an int8 weight: the float op whose layout it has,
# then the input indices of the weight, its scale, its zero point, the int32 bias (on input scale x weight
# scale) and the input scale
QOPERATOR_INPUTS = {"QLinearConv": ("Conv", 3, 4, 5, 8, 1), "QGemm": ("Gemm", 3, 4, 5, 6, 1), "QLinearMatMul": ("MatMul", 3, 4, 5, None, 1)}
INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class WeightSite:
    """Where one node's int8 weight, its scale and its int32 bias live, in either form of int8 file."""

    layout: onnx.NodeProto  # the node, or for a QOperator node its float op with the same attributes
    levels: str
    scale: str
    zero: str | None
    axis: int  # the weight axis a per-channel scale runs along
    bias: str | None  # the int32 bias
    bias_scale: str | None  # its scale (QDQ); None: input scale x weight scale, implied (QOperator)
    input_scale: str | None


def bound_weight_pairs(model: onnx.ModelProto, source: onnx.ModelProto, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Give every int8 Conv/MatMul/Gemm weight of ORT's int8 ``model`` (QDQ or QOperator)
    pair-bounded 8-bit levels from its float values in ``source``, in place, with the int32 biases
    rescaled to match. Weights named in ``keep`` (float names, e.g. depthwise Convs, whose kernel
    widens before it multiplies) stay as they are, as does any weight this cannot rewrite exactly
    (shared, asymmetric, its bias shared or not a constant); so do weights inside subgraphs (If,
    Loop, Scan bodies), which this does not enter. Returns the float names of the weights rewritten."""
    floats = {t.name: t for t in source.graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    readers = read_counts(model.graph)
    rewritten = []
    for site in weight_sites(model):
        once = [site.levels, site.scale, *([site.bias] if site.bias else []), *([site.bias_scale] if site.bias_scale else [])]
        if any(name not in inits or readers[name] != 1 for name in once) or (site.bias and site.input_scale not in inits):
            continue
        name = site.levels.removesuffix("_quantized")
        levels = numpy_helper.to_array(inits[site.levels])
        zero = numpy_helper.to_array(inits[site.zero]) if site.zero in inits else None
        if name in keep or name not in floats or levels.dtype != np.int8 or (site.zero and (zero is None or zero.any())):
            continue
        weight = numpy_helper.to_array(floats[name])
        order = reduction_order(site.layout, weight)
        if weight.shape != levels.shape or order is None:
            continue
        rows, out_axis = weight_rows(site.layout, weight)
        old_scale = numpy_helper.to_array(inits[site.scale]).astype(np.float64)
        if old_scale.size != 1 and (old_scale.size != rows.shape[0] or site.axis % weight.ndim != out_axis):
            continue
        bias = _bias_value(site, inits, floats, old_scale)
        if bias is not None and bias.size != rows.shape[0]:
            continue
        scale = pair_bounded_scales(rows[:, order].T)
        if bias is not None:  # as ORT does: a scale so small that the bias cannot be held in int32 is raised
            input_scale = float(numpy_helper.to_array(inits[site.input_scale]).reshape(-1)[0])
            scale = np.maximum(scale, 1.0001 * np.abs(bias) / (input_scale * INT32_LIMIT))
        scale = np.array(scale.max()) if old_scale.size == 1 else scale
        scale = np.where(scale > 0, scale, old_scale.reshape(-1) if old_scale.size > 1 else old_scale)  # all-zero: ORT's
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[out_axis] = -1
        q = np.clip(np.round(weight.astype(np.float64) / scale.reshape(shape)), -127, 127).astype(np.int8)
        inits[site.levels].CopyFrom(numpy_helper.from_array(q, site.levels))
        inits[site.scale].CopyFrom(numpy_helper.from_array(scale.astype(np.float32).reshape(old_scale.shape), site.scale))
        if bias is not None:
            _rescale_bias(site, inits, bias, scale)
        rewritten.append(name)
    return rewritten


def weight_sites(model: onnx.ModelProto) -> list[WeightSite]:
    """Every Conv/MatMul/Gemm reading a dequantized weight no other node reads (QDQ), and every
    QOperator node of QOPERATOR_INPUTS, with where its weight, scale and bias live."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = read_counts(model.graph)

    def dequantize(name: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def optional(node: onnx.NodeProto, index: int | None) -> str | None:
        return node.input[index] if index is not None and len(node.input) > index and node.input[index] else None

    sites = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1 and (weight := dequantize(node.input[1])) is not None \
                and readers[node.input[1]] == 1:
            bias_input = optional(node, 2) if node.op_type != "MatMul" else None
            bias = dequantize(bias_input) if bias_input else None
            if bias is not None and readers[bias_input] != 1:
                continue  # a bias two nodes read cannot follow one node's weight scale
            activation = dequantize(node.input[0])
            axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
            sites.append(WeightSite(node, weight.input[0], optional(weight, 1) or "", optional(weight, 2), axis,
                                    bias.input[0] if bias else None, optional(bias, 1) if bias else None,  # a float bias needs nothing
                                    optional(activation, 1) if activation is not None else None))
        elif node.op_type in QOPERATOR_INPUTS:
            float_op, weight, scale, zero, bias, input_scale = QOPERATOR_INPUTS[node.op_type]
            layout = onnx.NodeProto(op_type=float_op, name=node.name)
            layout.attribute.extend(node.attribute)
            axis = output_axis(layout)
            sites.append(WeightSite(layout, optional(node, weight) or "", optional(node, scale) or "", optional(node, zero), axis,
                                    optional(node, bias), None, optional(node, input_scale)))
    return sites


def reduction_order(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    """The order in which MLAS reduces one output channel's inputs, as indices into that channel's
    row of the weight (``weight_rows``); None for a weight it does not reduce so (depthwise Convs,
    one input and one output channel per group, whose kernel widens before it multiplies; with
    more outputs per group ORT runs a GEMM, which pairs kernel positions). Neighbours 2j, 2j+1 of
    this order are the pairs."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight.ndim < 3 or (group > 1 and weight.shape[1] == 1 and weight.shape[0] == group):
            return None
        channels, positions = weight.shape[1], int(np.prod(weight.shape[2:]))
        k = np.arange(channels * positions)  # MLAS: kernel position major, channel fastest
        return (k % channels) * positions + k // channels  # the row is (channel, kernel position)
    return np.arange(weight.shape[1] if trans_b(node) else weight.shape[0]) if weight.ndim == 2 else None


def weight_rows(node: onnx.NodeProto, weight: np.ndarray) -> tuple[np.ndarray, int]:
    """The weight as (output channels, inputs) and the weight axis of its output channels."""
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1), output_axis(node)
    return (weight if trans_b(node) else weight.T), output_axis(node)


def trans_b(node: onnx.NodeProto) -> bool:
    """A Gemm that reads its weight as (N, K)."""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def output_axis(node: onnx.NodeProto) -> int:
    """The weight axis of the node's output channels: a per-channel scale runs along it."""
    return 0 if node.op_type == "Conv" or trans_b(node) else 1


def _bias_value(site: WeightSite, inits: dict[str, onnx.TensorProto], floats: dict[str, onnx.TensorProto],
                weight_scale: np.ndarray) -> np.ndarray | None:
    """The float value of the site's int32 bias (from ``floats`` where it is there, else dequantized
    with the old ``weight_scale``); None where it has none."""
    if site.bias is None:
        return None
    levels = inits[site.bias]
    value = floats.get(site.bias.removesuffix("_quantized"))
    if value is not None and list(value.dims) == list(levels.dims):
        return numpy_helper.to_array(value).astype(np.float64).reshape(-1)
    old_scale = numpy_helper.to_array(inits[site.bias_scale]).astype(np.float64) if site.bias_scale is not None else \
        float(numpy_helper.to_array(inits[site.input_scale]).reshape(-1)[0]) * weight_scale
    return (numpy_helper.to_array(levels).astype(np.float64) * old_scale).reshape(-1)


def _rescale_bias(site: WeightSite, inits: dict[str, onnx.TensorProto], value: np.ndarray, weight_scale: np.ndarray) -> None:
    """ORT quantizes a bias on input scale x weight scale: ``value`` put on the new product."""
    input_scale = float(numpy_helper.to_array(inits[site.input_scale]).reshape(-1)[0])
    new_scale = (input_scale * weight_scale).astype(np.float32)  # a scalar, or one per output channel as before
    q = np.clip(np.round(value / new_scale.astype(np.float64)), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    inits[site.bias].CopyFrom(numpy_helper.from_array(q, site.bias))
    if site.bias_scale is not None:
        inits[site.bias_scale].CopyFrom(numpy_helper.from_array(new_scale.reshape(tuple(inits[site.bias_scale].dims)), site.bias_scale))
