"""Rank quantized groups by the fidelity each one costs: a fast proxy for all, real trials for the top.

Proxy (the idea of ORT's qdq_loss_debug, automated): run the fp32 and the current int8 model with
their intermediate tensors exposed and take, per quantized node, the relative error of its output
minus the worst relative error of its inputs: the noise that node adds where it sits. Trials then
measure each group alone in int8, every other group float (AIMET's per-layer sensitivity), on the
ranking subset (the samples where int8 deviates most), in the proxy's order for as many groups as
the budget allows: the noise that reaches the outputs, after every later layer has amplified it.
The proxy cannot see that amplification: on a MobileNetV2-style net it put the last convs first,
and 36 reverts and 4 blocks down its list did not move the outputs, where measured alone the first
conv and the early expansion convs led, and reverting them in that order reached 0.988 min cosine on the
search split where the proxy's order reached 0.978 (bench/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from edgeport.passes.fidelity import FidelityScore
from edgeport.passes.int8_eval import EvalSplit, Scorer, run_exposing, static_shapes
from edgeport.passes.qdq_graph import QdqModel
from edgeport.passes.recurrent_scan import is_recurrence, recurrence_weights
from edgeport.runtimes.graph_cost import node_macs


@dataclass
class GroupRank:
    node: str
    op_type: str
    proxy: float  # relative noise the node adds (output error minus input error)
    alone: FidelityScore | None = None  # the outputs' score with only this group in int8, on the ranking subset

    def harm(self) -> tuple[float, float]:
        """Sort key, worst first: SQNR at the outputs alone in int8 (over all samples, steadier than
        the worst sample's margin; NaN outputs count as the worst), then that margin (for outputs
        without an SQNR)."""
        assert self.alone is not None
        sqnr = self.alone.values.get("sqnr_db")
        return (math.inf if sqnr is None else -math.inf if math.isnan(sqnr) else sqnr, self.alone.margin)

    def to_dict(self) -> dict:
        entry: dict = {"node": self.node, "op_type": self.op_type, "added_noise": float(f"{self.proxy:.4g}")}
        if self.alone is not None:
            sqnr, margin = self.alone.values.get("sqnr_db"), self.alone.margin
            finite = sqnr is None or math.isfinite(sqnr)
            entry["sqnr_db_alone_in_int8"] = float(f"{sqnr:.4g}") if sqnr is not None and finite else None
            entry["margin_alone_in_int8"] = float(f"{margin:.4g}") if math.isfinite(margin) else None
            if not finite:  # JSON holds no inf/NaN: say so rather than leave it looking unmeasured
                entry["outputs_not_finite_alone_in_int8"] = True
        return entry


def node_mac_counts(source: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """MACs per node of the float model for one sample, from the shapes shape inference fixes for
    ``feed``, and a real run for those it cannot."""
    init_shapes = {t.name: tuple(t.dims) for t in source.graph.initializer}
    wanted = [n for n in source.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN") and n.name]
    recurrences = [n for n in source.graph.node if is_recurrence(n)]
    names = list(dict.fromkeys([*(t for n in wanted for t in (*n.input[:3], n.output[0]) if t and t not in init_shapes),
                                *(n.input[-1] for n in recurrences)]))
    shapes = {**init_shapes, **static_shapes(source, feed, names)}
    unknown = [name for name in names if name not in shapes]  # symbolic or data-dependent: a real run tells
    values = run_exposing(source, unknown, [feed]) if unknown else {}
    shapes.update({name: values[name][0].shape for name in unknown if name in values})
    counts = {}
    for node in wanted:
        out = shapes.get(node.output[0])
        macs = node_macs(node, shapes, out) if out is not None else None
        counts[node.name] = int(macs or 0)
    for node in recurrences:  # steps x batch rows x the step MatMuls' weights
        steps = shapes.get(node.input[-1])
        counts[node.name] = int(steps[0] * steps[1] * sum(np.prod(w.dims) for w in recurrence_weights(node))) if steps else 0
    return counts


def proxy_ranking(qdq: QdqModel, reverted: set[str], candidates: list[str], subset: EvalSplit) -> dict[str, float]:
    """Noise each candidate node adds in the current mix, on the ranking subset."""
    model = qdq.with_float(reverted)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes = {n.name: n for n in model.graph.node}
    float_tensors = {o for n in qdq.source.graph.node for o in n.output}
    pairs: dict[str, tuple[str, str]] = {}  # int8-model tensor -> (fp32 tensor, int8 tensor) to compare
    plan: dict[str, tuple[str | None, list[str]]] = {}
    for name in candidates:
        node = nodes.get(name)
        if node is None:
            continue
        out = _after_qdq(node.output[0], consumers, float_tensors)
        inputs = [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"
                  and producers[i].input[0] in producers and producers[producers[i].input[0]].op_type == "QuantizeLinear"]
        for dq_out in inputs:
            quantize = producers[producers[dq_out].input[0]]
            pairs[dq_out] = (quantize.input[0], dq_out)
        pairs[out[1]] = out
        plan[name] = (out[1], inputs)
    float_names = {fp for fp, _ in pairs.values()}
    int8_names = {q for _, q in pairs.values()}
    fp_values = run_exposing(qdq.source, sorted(float_names), subset.feeds, subset.carry)
    q_values = run_exposing(model, sorted(int8_names), subset.feeds, subset.carry)
    noise = {key: _relative_error(fp_values.get(fp), q_values.get(q)) for key, (fp, q) in pairs.items()}
    added = {}
    for name, (out_key, input_keys) in plan.items():
        out_noise = noise.get(out_key)
        in_noise = max((noise[k] for k in input_keys if noise.get(k) is not None), default=0.0)
        added[name] = 0.0 if out_noise is None else max(out_noise - in_noise, 0.0)
    return added


def rank_groups(qdq: QdqModel, groups: list[str], reverted: set[str], candidates: list[str], subset: EvalSplit, scorer: Scorer,
                alone: dict[str, FidelityScore | None], trials: int, op_types: dict[str, str], keep_going: Callable[[], bool],
                on_trial: Callable[[], None]) -> list[GroupRank]:
    """Candidates worst-first: those measured alone in int8 by the noise they bring to the outputs,
    then the rest by the proxy. ``alone`` holds the groups tried so far, None where no score could
    be had (such a score does not depend on the current mix, so a re-rank tries only groups not
    tried before, up to ``trials`` more, in the proxy's order). On an NPU (W8A16 fallback) "float"
    is 16-bit activations: a group 16-bit in every mix has no score alone, nor one whose mix QNN
    cannot compile (it would score as all-int8 does and rank first for a fault not its own)."""
    proxy = proxy_ranking(qdq, reverted, candidates, subset)
    ranks = sorted((GroupRank(n, op_types.get(n, "?"), proxy.get(n, 0.0)) for n in candidates), key=lambda r: -r.proxy)
    everything = set(groups)
    always_wide = getattr(qdq, "required", frozenset())
    measured = 0
    for rank in ranks:
        if rank.node in alone:
            continue
        if rank.node in always_wide:
            alone[rank.node] = None
            continue
        if measured >= trials or not keep_going():
            break
        failed = getattr(qdq, "uncompilable", 0)
        score = scorer.score(qdq.session(everything - {rank.node}), subset)
        on_trial()
        measured += 1
        alone[rank.node] = score if getattr(qdq, "uncompilable", 0) == failed else None
    return ranked_by_alone(ranks, alone)


def ranked_by_alone(ranks: list[GroupRank], alone: dict[str, FidelityScore | None]) -> list[GroupRank]:
    """``ranks`` (in the proxy's order) with the groups measured alone first, worst first."""
    for rank in ranks:
        rank.alone = alone.get(rank.node)
    return sorted((r for r in ranks if r.alone is not None), key=GroupRank.harm) + [r for r in ranks if r.alone is None]


def _after_qdq(tensor: str, consumers: dict[str, list[onnx.NodeProto]], float_tensors: set[str]) -> tuple[str, str]:
    """(fp32 name, int8-model name) of a node's output as its consumers see it: after its Q/DQ pair.
    ORT renames a quantized graph output's producer ('y_QuantizeLinear_Input'), so the fp32 name
    is the DQ output's where the tensor itself is not in the float model."""
    for q in consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return (tensor if tensor in float_tensors else dq.output[0]), dq.output[0]
    return tensor, tensor


def _relative_error(reference: list[np.ndarray] | None, candidate: list[np.ndarray] | None) -> float | None:
    if not reference or not candidate:
        return None
    signal = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(c, np.float64)) ** 2))
                for r, c in zip(reference, candidate) if r.shape == c.shape)
    return noise / max(signal, 1e-30)
