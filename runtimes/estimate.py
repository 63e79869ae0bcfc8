"""Latency estimate for a target from the ONNX graph: MACs and bytes per node against the
profile's throughput and bandwidth (a roofline), labelled as an estimate, never a measurement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgeport.specs import TensorSpec

INT8_COMPUTE_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits"}
# What real kernels reach of peak: a stated assumption, shown in every report beside the estimate.
COMPUTE_EFFICIENCY = 0.5
BANDWIDTH_EFFICIENCY = 0.6
PER_NODE_OVERHEAD_US = 2.0


@dataclass
class GraphCost:
    macs_fp32: int
    macs_int8: int
    other_ops: int
    weight_bytes: int
    activation_bytes: int
    nodes: int
    nodes_without_shapes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs_fp32": self.macs_fp32, "macs_int8": self.macs_int8, "other_ops": self.other_ops,
            "weight_mb": round(self.weight_bytes / 1e6, 3), "activation_mb": round(self.activation_bytes / 1e6, 3),
            "nodes": self.nodes, "nodes_without_shapes": self.nodes_without_shapes,
        }


def graph_cost(model_path: str, inputs: list[TensorSpec]) -> GraphCost:
    """Count MACs (split by precision), elementwise ops and bytes moved, at the given concrete input shapes."""
    model = onnx.load(model_path)
    fixed = {s.name: s.shape for s in inputs}
    for value in model.graph.input:
        if value.name in fixed:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, fixed[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        pass  # counted as nodes without shapes below
    shapes: dict[str, tuple[int, ...]] = {}
    itemsize: dict[str, int] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and all(d is not None for d in dims):
            shapes[value.name] = tuple(dims)
            itemsize[value.name] = _itemsize(tensor_type.elem_type)
    initializers = {t.name: t for t in model.graph.initializer}
    for name, tensor in initializers.items():
        shapes[name] = tuple(tensor.dims)
        itemsize[name] = _itemsize(tensor.data_type)
    int8_inputs = _dequantized_from_int8(model)

    # Runtimes fuse QDQ pairs into int8 kernels, so Q/DQ nodes cost nothing of their own here.
    nodes = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    cost = GraphCost(0, 0, 0, sum(_nbytes(t) for t in initializers.values()), 0, len(nodes), 0)
    for node in nodes:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            cost.nodes_without_shapes += 1
            continue
        cost.activation_bytes += sum(_count(shapes[o]) * itemsize[o] for o in node.output if o in shapes)
        cost.activation_bytes += sum(_count(shapes[i]) * itemsize[i] for i in node.input if i in shapes and i not in initializers)
        macs = node_macs(node, shapes, out)
        if macs is None:
            cost.other_ops += _count(out)
            continue
        quantized = node.op_type in INT8_COMPUTE_OPS or all(i in int8_inputs for i in node.input[:2])
        if quantized:
            cost.macs_int8 += macs
        else:
            cost.macs_fp32 += macs
    return cost


def estimate_latency_ms(cost: GraphCost, peak_gops_fp32: float, peak_gops_int8: float, bandwidth_gbs: float) -> dict[str, Any]:
    """A roofline over the whole graph: compute at COMPUTE_EFFICIENCY of peak, memory traffic at
    BANDWIDTH_EFFICIENCY of bandwidth, whichever is slower, plus a fixed cost per node."""
    compute_s = (2 * cost.macs_fp32 + cost.other_ops) / (peak_gops_fp32 * 1e9 * COMPUTE_EFFICIENCY)
    compute_s += 2 * cost.macs_int8 / (peak_gops_int8 * 1e9 * COMPUTE_EFFICIENCY)
    memory_s = (cost.weight_bytes + cost.activation_bytes) / (bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    overhead_s = cost.nodes * PER_NODE_OVERHEAD_US * 1e-6
    total_ms = (max(compute_s, memory_s) + overhead_s) * 1e3
    return {
        "latency_ms": round(total_ms, 4),
        "bound": "compute" if compute_s >= memory_s else "memory",
        "compute_ms": round(compute_s * 1e3, 4),
        "memory_ms": round(memory_s * 1e3, 4),
        "assumptions": f"roofline at {COMPUTE_EFFICIENCY:.0%} of peak compute and {BANDWIDTH_EFFICIENCY:.0%} of peak bandwidth, {PER_NODE_OVERHEAD_US} us per node",
    }


def node_macs(node: onnx.NodeProto, shapes: dict, out: tuple[int, ...]) -> int | None:
    """Multiply-accumulates of one node at known shapes; None for ops that are not MAC-bound."""
    op = node.op_type
    if op in ("Conv", "QLinearConv", "ConvInteger", "ConvTranspose"):
        weight = shapes.get(node.input[3] if op == "QLinearConv" else node.input[1])
        if weight is None:
            return None
        if op == "ConvTranspose":  # weight is (C_in, C_out / group, k...): each input element meets prod(weight[1:])
            return _count(shapes.get(node.input[0], out)) * int(np.prod(weight[1:]))
        return _count(out) * int(np.prod(weight[1:]))
    if op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"):
        a = shapes.get(node.input[0])
        if a is None:
            return None
        transposed = op == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
        k = a[-2] if transposed else a[-1]
        return _count(out) * int(k)
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = (shapes.get(node.input[i]) for i in range(3))
        if None in (x, w, r):
            return None
        return int(x[0] * x[1] * (np.prod(w) + np.prod(r)))  # seq x batch x (input + recurrent weights)
    return None


def _dequantized_from_int8(model: onnx.ModelProto) -> set[str]:
    """Tensors produced by DequantizeLinear from an 8-bit tensor: a QDQ pair means an int8 kernel."""
    return {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 4


def _nbytes(tensor: onnx.TensorProto) -> int:
    return _count(tuple(tensor.dims)) * _itemsize(tensor.data_type)


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1
