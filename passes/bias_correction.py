"""Bias correction: cancel the mean output shift that weight rounding causes in each quantized layer.

For a layer y = W x + b quantized to Wq, E[y_q - y] = (Wq - W) E[x]. Subtracting that from the
bias (Nagel et al. 2019; NNCF's FastBiasCorrection) fixes the drift that per-tensor and depthwise
weights suffer most. E[x] is measured per input channel on calibration data in the float model;
Wq is read from the int8 model ORT made, so the correction matches its rounding exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.passes.int8_eval import run_exposing

CORRECTED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class BiasCorrection:
    model: onnx.ModelProto  # the float source with corrected biases
    original: dict[str, tuple[str, np.ndarray | None]] = field(default_factory=dict)  # node -> (bias name, bias before)


def correct_biases(source: onnx.ModelProto, qdq: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> BiasCorrection:
    quantized = _quantized_weights(qdq)
    inits = {t.name: t for t in source.graph.initializer}
    layers = [n for n in source.graph.node if n.op_type in CORRECTED_OPS and n.name and len(n.input) > 1 and n.input[1] in quantized]
    means = _input_means(source, layers, feeds)
    model = onnx.ModelProto()
    model.CopyFrom(source)
    new_inits = {t.name: t for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    nodes = {n.name: n for n in model.graph.node}
    result = BiasCorrection(model)
    for layer in layers:
        mean = means.get(layer.input[0])
        weight = numpy_helper.to_array(inits[layer.input[1]]).astype(np.float64)
        if mean is None:
            continue
        shift = _output_shift(layer, quantized[layer.input[1]] - weight, mean)
        if shift is None or not np.all(np.isfinite(shift)):
            continue
        bias_name = _bias_name(nodes[layer.name], consumers, new_inits, shift.size)
        if bias_name is None:
            bias_name = f"{layer.name}.corrected_bias"
            if layer.op_type == "MatMul":
                continue  # a MatMul without a following bias Add has nowhere to take the shift
            node = nodes[layer.name]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bias_name
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(shift.size, np.float32), bias_name))
            new_inits[bias_name] = model.graph.initializer[-1]  # append copies: edit the one in the graph
            result.original[layer.name] = (bias_name, None)
        else:
            result.original[layer.name] = (bias_name, numpy_helper.to_array(new_inits[bias_name]).copy())
        bias = numpy_helper.to_array(new_inits[bias_name]).astype(np.float64)
        corrected = (bias.reshape(-1) - shift).reshape(bias.shape).astype(np.float32)
        new_inits[bias_name].CopyFrom(numpy_helper.from_array(corrected, bias_name))
    return result


def _quantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float weight name -> the weight as the int8 model computes it (dequantized)."""
    inits = {t.name: t for t in qdq.graph.initializer}
    weights = {}
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or not node.input[0].endswith("_quantized"):
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] in inits else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        weights[node.input[0][: -len("_quantized")]] = (q - zero) * scale
    return weights


def _input_means(source: onnx.ModelProto, layers: list[onnx.NodeProto], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    values = run_exposing(source, sorted({n.input[0] for n in layers}), feeds)
    means = {}
    for layer in layers:
        arrays = values.get(layer.input[0])
        if not arrays:
            continue
        if layer.op_type == "Conv":  # per channel, axis 1 of NC...
            means[layer.input[0]] = np.mean([a.astype(np.float64).mean(axis=tuple(i for i in range(a.ndim) if i != 1)) for a in arrays], axis=0)
        else:  # features on the last axis
            means[layer.input[0]] = np.mean([a.astype(np.float64).reshape(-1, a.shape[-1]).mean(axis=0) for a in arrays], axis=0)
    return means


def _output_shift(layer: onnx.NodeProto, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    attrs = {a.name: a for a in layer.attribute}
    if layer.op_type == "Conv":
        group = attrs["group"].i if "group" in attrs else 1
        out_channels, in_per_group = delta.shape[0], delta.shape[1]
        if mean.size != in_per_group * group:
            return None
        per_group = out_channels // group
        channel_mean = np.stack([mean[(c // per_group) * in_per_group: (c // per_group + 1) * in_per_group] for c in range(out_channels)])
        return np.einsum("ci,ci->c", delta.reshape(out_channels, in_per_group, -1).sum(axis=-1), channel_mean)
    if layer.op_type == "Gemm":
        if "transA" in attrs and attrs["transA"].i:
            return None
        matrix = delta.T if "transB" in attrs and attrs["transB"].i else delta  # (K, N)
    else:
        if delta.ndim != 2:
            return None
        matrix = delta
    return mean @ matrix if mean.size == matrix.shape[0] else None


def _bias_name(layer: onnx.NodeProto, consumers: dict, inits: dict, size: int) -> str | None:
    if layer.op_type in ("Conv", "Gemm"):
        name = layer.input[2] if len(layer.input) > 2 and layer.input[2] else None
        return name if name in inits and numpy_helper.to_array(inits[name]).size == size else None
    following = consumers.get(layer.output[0], [])
    if len(following) == 1 and following[0].op_type == "Add":
        other = [i for i in following[0].input if i != layer.output[0]]
        if other and other[0] in inits and numpy_helper.to_array(inits[other[0]]).size == size:
            return other[0]
    return None
