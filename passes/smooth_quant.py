"""SmoothQuant-style scale migration: move activation outliers into the weights of the MatMuls
that read them, so both quantize well (Xiao et al. 2023; NNCF's SmoothQuant for transformers).

For an activation X feeding MatMuls X @ W, a per-channel scale s with X' = X / s and W' = s * W
leaves the float product unchanged; s_k = max|X_k|^alpha / max|W_k|^(1 - alpha) evens out the
channel ranges. X / s is folded into a LayerNorm that feeds only those MatMuls. Otherwise it is an
explicit Mul that only the MatMuls read: in most encoders a residual branch reads the same
LayerNorm output, and it keeps reading the unscaled one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeport.passes.graph_edit import editable_copy
from edgeport.passes.int8_eval import run_exposing

SCALE_RANGE = (1e-4, 1e4)
  # a channel that never fires must not blow its weights up
_SCALE_SUFFIX = "__smooth"


def scale_nodes(model: onnx.ModelProto) -> frozenset[str]:
    """The Mul nodes smoothing added. They stay float: quantizing one would quantize the very
    activation with outlier channels that it exists to even out."""
    return frozenset(n.name for n in model.graph.node if n.op_type == "Mul" and n.name.endswith(_SCALE_SUFFIX))


def smooth_activations(source: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], alpha: float = 0.5) -> tuple[onnx.ModelProto, int]:
    """A function-preserving copy of ``source`` with migrated scales, and how many activations were smoothed."""
    model, inits, consumers = editable_copy(source)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    weight_uses = {name: len(readers) for name, readers in consumers.items()}
    smoothable = {t: [r for r in readers if _smoothable(r, t, inits, weight_uses)] for t, readers in consumers.items() if t not in inits}
    smoothable = {t: readers for t, readers in smoothable.items() if readers}
    targets = list(smoothable)
    if not targets:
        return model, 0
    values = run_exposing(source, targets, feeds)
    smoothed = 0
    muls: dict[str, onnx.NodeProto] = {}  # tensor -> the Mul that divides it, placed after its producer below
    for tensor in targets:
        arrays = values.get(tensor)
        if not arrays:
            continue
        amax = np.max([np.abs(a.astype(np.float64)).reshape(-1, a.shape[-1]).max(axis=0) for a in arrays], axis=0)
        weights = [(inits[r.input[1]], _input_axis(r)) for r in smoothable[tensor]]
        wmax = np.max([np.abs(numpy_helper.to_array(w).astype(np.float64)).max(axis=1 - axis) for w, axis in weights], axis=0)
        if amax.shape != wmax.shape:
            continue
        scale = np.where((amax > 0) & (wmax > 0), amax**alpha / np.maximum(wmax, 1e-12) ** (1 - alpha), 1.0)
        scale = np.clip(scale, *SCALE_RANGE)
        for w, axis in weights:
            scaled = numpy_helper.to_array(w) * (scale[:, None] if axis == 0 else scale[None, :])
            w.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), w.name))
        mul = _divide_activation(graph, tensor, scale, producer.get(tensor), smoothable[tensor], len(consumers[tensor]), inits)
        if mul is not None:
            muls[tensor] = mul
        smoothed += 1
    if muls:
        inputs = {i.name for i in graph.input}
        nodes = [muls[t] for t in muls if t in inputs]
        for node in graph.node:
            nodes.append(node)
            nodes.extend(muls[o] for o in node.output if o in muls)
        ordered = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(ordered, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(ordered)
    return model, smoothed


def _input_axis(reader: onnx.NodeProto) -> int:
    """The weight axis that meets the activation's channels: 0 for MatMul and Gemm, 1 for Gemm with transB."""
    return 1 if reader.op_type == "Gemm" and any(a.name == "transB" and a.i for a in reader.attribute) else 0


def _smoothable(reader: onnx.NodeProto, tensor: str, inits: dict, weight_uses: dict) -> bool:
    """A MatMul (or Gemm without transA) reading ``tensor`` as its left operand, with a 2-D float
    weight used nowhere else."""
    if reader.op_type not in ("MatMul", "Gemm") or reader.input[0] != tensor or reader.input[1] not in inits:
        return False
    if reader.op_type == "Gemm" and any(a.name == "transA" and a.i for a in reader.attribute):
        return False
    weight = inits[reader.input[1]]
    return len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT and weight_uses.get(reader.input[1]) == 1


def _divide_activation(graph: onnx.GraphProto, tensor: str, scale: np.ndarray, producer: onnx.NodeProto | None,
                       readers: list[onnx.NodeProto], all_readers: int, inits: dict) -> onnx.NodeProto | None:
    """Fold X / s into the LayerNorm that makes X when only the smoothed MatMuls read it; otherwise
    return the Mul node that divides it for them (they already point at the Mul's output)."""
    layer_norm = producer is not None and producer.op_type == "LayerNormalization" and len(producer.input) >= 3
    graph_outputs = {o.name for o in graph.output}
    if layer_norm and tensor not in graph_outputs and all(i in inits for i in producer.input[1:3]) and len(readers) == all_readers \
            and sum(1 for n in graph.node for i in n.input if i in producer.input[1:3]) == 2:
        for name in producer.input[1:3]:  # fold: gamma / s and beta / s
            init = inits[name]
            init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) / scale).astype(np.float32), name))
        return None
    inverse = f"{tensor}__smooth_inverse_scale"
    smoothed = f"{tensor}__smoothed"
    graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
    for reader in readers:
        reader.input[0] = smoothed
    return helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{tensor}{_SCALE_SUFFIX}")
