"""Rank quantized groups by the fidelity each one costs: a fast proxy for all, real trials for the top.

Proxy (the idea of ORT's qdq_loss_debug, automated): run the fp32 and the current int8 model with
their intermediate tensors exposed and take, per quantized node, the relative error of its output
minus the worst relative error of its inputs: the noise that node adds. Trials then revert each of
the top groups alone and score the model on the ranking subset (the samples where int8 deviates
most), the way NNCF's accuracy control ranks quantizer groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from edgeport.passes.int8_eval import EvalSplit, Scorer, run_exposing
from edgeport.passes.qdq_graph import QdqModel
from edgeport.passes.recurrent_scan import is_recurrence, recurrence_weights
from edgeport.runtimes.graph_cost import node_macs


@dataclass
class GroupRank:
    node: str
    op_type: str
    proxy: float  # relative noise the node adds (output error minus input error)
    trial: tuple[float, float] | None = None  # score key with this group alone reverted, on the ranking subset

    def to_dict(self) -> dict:
        entry = {"node": self.node, "op_type": self.op_type, "added_noise": float(f"{self.proxy:.4g}")}
        if self.trial is not None:
            entry["trial_margin"] = float(f"{self.trial[0]:.4g}")
            entry["trial_sqnr_db"] = float(f"{self.trial[1]:.4g}")
        return entry


def node_mac_counts(source: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """MACs per node of the float model for one sample, from the shapes a real run produces."""
    init_shapes = {t.name: tuple(t.dims) for t in source.graph.initializer}
    wanted = [n for n in source.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN") and n.name]
    recurrences = [n for n in source.graph.node if is_recurrence(n)]
    names = list(dict.fromkeys([*(t for n in wanted for t in (*n.input[:3], n.output[0]) if t and t not in init_shapes),
                                *(n.input[-1] for n in recurrences)]))
    values = run_exposing(source, names, [feed])
    shapes = {**init_shapes, **{name: values[name][0].shape for name in names if name in values}}
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


def rank_groups(qdq: QdqModel, reverted: set[str], candidates: list[str], subset: EvalSplit, scorer: Scorer,
                trials: int, op_types: dict[str, str], keep_going: Callable[[], bool]) -> list[GroupRank]:
    """Candidates best-first: those confirmed by trials by their trial score, the rest by proxy."""
    proxy = proxy_ranking(qdq, reverted, candidates, subset)
    ranks = sorted((GroupRank(n, op_types.get(n, "?"), proxy.get(n, 0.0)) for n in candidates), key=lambda r: -r.proxy)
    for rank in ranks[:trials]:
        if not keep_going():
            break
        rank.trial = scorer.score(qdq.session(reverted | {rank.node}), subset).key()
    tried = sorted((r for r in ranks if r.trial is not None), key=lambda r: r.trial, reverse=True)
    return tried + [r for r in ranks if r.trial is None]


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
