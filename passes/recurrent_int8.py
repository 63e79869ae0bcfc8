"""The int8 step of the Scans ``recurrent_scan`` makes from GRU/LSTM cells, and the way back to
the original cell for those the search reverts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeport.passes.pair_bounded_weights import pair_bounded_scales
from edgeport.passes.recurrent_scan import body_of, cell_of, is_recurrence


def restore_cells(model: onnx.ModelProto, original: onnx.ModelProto, reverted: set[str]) -> tuple[onnx.ModelProto, set[str]]:
    """``model`` with every cell that has a Scan in ``reverted`` put back as its original GRU/LSTM
    node (float either way, and ORT's fused cell is the faster float), and the names of the nodes
    its rewrite made (its input projections, float now too). A no-op when nothing is reverted."""
    from edgeport.passes.qdq_graph import live_nodes

    cells = {cell_of(n) for n in model.graph.node if is_recurrence(n) and n.name in reverted}
    if not cells:
        return model, set()
    originals = {n.name: n for n in original.graph.node if n.name in cells}
    made = {n.name for n in model.graph.node if any(n.name.startswith(f"{cell}/") for cell in cells)}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        cell = next((c for c in cells if node.name.startswith(f"{c}/")), None)
        if cell is None:
            nodes.append(node)
        elif cell in originals:  # the original cell takes the place of its first made node
            nodes.append(originals.pop(cell))
    restored = onnx.ModelProto()
    restored.CopyFrom(model)
    outputs = {o.name for o in model.graph.output}
    nodes = live_nodes(nodes, outputs)
    read = {i for n in nodes for i in n.input}
    have = {t.name for t in model.graph.initializer}
    initializers = [t for t in model.graph.initializer if t.name in read]
    produced = {o for n in nodes for o in n.output}  # ORT's DQ outputs can carry an original initializer's name
    initializers += [t for t in original.graph.initializer if t.name in read and t.name not in have | produced]
    del restored.graph.node[:], restored.graph.initializer[:]
    restored.graph.node.extend(nodes)
    restored.graph.initializer.extend(initializers)
    return restored, made


def is_int8_recurrence(node: onnx.NodeProto) -> bool:
    return is_recurrence(node) and any(n.op_type == "MatMulIntegerToFloat" for n in body_of(node).node)


def quantize_recurrences(model: onnx.ModelProto, *, activation_type: str, reduce_range: bool,
                         exclude: set[str] | frozenset[str] = frozenset()) -> int:
    """Put each recurrence Scan's step MatMuls in int8, in place; returns how many Scans changed.

    The MatMul reads the previous hidden state (or, in a GRU without linear_before_reset, the
    state times the reset gate), which stays inside (-1, 1): one QuantizeLinear with a fixed scale
    covers it. The step runs ORT's MatMulIntegerToFloat kernel directly (bias folded in): ORT does
    not fuse Q/DQ pairs inside a Scan body, where a DQ->MatMul form dequantized the weight on every
    step and ran 20-30x slower than the float Scan (measured, bench/README.md). Weights are
    symmetric per output column, pair-bounded under reduce_range as outside; always int8
    (MatMulIntegerToFloat has no int8 x uint8 kernel)."""
    changed = 0
    for node in model.graph.node:
        if not is_recurrence(node) or node.name in exclude or is_int8_recurrence(node):
            continue
        _quantize_body(body_of(node), activation_type, reduce_range)
        changed += 1
    if changed and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return changed


def _quantize_body(body: onnx.GraphProto, activation_type: str, reduce_range: bool) -> None:
    inits = {t.name: t for t in body.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in body.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    # [-1, 1] on the integer grid: uint8 with zero point 128 (x86's fast u8 x s8 path), else int8 around 0
    act_scale, act_zero = (np.float32(2 / 255), np.uint8(128)) if activation_type == "uint8" else (np.float32(1 / 127), np.int8(0))
    nodes: list[onnx.NodeProto] = []
    folded: set[str] = set()
    for node in body.node:
        if node.name in folded:
            continue
        if node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        state, weight_name = node.input[0], node.input[1]
        weight = numpy_helper.to_array(inits[weight_name]).astype(np.float32)  # [K, N]: one scale per output column
        # under reduce_range the same pair bound as outside: MatMulIntegerToFloat is MLAS's u8*s8 GEMM
        scale = (pair_bounded_scales(weight) if reduce_range else np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127).astype(np.float32)
        q = np.clip(np.round(weight / scale), -127, 127)
        q_weight, w_zero = q.astype(np.int8), np.zeros(scale.shape, np.int8)
        body.initializer.remove(inits[weight_name])
        prefix = node.name
        body.initializer.extend([
            numpy_helper.from_array(q_weight, f"{prefix}/weight_quantized"), numpy_helper.from_array(scale, f"{prefix}/weight_scale"),
            numpy_helper.from_array(w_zero, f"{prefix}/weight_zero_point"), numpy_helper.from_array(np.array(act_scale), f"{prefix}/state_scale"),
            numpy_helper.from_array(np.array(act_zero), f"{prefix}/state_zero_point"),
        ])
        # the bias Add that only this MatMul feeds goes into the kernel
        bias_add = readers.get(node.output[0], [])
        bias_add = bias_add[0] if len(bias_add) == 1 and bias_add[0].op_type == "Add" and bias_add[0].input[0] == node.output[0] \
            and bias_add[0].input[1] in inits else None
        output = bias_add.output[0] if bias_add is not None else node.output[0]
        if bias_add is not None:
            folded.add(bias_add.name)
        nodes += [
            helper.make_node("QuantizeLinear", [state, f"{prefix}/state_scale", f"{prefix}/state_zero_point"], [f"{prefix}/state_quantized"],
                             name=f"{prefix}/state_quantize"),
            helper.make_node("MatMulIntegerToFloat", [f"{prefix}/state_quantized", f"{prefix}/weight_quantized", f"{prefix}/state_scale",
                                                      f"{prefix}/weight_scale", f"{prefix}/state_zero_point", f"{prefix}/weight_zero_point",
                                                      *([bias_add.input[1]] if bias_add is not None else [])],
                             [output], name=prefix, domain="com.microsoft"),
        ]
    del body.node[:]
    body.node.extend(nodes)
