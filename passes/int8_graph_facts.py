"""Facts about a graph that decide or explain its int8 search: where compute hides in subgraphs,
why nothing was quantized, which nodes read tensors int8 cannot hold, node names, and what the
written int8 file runs in float on ORT's CPU provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeport.passes.recurrent_scan import is_recurrence


COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Attention")
INT8_KERNEL_CANDIDATES = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # MAC ops a QDQ file can run on int8 kernels


def kernel_mismatches(path: Path, counted_int8: set[str], counted_float: set[str], op_of: dict[str, str],
                      names_kept: bool) -> tuple[set[str], set[str]]:
    """Where ONNX Runtime's CPU provider disagrees with the search's count: MAC nodes counted int8
    that it runs in float (no int8 kernel takes the pattern it sees), and nodes counted float that
    it runs on an int8 kernel after all. The first needs the file's node names kept (QDQ; ORT's
    QOperator quantizer renames the nodes it quantizes)."""
    from edgeport.runtimes.int8_kernels import int8_kernel_nodes

    on_int8 = int8_kernel_nodes(path)
    candidates = {n for n in counted_int8 if op_of.get(n) in INT8_KERNEL_CANDIDATES} if names_kept else set()
    return candidates - on_int8, counted_float & on_int8


def float_as_run(space: Any, path: Path, reverted: set[str], groups: list[str], quant_format: str, on_npu: bool, max_fallback: float,
                 notes: list[str]) -> tuple[set[str], float, set[str], set[str]]:
    """The nodes in float and the float-MAC share of the written file as ORT's CPU provider runs it:
    the search's count (``space``, a SearchSpace), checked on the file both ways. Returns the
    nodes counted float, the share, the quantized nodes ORT runs in float (counted so from the start,
    or found by the check), and those it runs int8 that were counted float; says in ``notes`` where
    the check moved the count."""
    if on_npu:  # the NPU's fallback is 16-bit activations, not float: nothing to count or check here
        return set(), space.share_of(set()), set(), set()
    # ORT's QOperator quantizer keeps a reverted node's int8 producer int8 (it reads the producer's
    # int8 output): only the QDQ mix the search built can take a producer to float with it
    in_float = space.qdq.float_at_runtime(reverted) if quant_format == "qdq" else set(reverted)
    anyway = set(space.float_anyway) - in_float  # counted float from the start
    unexpected, requantized = kernel_mismatches(path, {g for g in groups if space.macs.get(g) and g not in in_float | anyway},
                                                in_float | anyway, space.op_of, names_kept=quant_format == "qdq")
    anyway -= requantized
    if anyway:
        notes.append(f"ONNX Runtime's CPU kernels run {len(anyway)} quantized {'/'.join(sorted({space.op_of.get(n, '?') for n in anyway}))} "
                     f"node(s) in float even all-int8 ({sum(space.macs.get(n, 0) for n in anyway) / space.total:.1%} of MACs; no int8 "
                     "kernel takes them here): the search counted them float from the start")
    share = space.share_of(in_float) + (sum(space.macs.get(n, 0) for n in unexpected)
                                        - sum(space.macs.get(n, 0) for n in requantized)) / space.total
    if unexpected:
        notes.append(f"ONNX Runtime runs {len(unexpected)} quantized node(s) in float on its CPU kernels (no int8 kernel takes "
                     f"their pattern): {', '.join(sorted(unexpected)[:5])}{' ...' if len(unexpected) > 5 else ''}; "
                     "the float-MAC share counts them")
    if requantized:
        notes.append(f"ONNX Runtime runs {len(requantized)} node(s) the search counted float on int8 kernels after all: "
                     f"{', '.join(sorted(requantized)[:5])}{' ...' if len(requantized) > 5 else ''}; "
                     "the float-MAC share leaves them out and the verdict is measured on the file as it runs")
    if share > max_fallback + 1e-9 and (unexpected or requantized or anyway):
        notes.append(f"as ONNX Runtime runs the file, {share:.1%} of MACs are float: over the {max_fallback:.0%} "
                     "fallback budget the search kept to")
    return in_float, share, unexpected | anyway, requantized


def compute_in_subgraphs(source: onnx.ModelProto) -> dict[str, int]:
    """Compute nodes (MAC-bearing op types) inside If/Loop/Scan bodies, at any depth, by op type."""
    found: dict[str, int] = {}

    def visit(graph: onnx.GraphProto, nested: bool) -> None:
        for node in graph.node:
            if nested and node.op_type in COMPUTE_OPS:
                found[node.op_type] = found.get(node.op_type, 0) + 1
            if is_recurrence(node):
                continue  # its step is quantized by recurrent_scan, and counted
            for attribute in node.attribute:
                for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else
                             attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else []):
                    visit(body, True)

    visit(source.graph, False)
    return dict(sorted(found.items()))


def nothing_quantized(source: onnx.ModelProto) -> str:
    """Why the int8 file holds no int8 node, so the report never calls a float file int8 silently."""
    branches = sorted({n.op_type for n in source.graph.node if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)})
    if branches:
        return (f"no node was quantized: the compute sits inside {'/'.join(branches)} subgraphs, which ONNX Runtime's QDQ quantizer "
                "does not enter, so the int8 file computes in float (export the model with its branch resolved, e.g. traced for one path)")
    return "no node was quantized: the graph has no op type ONNX Runtime quantizes; the int8 file computes in float"


def nodes_reading_unbounded_tensors(source: onnx.ModelProto, ranges: Path) -> set[str]:
    """Nodes that read a tensor whose calibrated range is infinite: every consumer of such a tensor
    must stay float together, and no single revert can fix it, so they never enter the search."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(ranges)
    bad = {name for name in data if not all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in data[name].range_value)}
    return {n.name for n in source.graph.node if bad & set(n.input)}


def name_nodes(model: onnx.ModelProto) -> None:
    """Every node needs a name: groups are reverted by name (ORT's nodes_to_exclude)."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
