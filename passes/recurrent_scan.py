"""Recurrent cells that int8 can reach: each ONNX GRU/LSTM becomes a MatMul over the whole sequence
(the input projection, which ORT's quantizer takes like any MatMul) and a Scan whose body does the
recurrent step with one MatMul; ``quantize_recurrences`` then puts that MatMul in int8.

ONNX Runtime's static QDQ quantizer leaves GRU/LSTM/RNN float and never enters a subgraph, so on a
recurrent net most MACs stay float whatever the method (NNCF too). The rewrite is exact in float
and keeps a dynamic sequence length (Scan runs over whatever length comes). The recurrent MatMul
reads the previous hidden state, which a GRU or LSTM (h = o * tanh(c)) keeps inside (-1, 1) when it
starts from zeros or from a state it made: its int8 range is known without calibration, which
matters because a Scan body's tensors are not visible to ORT's calibrator.

Handled: GRU and LSTM, forward, reverse and bidirectional, layout 0, default activations, no clip,
no sequence_lens, no peepholes, starting from zeros (a given initial state can lie outside (-1, 1),
which the step's fixed scale would clip). Anything else is left as it is and named. A cell whose
Scan the search reverts goes back to the original node: a float Scan is slower than ORT's fused
cell. The int8 step and that revert live in ``recurrent_int8``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeport.artifacts import declared_opset
from edgeport.passes.graph_edit import editable_copy

SCAN_SUFFIX = "/recurrence"
MARK = "edgeport:recurrence:"  # a made Scan body's doc_string, then the cell's name: no user Scan is taken for one
PROJECTION_SUFFIX = "/input_projection"
STEP_MATMUL = "recurrent_matmul"
_GATES = {"GRU": 3, "LSTM": 4}
# Below this many recurrent MACs per step and batch row, ONNX Runtime's fused GRU/LSTM kernel beats
# the int8 Scan, whose per-step cost is mostly node overhead. Measured on an AVX2 host without VNNI,
# 100 steps, 1 thread (bench/README.md): GRU hidden 64 (12k MACs) 0.18 vs 1.05 ms, 192 (111k) 1.37
# vs 1.81, 256 (197k) 2.21 vs 2.25, 320 (307k) 3.68 vs 3.23, 1024 (3.1M) 37.5 vs 18.4.
MIN_STEP_MACS = 200_000


def unsupported_reason(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                       producers: dict[str, onnx.NodeProto] | None = None) -> str | None:
    """Why this GRU/LSTM cannot be rewritten exactly; None when it can."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("layout", 0) != 0:
        return "layout 1 (batch first)"
    if "clip" in attrs:
        return "a cell clip"
    defaults = {"GRU": [b"Sigmoid", b"Tanh"], "LSTM": [b"Sigmoid", b"Tanh", b"Tanh"]}[node.op_type]
    activations = attrs.get("activations")
    if activations and list(activations) != defaults * (len(activations) // len(defaults)):
        return "non-default activations"
    if attrs.get("input_forget", 0):
        return "input_forget"
    if len(node.input) > 4 and node.input[4]:
        return "sequence_lens"
    states = node.input[5:7] if node.op_type == "LSTM" else node.input[5:6]
    if any(s and not _zeros(s, inits, producers or {}) for s in states):
        return "a given initial state, which may lie outside the (-1, 1) the int8 step's fixed scale covers"
    if node.op_type == "LSTM" and len(node.input) > 7 and node.input[7]:
        return "peepholes"
    if any(name not in inits for name in node.input[1:4] if name):
        return "weights that are not constants"
    return None


_SHAPE_ONLY = ("Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Identity", "Transpose", "Tile")


def _zeros(tensor: str, inits: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]) -> bool:
    """A constant zero state: an all-zero initializer, or ConstantOfShape of 0 (what PyTorch writes,
    sliced per layer for a stack), through ops that only move values."""
    if tensor in inits:
        return not np.any(numpy_helper.to_array(inits[tensor]))
    node = producers.get(tensor)
    if node is not None and node.op_type in _SHAPE_ONLY:
        return _zeros(node.input[0], inits, producers)
    if node is None or node.op_type != "ConstantOfShape":
        return False
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    return value is None or not np.any(numpy_helper.to_array(value))


def unfold_recurrences(source: onnx.ModelProto, min_step_macs: int = MIN_STEP_MACS, keep: frozenset[str] = frozenset()
                       ) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """A float-exact copy of ``source`` with each eligible GRU/LSTM rewritten. Returns the model,
    the Scan nodes made (each a group the int8 search can revert), and {node: why not} for the rest.
    Cells whose step (per direction) has fewer than ``min_step_macs`` recurrent MACs stay as they
    are (0: none stays), and so do the cells named in ``keep``."""
    model, inits, _ = editable_copy(source)
    graph = model.graph
    opset = declared_opset(model) or 0
    producers = {o: n for n in graph.node for o in n.output}
    scans: list[str] = []
    skipped: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    used_inits: set[str] = set()
    for node in graph.node:
        if node.op_type not in _GATES:
            nodes.append(node)
            continue
        reason = "excluded from quantization" if node.name in keep else \
            "opset below 10 (Slice with inputs)" if opset < 10 else unsupported_reason(node, inits, producers)
        dims = inits[node.input[2]].dims if not reason else [1]
        step_macs = int(np.prod(dims[1:])) if not reason else 0  # one direction's: each runs as its own Scan
        if not reason and step_macs < min_step_macs:
            reason = (f"{step_macs:,} recurrent MACs per step, under {min_step_macs:,}: ONNX Runtime's fused {node.op_type} kernel "
                      "runs faster in float than an int8 step does")
        if reason:
            skipped[node.name] = reason
            nodes.append(node)
            continue
        made, new_inits = _rewrite(node, inits)
        nodes += made
        graph.initializer.extend(new_inits)
        used_inits.update(node.input[1:4])
        scans += [n.name for n in made if n.op_type == "Scan"]
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {i for n in nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name not in used_inits or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model, scans, skipped


def _rewrite(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    gates = _GATES[node.op_type]
    hidden = int(attrs["hidden_size"])
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # [dirs, gates*H, I]
    r = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)  # [dirs, gates*H, H]
    b = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32) if len(node.input) > 3 and node.input[3] else np.zeros((w.shape[0], 2 * gates * hidden), np.float32)
    lbr = bool(attrs.get("linear_before_reset", 0))
    x = node.input[0]
    initial_h = node.input[5] if len(node.input) > 5 and node.input[5] else ""
    initial_c = node.input[6] if node.op_type == "LSTM" and len(node.input) > 6 and node.input[6] else ""
    base = node.name
    made: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        full = name if name.startswith(f"{base}/") else f"{base}/{name}"
        new_inits.append(numpy_helper.from_array(value, full))
        return full

    zeros_state = ""
    if not initial_h or (node.op_type == "LSTM" and not initial_c):
        # [B, H] zeros, B read from X at run time: the sequence and batch stay dynamic
        shape = f"{base}/x_shape"
        made.append(helper.make_node("Shape", [x], [shape], name=f"{base}/shape"))
        batch = f"{base}/batch"
        made.append(helper.make_node("Slice", [shape, const("one", np.array([1], np.int64)), const("two", np.array([2], np.int64))],
                                     [batch], name=f"{base}/batch_dim"))
        state_shape = f"{base}/state_shape"
        made.append(helper.make_node("Concat", [batch, const("hidden", np.array([hidden], np.int64))], [state_shape], axis=0,
                                     name=f"{base}/state_shape"))
        zeros_state = f"{base}/zero_state"
        made.append(helper.make_node("Expand", [const("zero", np.zeros((1, hidden), np.float32)), state_shape], [zeros_state],
                                     name=f"{base}/zero_state"))

    directions = {"forward": [0], "reverse": [1], "bidirectional": [0, 1]}[direction]
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(directions):
        tag = f"{base}{'' if len(directions) == 1 else f'/d{d}'}"
        projected = f"{tag}/projected"
        made.append(helper.make_node("MatMul", [x, const(f"w{d}_t", np.ascontiguousarray(w[d].T))], [f"{projected}_raw"],
                                     name=f"{tag}{PROJECTION_SUFFIX}"))
        wb = b[d, : gates * hidden]
        made.append(helper.make_node("Add", [f"{projected}_raw", const(f"wb{d}", wb)], [projected], name=f"{tag}/input_bias"))
        state_inputs = [_state(initial_h, d, zeros_state, made, const, f"{tag}/h0")]
        if node.op_type == "LSTM":
            state_inputs.append(_state(initial_c, d, zeros_state, made, const, f"{tag}/c0"))
        body = (_gru_body if node.op_type == "GRU" else _lstm_body)(tag, r[d], b[d, gates * hidden:], hidden, lbr)
        body.doc_string = f"{MARK}{base}"  # on the body, not the node: ORT's quantizer keeps attributes, not node doc strings
        outs = [f"{tag}/h_last"] + ([f"{tag}/c_last"] if node.op_type == "LSTM" else []) + [f"{tag}/h_all"]
        made.append(helper.make_node("Scan", [*state_inputs, projected], outs, name=f"{tag}{SCAN_SUFFIX}", body=body,
                                     num_scan_inputs=1, scan_input_directions=[reverse], scan_output_directions=[reverse]))
        ys.append(_reshaped(outs[-1], [0, 1, -1, hidden], made, const, f"{tag}/y"))
        hs.append(_reshaped(outs[0], [1, -1, hidden], made, const, f"{tag}/y_h"))
        if node.op_type == "LSTM":
            cs.append(_reshaped(outs[1], [1, -1, hidden], made, const, f"{tag}/y_c"))
    for index, parts in enumerate((ys, hs, cs)):
        if index < len(node.output) and node.output[index] and parts:
            axis = 1 if index == 0 else 0
            made.append(helper.make_node("Concat", parts, [node.output[index]], axis=axis, name=f"{base}/output{index}")
                        if len(parts) > 1 else helper.make_node("Identity", parts, [node.output[index]], name=f"{base}/output{index}"))
    return made, new_inits


def _state(given: str, d: int, zeros: str, made: list, const, name: str) -> str:
    if not given:
        return zeros
    made.append(helper.make_node("Gather", [given, const(f"{name}_index", np.array(d, np.int64))], [name], axis=0,
                                 name=name))
    return name


def _reshaped(tensor: str, shape: list[int], made: list, const, name: str) -> str:
    made.append(helper.make_node("Reshape", [tensor, const(f"{name}_shape", np.array(shape, np.int64))], [name], name=name))
    return name


def _gate_slices(b: str, tensor: str, count: int, hidden: int, nodes: list, inits: list) -> list[str]:
    """``tensor`` [B, count*H] cut into its gates along axis 1."""
    axes = f"{b}/axes"
    if not any(t.name == axes for t in inits):
        inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
    outs = []
    for k in range(count):
        bounds = [f"{tensor}/start{k}", f"{tensor}/end{k}"]
        inits += [numpy_helper.from_array(np.array([k * hidden], np.int64), bounds[0]),
                  numpy_helper.from_array(np.array([(k + 1) * hidden], np.int64), bounds[1])]
        nodes.append(helper.make_node("Slice", [tensor, *bounds, axes], [f"{tensor}_{k}"], name=f"{tensor}/slice{k}"))
        outs.append(f"{tensor}_{k}")
    return outs


def _recurrent_matmul(b: str, h: str, r_t: np.ndarray, bias: np.ndarray, name: str, nodes: list, inits: list) -> str:
    """h @ R^T + Rb: the one MAC-bound node of a step."""
    inits += [numpy_helper.from_array(np.ascontiguousarray(r_t), f"{b}/{name}_weight"), numpy_helper.from_array(bias, f"{b}/{name}_bias")]
    nodes += [helper.make_node("MatMul", [h, f"{b}/{name}_weight"], [f"{b}/{name}_raw"], name=f"{b}/{name}"),
              helper.make_node("Add", [f"{b}/{name}_raw", f"{b}/{name}_bias"], [f"{b}/{name}_out"], name=f"{b}/{name}_add_bias")]
    return f"{b}/{name}_out"


def _gru_body(tag: str, r: np.ndarray, rb: np.ndarray, hidden: int, lbr: bool) -> onnx.GraphProto:
    """z, r, n gates (ONNX order) from x_t (the input projection with Wb) and h_prev."""
    b = f"{tag}/step"
    h_prev, x_t = f"{b}/h_prev", f"{b}/x_t"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    xz, xr, xn = _gate_slices(b, x_t, 3, hidden, nodes, inits)
    if lbr:  # PyTorch's form: one recurrent MatMul for all gates, the reset gate applied after it
        hz, hr, hn = _gate_slices(b, _recurrent_matmul(b, h_prev, r.T, rb, STEP_MATMUL, nodes, inits), 3, hidden, nodes, inits)
    else:  # the reset gate scales h before the candidate's MatMul: a second MatMul
        hz, hr = _gate_slices(b, _recurrent_matmul(b, h_prev, r[: 2 * hidden].T, rb[: 2 * hidden], STEP_MATMUL, nodes, inits),
                              2, hidden, nodes, inits)
    nodes += [helper.make_node("Add", [xz, hz], [f"{b}/z_pre"], name=f"{b}/z_sum"),
              helper.make_node("Sigmoid", [f"{b}/z_pre"], [f"{b}/z"], name=f"{b}/z_gate"),
              helper.make_node("Add", [xr, hr], [f"{b}/r_pre"], name=f"{b}/r_sum"),
              helper.make_node("Sigmoid", [f"{b}/r_pre"], [f"{b}/r"], name=f"{b}/r_gate")]
    if lbr:
        nodes.append(helper.make_node("Mul", [f"{b}/r", hn], [f"{b}/rhn"], name=f"{b}/reset"))
    else:
        nodes.append(helper.make_node("Mul", [f"{b}/r", h_prev], [f"{b}/rh"], name=f"{b}/reset"))
        rhn = _recurrent_matmul(b, f"{b}/rh", r[2 * hidden:].T, rb[2 * hidden:], f"{STEP_MATMUL}_n", nodes, inits)
        nodes.append(helper.make_node("Identity", [rhn], [f"{b}/rhn"], name=f"{b}/rhn"))
    nodes += [
        helper.make_node("Add", [xn, f"{b}/rhn"], [f"{b}/n_pre"], name=f"{b}/n_sum"),
        helper.make_node("Tanh", [f"{b}/n_pre"], [f"{b}/n"], name=f"{b}/n_gate"),
        # h = n + z * (h_prev - n), which is (1 - z) * n + z * h_prev
        helper.make_node("Sub", [h_prev, f"{b}/n"], [f"{b}/keep"], name=f"{b}/keep"),
        helper.make_node("Mul", [f"{b}/z", f"{b}/keep"], [f"{b}/kept"], name=f"{b}/kept"),
        helper.make_node("Add", [f"{b}/n", f"{b}/kept"], [f"{b}/h"], name=f"{b}/h"),
        helper.make_node("Identity", [f"{b}/h"], [f"{b}/h_out"], name=f"{b}/h_out"),
    ]
    return _body(b, nodes, inits, [h_prev], x_t, [f"{b}/h", f"{b}/h_out"], hidden)


def _lstm_body(tag: str, r: np.ndarray, rb: np.ndarray, hidden: int, lbr: bool) -> onnx.GraphProto:
    """i, o, f, c gates (ONNX order) from x_t (the input projection with Wb), h_prev and c_prev."""
    b = f"{tag}/step"
    h_prev, c_prev, x_t = f"{b}/h_prev", f"{b}/c_prev", f"{b}/x_t"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    hr = _recurrent_matmul(b, h_prev, r.T, rb, STEP_MATMUL, nodes, inits)
    nodes.append(helper.make_node("Add", [x_t, hr], [f"{b}/g"], name=f"{b}/gates"))
    gi, go, gf, gc = _gate_slices(b, f"{b}/g", 4, hidden, nodes, inits)
    nodes += [
        helper.make_node("Sigmoid", [gi], [f"{b}/i"], name=f"{b}/i_gate"),
        helper.make_node("Sigmoid", [go], [f"{b}/o"], name=f"{b}/o_gate"),
        helper.make_node("Sigmoid", [gf], [f"{b}/f"], name=f"{b}/f_gate"),
        helper.make_node("Tanh", [gc], [f"{b}/cc"], name=f"{b}/c_candidate"),
        helper.make_node("Mul", [f"{b}/f", c_prev], [f"{b}/fc"], name=f"{b}/forget"),
        helper.make_node("Mul", [f"{b}/i", f"{b}/cc"], [f"{b}/ic"], name=f"{b}/write"),
        helper.make_node("Add", [f"{b}/fc", f"{b}/ic"], [f"{b}/c"], name=f"{b}/c"),
        helper.make_node("Tanh", [f"{b}/c"], [f"{b}/tc"], name=f"{b}/c_tanh"),
        helper.make_node("Mul", [f"{b}/o", f"{b}/tc"], [f"{b}/h"], name=f"{b}/h"),
        helper.make_node("Identity", [f"{b}/h"], [f"{b}/h_out"], name=f"{b}/h_out"),
    ]
    return _body(b, nodes, inits, [h_prev, c_prev], x_t, [f"{b}/h", f"{b}/c", f"{b}/h_out"], hidden)


def _body(b: str, nodes: list, inits: list, states: list[str], step_input: str, outputs: list[str], hidden: int) -> onnx.GraphProto:
    def float_tensor(name: str, width: int | None) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", width])

    return helper.make_graph(nodes, b, [*(float_tensor(s, hidden) for s in states), float_tensor(step_input, None)],
                             [float_tensor(o, hidden) for o in outputs], initializer=inits)


RECURRENT_CHOICES = ("auto", "always", "never")


def prepared_recurrences(source: onnx.ModelProto, mode: str, quant: Any, provider: str = "CPUExecutionProvider"
                         ) -> tuple[onnx.ModelProto, dict[str, object]]:
    """The int8 search's float source with its GRU/LSTM cells rewritten as ``mode`` says ("auto":
    where the step is large enough to gain from int8; "always"; "never"), and what the report says
    of it. Never for cells the quantization config (``quant``) excludes, nor on a target whose
    execution provider is not ORT's CPU one: the int8 step is a CPU contrib kernel."""
    cells = [n.name for n in source.graph.node if n.op_type in _GATES]
    excluded = {"GRU", "LSTM", "MatMul"} & set(quant.exclude_op_types) or (quant.op_types is not None and "MatMul" not in quant.op_types)
    if cells and provider != "CPUExecutionProvider":
        return source, {"rule": f"never: the target runs {provider}, which takes GRU/LSTM whole; the int8 step is a CPU kernel "
                                "(com.microsoft MatMulIntegerToFloat)"}
    if not cells or mode == "never" or excluded:
        return source, ({"rule": f"never: GRU/LSTM cells stay float ({'excluded by the quantization config' if excluded else 'ONNX Runtime does not quantize them'})"}
                        if cells else {})
    model, scans, skipped = unfold_recurrences(source, MIN_STEP_MACS if mode == "auto" else 0, frozenset(quant.exclude_nodes))
    return model, {"rule": f"{mode}: a GRU/LSTM becomes an int8 input MatMul and a Scan with an int8 step MatMul"
                           + (f" where its step has at least {MIN_STEP_MACS:,} recurrent MACs" if mode == "auto" else ""),
                   "rewritten": scans, "kept_float": skipped}


def is_recurrence(node: onnx.NodeProto) -> bool:
    """A Scan this module made from a GRU/LSTM: its step MatMul can be int8 without calibration."""
    return node.op_type == "Scan" and cell_of(node) is not None


def cell_of(node: onnx.NodeProto) -> str | None:
    """The cell a recurrence Scan was made from; None for any other node."""
    body = next((a.g for a in node.attribute if a.name == "body"), None) if node.op_type == "Scan" else None
    return body.doc_string[len(MARK):] if body is not None and body.doc_string.startswith(MARK) else None


def recurrence_weights(node: onnx.NodeProto) -> list[onnx.TensorProto]:
    """The step MatMuls' float weights of a recurrence Scan (empty for any other node)."""
    if not is_recurrence(node):
        return []
    body = body_of(node)
    inits = {t.name: t for t in body.initializer}
    return [inits[n.input[1]] for n in body.node if n.op_type == "MatMul" and n.input[1] in inits]


def body_of(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")
