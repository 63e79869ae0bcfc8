"""A QDQ model beside its float source: which nodes are quantized, and variants with some read float.

A *group* is one quantized node: reverting it makes it read its float inputs (the activation
before its QuantizeLinear, the float weight) while the shared Q/DQ pairs stay for other consumers.
ORT's own rules for what runs in int8 shape it (see QdqModel.__init__): a reverted node reads an
int8 Conv's int8 output, but a reverted Conv or Gemm reads float and can take that Conv to float.
That is what ``quantize_static(nodes_to_exclude=...)`` produces, built here in memory in
milliseconds so a search can try many mixes; the final artifact still comes from ORT.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from edgeport.passes.recurrent_int8 import is_int8_recurrence

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
OUTPUT_QUANTIZED_KERNELS = ("Conv", "ConvTranspose")  # their int8 kernels on ORT's CPU need the Q after them
WEIGHT_REQUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm")  # ORT can quantize their float weights where a DQ feeds them
# activations ORT fuses into a float Conv/Gemm before its int8 fusions see them (MLAS activations)
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid")


@dataclass(frozen=True)
class QuantGroup:
    node: str  # node name, the same in the float source and in the QDQ model
    op_type: str
    macs: int = 0  # per sample, from the shapes seen on evaluation data


class QdqModel:
    """A QDQ model and its float source, indexed for reverting groups to float."""

    def __init__(self, qdq: onnx.ModelProto, source: onnx.ModelProto, always_float: frozenset[str] = frozenset()):
        self.qdq, self.source = qdq, source
        # helper nodes a rewrite added (a smoothing scale): float in every variant, never a group
        self.always_float = always_float
        self._source_nodes = {n.name: n for n in source.graph.node if n.name}
        self._source_init = {t.name: t for t in source.graph.initializer}
        self._produced = {o for n in qdq.graph.node for o in n.output}
        # ORT drops a Relu/Clip after a quantized Conv and gives the Conv the Relu's output name:
        # that tensor is then pre-activation in the QDQ model and must not be read as the float one.
        source_outputs = {n.name: set(n.output) for n in source.graph.node if n.name}
        renamed = {o for n in qdq.graph.node if n.name in source_outputs for o in n.output if o not in source_outputs[n.name]}
        self._available = (self._produced - renamed) | {i.name for i in qdq.graph.input} | {t.name for t in qdq.graph.initializer}
        # ...but the float tensor can be rebuilt by re-applying the dropped activation to it.
        source_producer = {o: n for n in source.graph.node for o in n.output}
        qdq_producer = {o: n for n in qdq.graph.node for o in n.output}
        # ORT quantizes a graph output made by a quantized node: X -> 'y_QuantizeLinear_Input' -> Q -> DQ -> 'y'.
        self._output_qdq: dict[str, str] = {}  # pre-Q tensor -> graph output name
        self._output_qdq_mid: dict[str, str] = {}  # pre-Q tensor -> the Q's output
        self._output_producer: dict[str, str] = {}
        graph_outputs = {o.name for o in qdq.graph.output}
        for dq in qdq.graph.node:
            q = qdq_producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" and dq.output[0] in graph_outputs else None
            readers = [n for n in qdq.graph.node if q is not None and q.input[0] in n.input]
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in qdq_producer and readers == [q]:
                self._output_qdq[q.input[0]] = dq.output[0]
                self._output_qdq_mid[q.input[0]] = q.output[0]
                self._output_producer[q.input[0]] = qdq_producer[q.input[0]].name
        # What ORT runs in int8 depends on the neighbours (measured on onnxruntime 1.32's CPU
        # provider): a Conv whose output goes to a QuantizeLinear becomes one int8 kernel only
        # while that Q is all that reads the output, and so does a Conv followed by an
        # activation ORT fuses (Relu, Clip...); a Gemm followed by one loses its int8 kernel only
        # where its one reader reads the activation in float (two float readers left it int8, as
        # did a Q still read). A reverted node that reads such an output in float
        # takes the int8 node to float. So a reverted node reads the int8 output instead (as ORT's
        # nodes_to_exclude has it), except a Conv, ConvTranspose, Gemm, or a MatMul of two
        # activations: ORT can quantize a Conv/Gemm's float weights per tensor itself
        # (WeightBiasQuantization) where a DequantizeLinear feeds it, and fuses a MatMul of two
        # dequantized activations into an int8 kernel. Those read float, and ``float_at_runtime``
        # counts the int8 node they take to float with them. (A MatMul keeps an int8 kernel with a
        # float output, MatMulIntegerToFloat, unless its output feeds a Q that int8 readers still
        # read and a float reader too: that case is left to the check on the written file.)
        readers_of: dict[str, set[str]] = {}
        for node in qdq.graph.node:
            for name in reads(node):
                readers_of.setdefault(name, set()).add(node.name)
        for name in graph_outputs:
            readers_of.setdefault(name, set()).add("")  # a graph output is read by the caller

        def bound_kernel(tensor: str) -> tuple[onnx.NodeProto | None, bool]:
            """The node whose int8 kernel needs the Q on ``tensor``, and whether any float reader of
            that Q's output takes it to float (else only a Q left without int8 readers does)."""
            producer = qdq_producer.get(tensor)
            if producer is not None and producer.op_type in FUSED_ACTIVATIONS and producer.input \
                    and len(readers_of.get(producer.input[0], ())) == 1:
                inner = qdq_producer.get(producer.input[0])
                if inner is not None and inner.op_type in WEIGHT_REQUANTIZED_OPS:
                    return inner, inner.op_type != "Gemm"
                return None, False
            return (producer, True) if producer is not None and producer.op_type in OUTPUT_QUANTIZED_KERNELS else (None, False)

        self._output_bound: dict[str, str] = {}  # DQ output -> the node whose int8 kernel needs its Q
        self._strictly_bound: set[str] = set()  # DQ outputs whose kernel any float reader takes to float
        self._q_of: dict[str, str] = {}  # DQ output -> its Q's output
        q_readers: dict[str, set[str]] = {}  # Q output -> every node reading one of its DQs
        for dq in qdq.graph.node:
            q = qdq_producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                continue
            kernel, strict = bound_kernel(q.input[0])
            if kernel is not None and kernel.name:
                self._output_bound[dq.output[0]] = kernel.name
                self._q_of[dq.output[0]] = q.output[0]
                q_readers.setdefault(q.output[0], set()).update(readers_of.get(dq.output[0], ()))
                if strict:
                    self._strictly_bound.add(dq.output[0])
        self._q_readers = q_readers
        # (ORT's Conv fusion also refuses a Conv whose Q feeds a per-channel DequantizeLinear, so
        # no equal-scales-per-channel view of that int8 output can keep both: measured.)
        # A graph output made by a quantized node: its DQ carries the output's name, its float value
        # the pre-Q name, unless ORT's quantizer dropped an activation (Relu) between the two: then
        # the pre-Q tensor is not the output's value, and the output keeps its Q/DQ pair.
        self._float_of_output = {graph_name: pre_q for pre_q, graph_name in self._output_qdq.items()
                                 if source_producer.get(graph_name) is not None
                                 and source_producer[graph_name].name == self._output_producer[pre_q]}
        # ...and where it dropped one, the activation to apply again to the pre-Q tensor
        self._output_activation = {graph_name: (pre_q, source_producer[graph_name]) for pre_q, graph_name in self._output_qdq.items()
                                   if graph_name not in self._float_of_output and source_producer.get(graph_name) is not None
                                   and source_producer[graph_name].input
                                   and source_producer[graph_name].input[0] in source_outputs.get(self._output_producer[pre_q], ())}
        self._graph_output_readers = {graph_name: readers_of.get(graph_name, set()) - {""} for graph_name in self._float_of_output}
        graph_dqs = set(self._output_qdq.values())  # DQs carrying graph outputs' names
        self._reads_float: dict[str, list[str]] = {}  # reverted, these read float: their bound DQ'd inputs
        for node in qdq.graph.node:
            source_node = self._source_nodes.get(node.name)
            if source_node is None or not _reads_float_when_reverted(source_node, self._source_init):
                continue
            self._reads_float[node.name] = [i for i in node.input if i in self._output_bound
                                            and (i not in graph_dqs or i in self._float_of_output or i in self._output_activation)]
        self._restorable: dict[str, onnx.NodeProto] = {}
        for name in renamed:
            activation, producer = source_producer.get(name), qdq_producer.get(name)
            if activation is not None and producer is not None and activation.input and activation.input[0] in source_outputs.get(producer.name, ()):
                self._restorable[name] = activation
        dq_outputs = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
        self.quantized: list[str] = [
            n.name for n in qdq.graph.node
            if n.op_type not in QDQ_OPS and n.name in self._source_nodes and n.name not in always_float
            and (any(i in dq_outputs for i in n.input) or is_int8_recurrence(n))
        ]

    def float_at_runtime(self, reverted: set[str] | frozenset[str]) -> set[str]:
        """The nodes ORT runs in float in ``with_float(reverted)``: the reverted ones, and the int8
        nodes whose output a reverted Conv, Gemm or activation MatMul reads as float (see __init__)."""
        in_float = set(reverted)
        float_readers = {node for node in reverted if node in self._reads_float}
        for node in float_readers:
            for dq_output in self._reads_float[node]:
                kernel = self._output_bound[dq_output]
                if kernel in reverted:
                    continue
                readers = self._q_readers.get(self._q_of[dq_output], set())
                if dq_output in self._strictly_bound or (len(readers) == 1 and readers <= float_readers):
                    in_float.add(kernel)
        return in_float

    def session(self, reverted: set[str] | frozenset[str]):
        """An ORT session (CPU, all optimizations) on ``with_float(reverted)``: what a search trial scores."""
        from edgeport.passes.int8_eval import session_for

        return session_for(self.with_float(reverted))

    def with_float(self, reverted: set[str] | frozenset[str]) -> onnx.ModelProto:
        """A copy of the QDQ model in which the ``reverted`` nodes read their float inputs."""
        graph = self.qdq.graph
        reverted = set(reverted) | self.always_float
        nodes, needed_init, restored = [], {}, {}
        outputs = {o.name for o in graph.output}
        # a reverted node's graph output loses its Q/DQ pair only where nothing int8 reads it in the graph
        unquantized_outputs = {q: g for q, g in self._output_qdq.items() if self._output_producer.get(q) in reverted
                               and g in self._float_of_output and self._graph_output_readers[g] <= reverted}
        skipped = {*unquantized_outputs.values(), *(self._output_qdq_mid[q] for q in unquantized_outputs)}
        for node in graph.node:
            if node.op_type in QDQ_OPS and node.output[0] in skipped:
                continue  # the Q/DQ pair on a graph output belongs to the node that makes it
            if node.name in reverted and node.name in self._source_nodes:
                quantized_inputs = list(node.input)
                node, floats = _rewired(node, self._source_nodes[node.name], self._available, self._produced, self._source_init)
                if node.name not in self._reads_float:
                    for index, name in enumerate(quantized_inputs[:len(node.input)]):
                        kernel = self._output_bound.get(name)
                        if kernel is not None and kernel not in reverted:
                            node.input[index] = name  # the int8 node that makes it stays int8
                else:  # never a DequantizeLinear, not even the one that carries a graph output's name
                    for index, name in enumerate(node.input):
                        if name in self._float_of_output and self._output_producer.get(self._float_of_output[name]) not in reverted:
                            node.input[index] = self._float_of_output[name]
                        elif name in self._output_activation:  # its Q/DQ pair always stays: the pre-Q tensor is there
                            pre_q, activation = self._output_activation[name]
                            restored.setdefault(pre_q, _reapplied(activation, pre_q))
                            node.input[index] = restored[pre_q].output[0]
                needed_init.update(floats)
                for index, name in enumerate(node.output):
                    if name in unquantized_outputs:
                        node.output[index] = unquantized_outputs[name]
                for index, name in enumerate(node.input):
                    if name in self._restorable:
                        restored.setdefault(name, _reapplied(self._restorable[name], name))
                        node.input[index] = restored[name].output[0]
                        needed_init.update({i: i for i in restored[name].input[1:] if i in self._source_init and i not in self._available})
            nodes.append(node)
        if restored:  # each re-applied activation goes right after the node that makes its input
            by_input = {n.input[0]: n for n in restored.values()}
            nodes = [m for n in nodes for m in (n, *(by_input[o] for o in n.output if o in by_input))]
        nodes = live_nodes(nodes, outputs)
        used = {i for n in nodes for i in reads(n)} | outputs  # subgraphs read outer initializers too
        initializers = [t for t in graph.initializer if t.name in used]
        initializers += [_renamed(self._source_init[source], name) for name, source in needed_init.items()]
        new_graph = helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output), initializers, value_info=[])
        model = helper.make_model(new_graph, opset_imports=list(self.qdq.opset_import), ir_version=self.qdq.ir_version)
        model.producer_name, model.producer_version = self.qdq.producer_name, self.qdq.producer_version
        model.metadata_props.extend(self.qdq.metadata_props)
        return model


def _reads_float_when_reverted(source: onnx.NodeProto, source_init: dict) -> bool:
    """Whether a reverted ``source`` node must read float activations to compute in float: a Conv or
    Gemm (ORT can quantize its float weights when a DequantizeLinear feeds it), or a MatMul of two
    activations (ORT fuses two dequantized operands into an int8 kernel)."""
    if source.op_type in WEIGHT_REQUANTIZED_OPS:
        return True
    return source.op_type == "MatMul" and not any(i in source_init for i in source.input)


def _rewired(node: onnx.NodeProto, source: onnx.NodeProto, available: set[str], produced: set[str], source_init: dict
             ) -> tuple[onnx.NodeProto, dict[str, str]]:
    """The node with each input replaced by the float tensor its source node reads: the source's
    initializer (renamed where ORT's DQ output took its name, as for biases) or the activation
    before its QuantizeLinear. Returns the node and {new initializer name: source initializer}."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if is_int8_recurrence(node):  # its int8 step lives in its body: the float source's body is the revert
        del copy.attribute[:]
        copy.attribute.extend(source.attribute)
    floats: dict[str, str] = {}
    for index, name in enumerate(source.input):
        if index >= len(copy.input) or not name:
            continue
        if name in source_init and (name in produced or name not in available):
            new_name = f"{name}__float" if name in produced else name
            copy.input[index] = new_name
            floats[new_name] = name
        elif name in available or name in produced:
            copy.input[index] = name
    return copy, floats


def _reapplied(activation: onnx.NodeProto, pre_activation: str) -> onnx.NodeProto:
    """The float model's activation (Relu, Clip...) applied to the tensor ORT left before it."""
    copy = onnx.NodeProto()
    copy.CopyFrom(activation)
    copy.name = f"{activation.name}__float"
    copy.input[0] = pre_activation
    del copy.output[:]
    copy.output.append(f"{pre_activation}__float")
    return copy


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes whose outputs nothing reads (Q/DQ pairs only reverted nodes used). An If or Loop
    reads, besides its inputs, every outer tensor its subgraphs name."""
    live = list(nodes)
    while True:
        read = {i for n in live for i in reads(n)} | outputs
        kept = [n for n in live if any(o in read for o in n.output)]
        if len(kept) == len(live):
            return kept
        live = kept


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    if tensor.name == name:
        return tensor
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def gather_before_dequantize(model: onnx.ModelProto) -> int:
    """Rewrite DequantizeLinear(int8 table) -> Gather into Gather(int8 table) -> DequantizeLinear, in
    place: exact for a per-tensor scale (dequantizing is elementwise), and it spares ORT from
    dequantizing a whole embedding table on every run when no QuantizeLinear follows the Gather
    for it to fuse with (6 ms of 15 on a MiniLM encoder). Returns how many Gathers it moved."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    quantized_later = set()  # DQ -> Gather -> Q is fused by ORT itself: leave it
    for node in graph.node:
        for name in reads(node):
            readers[name] = readers.get(name, 0) + 1
        if node.op_type == "QuantizeLinear":
            quantized_later.add(node.input[0])
    moved = 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "Gather" else None
        if dq is None or dq.op_type != "DequantizeLinear" or readers.get(dq.output[0]) != 1 or dq.input[0] not in inits \
                or node.output[0] in quantized_later \
                or not all(name in inits and not inits[name].dims for name in dq.input[1:3]):
            nodes.append(node)
            continue
        gathered = f"{node.output[0]}__int8"
        gather = helper.make_node("Gather", [dq.input[0], node.input[1]], [gathered], name=node.name, **_attributes(node))
        after = helper.make_node("DequantizeLinear", [gathered, *dq.input[1:]], list(node.output), name=f"{node.name}__dequantize")
        nodes.extend([gather, after])
        moved += 1
    if moved:
        read = {i for m in nodes for i in reads(m)} | {o.name for o in graph.output}
        kept = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] not in read)]
        del graph.node[:]
        graph.node.extend(kept)
    return moved


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node reads: its inputs, and those its subgraphs (If branches, Loop and
    Scan bodies) take from the enclosing scope."""
    names = set(node.input)
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
            for inner in graph.node:
                names |= reads(inner)
    return names


def sort_topologically(model: onnx.ModelProto) -> bool:
    """Order the main graph so each node comes after whatever it reads, subgraph reads included.
    ORT's quantizer sorts by explicit inputs only, and can move an If above the node that makes a
    tensor its branches read. Linear in the graph size; returns whether the order changed."""
    graph = model.graph
    produced_by = {o: index for index, n in enumerate(graph.node) for o in n.output if o}
    needs = [{produced_by[name] for name in reads(n) if name in produced_by} for n in graph.node]
    if all(max(deps, default=-1) < index for index, deps in enumerate(needs)):
        return False  # already in order: the common case, checked in one pass
    waiting = [len(deps) for deps in needs]
    readers: dict[int, list[int]] = {}
    for index, deps in enumerate(needs):
        for dep in deps:
            readers.setdefault(dep, []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        index = ready.pop(0)
        order.append(index)
        for reader in readers.get(index, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(graph.node):
        return False  # a cycle: leave the order as it was written
    copies = []
    for index in order:
        copy = onnx.NodeProto()
        copy.CopyFrom(graph.node[index])
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)
    return True
