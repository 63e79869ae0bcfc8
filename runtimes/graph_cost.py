"""What each node of an ONNX graph costs at concrete input shapes: its op class, precision,
multiply-accumulates and the bytes it moves. Pricing those in time is runtimes/estimate.py's job.

Q/DQ pairs are fused into their consumers, as ONNX Runtime's QDQ kernels do: a tensor read through
a DequantizeLinear of an 8-bit tensor, or written only to QuantizeLinear, moves at one byte per
element. Nodes inside If/Loop/Scan bodies are counted: an If by its costlier branch, a Loop or Scan
by its body times the trip count where the graph fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgeport.errors import first_line
from edgeport.specs import TensorSpec

MAC_OPS = {"Conv", "QLinearConv", "ConvInteger", "ConvTranspose", "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger",
           "MatMulIntegerToFloat", "LSTM", "GRU", "RNN"}
INT8_COMPUTE_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                    "MatMulNBits"}
DATA_MOVEMENT_OPS = {"Transpose", "Reshape", "Concat", "Split", "Slice", "Gather", "GatherElements", "Pad", "Expand", "Tile",
                     "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape",
                     "Cast", "ScatterND", "GatherND"}
OP_CLASSES = ("conv", "depthwise", "matmul", "recurrent", "elementwise", "data_movement")
REFUSE_SHAPELESS_SHARE = 0.05  # of the compute nodes' weights: beyond it, an estimate would hide too much


@dataclass
class NodeCost:
    name: str
    op_type: str
    op_class: str  # one of OP_CLASSES
    precision: str  # "int8" | "fp32"
    macs: int  # 0 for nodes that are not MAC-bound
    elements: int  # output elements: the work of a node that is not MAC-bound
    bytes_moved: int  # activations read and written, at their width in memory
    weight_bytes: int = 0  # constants read (at their stored width: int8 behind a DequantizeLinear)
    repeats: int = 1  # a Loop/Scan body runs this many times


@dataclass
class GraphCost:
    nodes: list[NodeCost] = field(default_factory=list)
    shapeless: list[str] = field(default_factory=list)  # nodes whose output shape is unknown (not counted)
    shapeless_weights: int = 0  # weight elements of the compute nodes among them
    notes: list[str] = field(default_factory=list)
    refused: str | None = None  # why no estimate can stand on these counts

    def total(self, attribute: str, precision: str | None = None) -> int:
        return sum(getattr(n, attribute) * n.repeats for n in self.nodes if precision is None or n.precision == precision)

    def to_dict(self) -> dict[str, Any]:
        moved = self.total("bytes_moved") + self.total("weight_bytes")
        return {
            "macs_fp32": self.total("macs", "fp32"), "macs_int8": self.total("macs", "int8"),
            "other_ops": sum(n.elements * n.repeats for n in self.nodes if not n.macs),
            "mb_moved": round(moved / 1e6, 3), "weight_mb_read": round(self.total("weight_bytes") / 1e6, 3), "nodes": len(self.nodes), "nodes_without_shapes": len(self.shapeless),
            **({"notes": self.notes} if self.notes else {}), **({"refused": self.refused} if self.refused else {}),
        }


def graph_cost(model_path: str, inputs: list[TensorSpec]) -> GraphCost:
    """Per-node costs at the given concrete input shapes."""
    model = onnx.load(model_path)
    fixed = {s.name: s.shape for s in inputs}
    for value in model.graph.input:
        if value.name in fixed:
            for dim, size in zip(value.type.tensor_type.shape.dim, fixed[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    cost = GraphCost()
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # a run below may still give the shapes
        cost.notes.append(f"ONNX shape inference failed ({first_line(exc)[:160]})")
    tensors = _TensorFacts()
    tensors.add_graph(model.graph)
    unknown = [n.output[0] for n in model.graph.node if n.output and n.output[0] and n.output[0] not in tensors.shapes
               and n.op_type not in ("If", "Loop", "Scan")]
    if unknown:
        # Static inference stops at shapes computed from data (position ids sliced to the sequence
        # length, say): one run at these input shapes knows every top-level tensor's shape.
        cost.notes.append(tensors.add_shapes_from_a_run(model, inputs, unknown))
    _cost_graph(model.graph, tensors, cost, repeats=1)
    _refuse_if_shapeless_compute(model.graph, tensors, cost)
    return cost


class _TensorFacts:
    """Shapes and widths of every tensor of the graph and its subgraphs."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.itemsize: dict[str, int] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.int8_sources: set[str] = set()  # outputs of a DequantizeLinear that reads an 8-bit tensor
        self.quantized_outputs: set[str] = set()  # tensors read only by QuantizeLinear
        self.weights: set[str] = set()
        self.weight_views: set[str] = set()  # a weight's float view, produced by DequantizeLinear

    def add_graph(self, graph: onnx.GraphProto) -> None:
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if tensor_type.HasField("shape") and all(d is not None for d in dims):
                self.shapes[value.name] = tuple(dims)
                self.itemsize[value.name] = _itemsize(tensor_type.elem_type)
        for tensor in graph.initializer:
            self.shapes[tensor.name] = tuple(tensor.dims)
            self.itemsize[tensor.name] = _itemsize(tensor.data_type)
            self.weights.add(tensor.name)
            if tensor.data_type == onnx.TensorProto.INT64 and np.prod(tensor.dims, dtype=np.int64) <= 16:
                self.constants[tensor.name] = numpy_helper.to_array(tensor)
        self.mark_int8_tensors(graph)
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.INT64:
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    self.add_graph(attribute.g)

    def mark_int8_tensors(self, graph: onnx.GraphProto) -> None:
        """Which tensors a fused kernel reads or writes as int8 (from the widths known so far)."""
        readers: dict[str, list[str]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node.op_type)
        producers = {o: n.op_type for n in graph.node for o in n.output}
        for node in graph.node:
            # only where the runtime fuses the pair does the kernel read or write int8
            fused = node.op_type in ("QuantizeLinear", "DequantizeLinear") and _fused_qdq(node, producers, readers, self.weights)
            if fused and node.op_type == "DequantizeLinear" and self.itemsize.get(node.input[0], 4) == 1:
                self.int8_sources.add(node.output[0])
            if node.op_type == "DequantizeLinear" and node.input[0] in self.weights:
                self.weight_views.add(node.output[0])
            if fused and node.op_type == "QuantizeLinear" and all(op == "QuantizeLinear" for op in readers.get(node.input[0], [])):
                self.quantized_outputs.add(node.input[0])

    def add_shapes_from_a_run(self, model: onnx.ModelProto, inputs: list[TensorSpec], names: list[str]) -> str:
        import onnxruntime as ort

        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        outputs = {o.name for o in exposed.graph.output}
        wanted = [n for node in exposed.graph.node for n in node.output if n and n not in outputs]
        for name in wanted:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))  # ORT accepts an output without a type
        feeds = {s.name: np.zeros(s.shape, np.dtype(s.dtype)) for s in inputs}
        try:
            session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
            values = session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})
        except Exception as exc:
            return f"shapes of {len(names)} tensors unknown to ONNX shape inference, and a run to learn them failed ({first_line(exc)[:120]})"
        for output, value in zip(session.get_outputs(), values):
            value = np.asarray(value)
            if output.name not in self.shapes and value.dtype != object:
                self.shapes[output.name] = tuple(value.shape)
                self.itemsize[output.name] = value.dtype.itemsize
        self.mark_int8_tensors(model.graph)  # some 8-bit tensors are known by their width only now
        return f"shapes of {len(names)} tensors unknown to ONNX shape inference were taken from one run on zeros at these input shapes"

    def width(self, name: str) -> int:
        return 1 if name in self.int8_sources or name in self.quantized_outputs else self.itemsize.get(name, 4)

    def nbytes(self, name: str) -> int:
        return _count(self.shapes[name]) * self.width(name) if name in self.shapes else 0


# Ops ONNX Runtime's CPU provider runs as one int8 kernel when Q/DQ surround them (its QDQ
# selectors): around these, Q and DQ cost nothing of their own. Elsewhere they are real nodes.
QDQ_FUSED_OPS = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize",
                 "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Sigmoid", "LeakyRelu", "Softmax",
                 "Relu", "Clip", "Split", "Slice", "Pad", "Where", "ArgMax", "InstanceNormalization"}


FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}


def _fused_qdq(node: onnx.NodeProto, producers: dict[str, str], readers: dict[str, list[str]], weights: set[str]) -> bool:
    if node.op_type == "DequantizeLinear":
        consumers = [op for op in readers.get(node.output[0], []) if op not in ("Shape", "Size")]  # these read no data
        return node.input[0] in weights or bool(consumers) and all(op in QDQ_FUSED_OPS for op in consumers)
    # a QuantizeLinear on a fused kernel's output, or right after a DequantizeLinear (ORT removes such pairs)
    return producers.get(node.input[0]) in QDQ_FUSED_OPS | {"DequantizeLinear"}


def _cost_graph(graph: onnx.GraphProto, tensors: _TensorFacts, cost: GraphCost, repeats: int) -> None:
    producers = {o: n.op_type for n in graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n.op_type)
    for node in graph.node:
        if node.op_type == "Constant" or (node.op_type in ("QuantizeLinear", "DequantizeLinear")
                                          and _fused_qdq(node, producers, readers, tensors.weights)):
            continue  # folded, or fused into the int8 kernel beside it
        if node.op_type in FUSED_ACTIVATIONS and producers.get(node.input[0]) in ("Conv", "ConvTranspose", "Gemm") \
                and len(readers.get(node.input[0], [])) == 1:
            continue  # ORT's FusedConv / FusedGemm apply it as the kernel writes its output
        if node.op_type in ("If", "Loop", "Scan"):
            _cost_control_flow(node, tensors, cost, repeats)
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.input and all(i in tensors.weights for i in node.input if i):
            tensors.weights.update(o for o in node.output if o)  # ORT folds it at load (a packed weight's lookup): a weight, not work
            continue
        out = tensors.shapes.get(node.output[0]) if node.output else None
        if out is None and node.op_type == "MatMulIntegerToFloat":
            out = _contrib_matmul_shape(node, tensors)  # ONNX's shape inference does not know the contrib op
        if out is None:
            cost.shapeless.append(node.name or node.op_type)
            if node.op_type in MAC_OPS:
                cost.shapeless_weights += _weight_elements(node, tensors)
            continue
        macs = node_macs(node, tensors.shapes, out) or 0
        # a weight read through DequantizeLinear is its int8 initializer: count that, not the float view
        weights = sum(tensors.nbytes(i) for i in node.input if i in tensors.weights or i in tensors.weight_views)
        moved = sum(tensors.nbytes(i) for i in node.input if i) + sum(tensors.nbytes(o) for o in node.output if o) - weights
        if node.op_type in ("Gather", "GatherElements", "GatherND") and weights:
            weights = min(weights, _count(out) * tensors.width(node.input[0]))  # a lookup reads the rows it takes, not the table
        cost.nodes.append(NodeCost(node.name or node.op_type, node.op_type, op_class(node, tensors.shapes), _precision(node, tensors),
                                   macs, 0 if macs else _count(out), moved, weights, repeats))


def _cost_control_flow(node: onnx.NodeProto, tensors: _TensorFacts, cost: GraphCost, repeats: int) -> None:
    bodies = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    if node.op_type == "If":
        branches = []
        for body in bodies.values():
            part = GraphCost()
            _cost_graph(body, tensors, part, repeats)
            branches.append(part)
        costly = max(branches, key=lambda p: (p.total("macs"), p.total("bytes_moved")))
        cost.nodes += costly.nodes
        for part in branches:  # what a branch could not count holds for the whole
            cost.shapeless += part.shapeless
            cost.shapeless_weights += part.shapeless_weights
            cost.notes += part.notes
            cost.refused = cost.refused or part.refused
        cost.notes.append(f"If '{node.name}': the costlier branch is counted")
        return
    trips = _trip_count(node, tensors)
    body = bodies.get("body")
    if body is None:
        return
    part = GraphCost()
    _cost_graph(body, tensors, part, repeats * (trips or 1))
    if trips is None:
        if part.total("macs"):
            cost.refused = f"{node.op_type} '{node.name}' runs MAC-bound nodes a number of times known only at run time"
        cost.notes.append(f"{node.op_type} '{node.name}': trip count unknown, body counted once")
    cost.nodes += part.nodes
    cost.shapeless += part.shapeless
    cost.shapeless_weights += part.shapeless_weights
    cost.notes += part.notes
    cost.refused = cost.refused or part.refused


# A Loop exported from a while loop carries M = INT64_MAX and stops on its condition: beyond this
# many trips the count is the condition's, known only at run time.
MAX_STATIC_TRIPS = 1_000_000


def _trip_count(node: onnx.NodeProto, tensors: _TensorFacts) -> int | None:
    if node.op_type == "Loop":
        value = tensors.constants.get(node.input[0]) if node.input and node.input[0] else None
        trips = int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
        return trips if trips is not None and 0 <= trips <= MAX_STATIC_TRIPS else None
    # Scan: the first scan input's length along its scan axis (axis 0 unless scan_input_axes says otherwise)
    num_scan = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
    axes = next((list(a.ints) for a in node.attribute if a.name == "scan_input_axes"), [0] * num_scan)
    if num_scan == 0:
        return None
    first = node.input[len(node.input) - num_scan]
    shape = tensors.shapes.get(first)
    return int(shape[axes[0] if axes else 0]) if shape else None


def _refuse_if_shapeless_compute(graph: onnx.GraphProto, tensors: _TensorFacts, cost: GraphCost) -> None:
    """Refuse when nodes without shapes hold more than 5% of the compute nodes' weights: their
    MACs are unknown, and weights are the one size that does not need shapes."""
    if cost.refused or not cost.shapeless:
        return
    total = sum(_weight_elements(node, tensors) for node in all_nodes(graph) if node.op_type in MAC_OPS)
    if total and cost.shapeless_weights / total > REFUSE_SHAPELESS_SHARE:
        cost.refused = (f"shapes are unknown for compute nodes holding {cost.shapeless_weights / total:.0%} of the weights "
                        f"({len(cost.shapeless)} nodes without shapes), so their MACs cannot be counted")


def _weight_elements(node: onnx.NodeProto, tensors: _TensorFacts) -> int:
    """The size of a compute node's weight (QLinear ops keep it at input 3, after the scales)."""
    index = 3 if node.op_type in ("QLinearConv", "QLinearMatMul") else 1
    name = node.input[index] if len(node.input) > index else ""
    return _count(tensors.shapes[name]) if name in tensors.shapes else 0


def op_class(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> str:
    op = node.op_type
    if op in ("Conv", "QLinearConv", "ConvInteger", "ConvTranspose"):
        # depthwise: one input channel per group (a Conv weight's second dim is C_in / group)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[3] if op == "QLinearConv" else node.input[1])
        per_group = weight[0] // group if op == "ConvTranspose" and weight else (weight[1] if weight and len(weight) > 1 else None)
        return "depthwise" if group > 1 and per_group == 1 else "conv"
    if op in ("LSTM", "GRU", "RNN"):
        return "recurrent"  # one small matrix-vector product per step: far from a GEMM's rate
    if op in MAC_OPS or op in INT8_COMPUTE_OPS:
        return "matmul"
    return "data_movement" if op in DATA_MOVEMENT_OPS else "elementwise"


def _precision(node: onnx.NodeProto, tensors: _TensorFacts) -> str:
    if node.op_type in INT8_COMPUTE_OPS:
        return "int8"
    data = [i for i in node.input[:2] if i and i not in tensors.constants]
    return "int8" if data and all(i in tensors.int8_sources for i in data) else "fp32"


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
    if op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat"):
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


def _contrib_matmul_shape(node: onnx.NodeProto, tensors: _TensorFacts) -> tuple[int, ...] | None:
    """MatMulIntegerToFloat's output shape from its operands' ([.., K] x [K, N] -> [.., N]),
    as an int8 recurrence's step writes it inside a Scan body, where no run can expose it."""
    a, b = tensors.shapes.get(node.input[0]), tensors.shapes.get(node.input[1])
    if a is None or b is None or len(b) != 2:
        return None
    tensors.shapes[node.output[0]] = (*a[:-1], b[-1])
    tensors.itemsize[node.output[0]] = 4
    return tensors.shapes[node.output[0]]


def all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of the subgraphs its nodes hold (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attribute.g)


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 4


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1
