"""How far the fp32 model moves when only its inputs are rounded as its int8 version rounds them.

Some models amplify small input noise (a random-weight deep BatchNorm net, a detector whose
thresholded map flips on faint text): when rounding the input alone already misses the target, no
mix of float and int8 layers behind a quantized input can meet it, and the report says so instead
of naming layers as blockers.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgeport.passes.fidelity import FidelityScore
from edgeport.passes.int8_eval import EvalSplit, Scorer


def input_quantizers(qdq: onnx.ModelProto) -> dict[str, tuple[float, int, np.dtype]]:
    """Graph input -> (scale, zero point, integer dtype) of the QuantizeLinear that reads it, where
    the scale is one value (activations are quantized per tensor)."""
    constants = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    inputs = {i.name for i in qdq.graph.input} - set(constants)
    found: dict[str, tuple[float, int, np.dtype]] = {}
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inputs or node.input[1] not in constants:
            continue
        scale = constants[node.input[1]]
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale.size == 1 and zero is not None and zero.size == 1:
            found[node.input[0]] = (float(scale.reshape(())), int(zero.reshape(())), zero.dtype)
    return found


def rounds_inputs(model: onnx.ModelProto) -> bool:
    """Whether ``model`` rounds a graph input to int8: a QuantizeLinear reads it directly, or through
    a per-channel scale by a constant (a smoothing rewrite's Mul/Div)."""
    constants = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - constants
    scaled = {n.output[0] for n in model.graph.node if n.op_type in ("Mul", "Div") and len(n.input) == 2
              and n.input[0] in inputs and n.input[1] in constants}
    return any(n.op_type == "QuantizeLinear" and n.input[0] in inputs | scaled for n in model.graph.node)


def rounded_like_int8(feed: dict[str, np.ndarray], quantizers: dict[str, tuple[float, int, np.dtype]]) -> dict[str, np.ndarray]:
    """``feed`` with each quantized input taken to the int8 grid and back, exactly as QuantizeLinear
    then DequantizeLinear would (round half to even, saturate)."""
    rounded = dict(feed)
    for name, (scale, zero, dtype) in quantizers.items():
        if name in feed and np.asarray(feed[name]).dtype.kind == "f":
            value = np.asarray(feed[name])
            limits = np.iinfo(dtype)
            levels = np.clip(np.rint(value / scale) + zero, limits.min, limits.max)
            rounded[name] = ((levels - zero) * scale).astype(value.dtype)
    return rounded


def input_rounding_floor(reference: ort.InferenceSession, split: EvalSplit, qdq: onnx.ModelProto,
                         scorer: Scorer) -> FidelityScore | None:
    """The fp32 model scored on ``split`` with its inputs rounded as ``qdq`` rounds them; None where
    ``qdq`` quantizes no graph input. A carried state is rounded only in the first feed."""
    quantizers = input_quantizers(qdq)
    if not quantizers:
        return None
    rounded = EvalSplit([rounded_like_int8(f, quantizers) for f in split.feeds], split.labels, split.reference, split.carry)
    return scorer.score(reference, rounded)
