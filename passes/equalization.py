"""Cross-layer equalization (Nagel et al. 2019; AIMET's CLE): for two convolutions in a row, with at
most a ReLU between them, scale each channel of the first down and the matching input channel of
the second up by s_i = sqrt(r1_i / r2_i), so both layers' per-channel weight ranges meet. ReLU
commutes with a positive scale, so the float function is unchanged; per-tensor weights (and
depthwise layers with very uneven channels) quantize far better after it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.passes.graph_edit import editable_copy

SCALE_RANGE = (1e-3, 1e3)


def equalize_pairs(source: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A function-preserving copy of ``source`` with equalized Conv pairs, and how many pairs."""
    model, inits, consumers = editable_copy(source)
    graph = model.graph
    uses = {name: len(consumers.get(name, [])) for name in inits}
    pairs = 0
    for first in list(graph.node):
        second = _next_conv(first, consumers)
        if second is None or not _own_weights(first, inits, uses) or not _own_weights(second, inits, uses):
            continue
        w1, w2 = (numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in (first, second))
        group2 = _attr(second, "group", 1)
        if _attr(first, "group", 1) not in (1, w1.shape[0]) or group2 not in (1, w2.shape[0]):
            continue  # grouped (not depthwise) convolutions: channels do not line up one to one
        depthwise2 = group2 > 1
        if (w2.shape[0] if depthwise2 else w2.shape[1]) != w1.shape[0]:
            continue
        r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
        r2 = np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if depthwise2 else np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(axis=1)
        scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-12)), 1.0)
        scale = np.clip(scale, *SCALE_RANGE)
        _set(inits[first.input[1]], w1 / scale.reshape(-1, *[1] * (w1.ndim - 1)))
        if len(first.input) > 2 and first.input[2] in inits:
            _set(inits[first.input[2]], numpy_helper.to_array(inits[first.input[2]]).astype(np.float64) / scale)
        shape = (-1, *[1] * (w2.ndim - 1)) if depthwise2 else (1, -1, *[1] * (w2.ndim - 2))
        _set(inits[second.input[1]], w2 * scale.reshape(shape))
        pairs += 1
    return model, pairs


def _next_conv(first: onnx.NodeProto, consumers: dict) -> onnx.NodeProto | None:
    """The Conv that alone reads ``first``'s output, directly or through a ReLU only it reads."""
    if first.op_type != "Conv":
        return None
    tensor = first.output[0]
    readers = consumers.get(tensor, [])
    if len(readers) == 1 and readers[0].op_type == "Relu":
        tensor = readers[0].output[0]
        readers = consumers.get(tensor, [])
    if len(readers) == 1 and readers[0].op_type == "Conv" and readers[0].input[0] == tensor:
        return readers[0]
    return None


def _own_weights(node: onnx.NodeProto, inits: dict, uses: dict) -> bool:
    """Weights (and bias) are constants that no other node reads."""
    return all(name in inits and uses.get(name) == 1 for name in node.input[1:3] if name)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))
