"""The all-int8 candidates the accuracy-aware search builds and improves before any fallback:
each is one way to make the int8 model (calibration method, rewrites of the float model,
weights rounded by GPTQ, corrected biases, 7- or 8-bit weights), and the search space of groups
it offers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.artifacts import OnnxArtifact
from edgeport.passes.bias_correction import correct_biases
from edgeport.passes.context import PassContext
from edgeport.passes.fallback_search import FLOAT_COMPUTE_OPS, SearchBudget, SearchSpace, revert_free_types, weight_bytes
from edgeport.passes.fidelity import FidelityScore
from edgeport.passes.int8_eval import Scorer, session_for
from edgeport.passes.qdq_graph import QdqModel
from edgeport.passes.calibration import calibrate
from edgeport.passes.pair_bounded_weights import bounds_pairs
from edgeport.passes.quantize_static import StaticInt8Config, host_quant_target, quantize_from_ranges
from edgeport.passes.sensitivity import node_mac_counts
from edgeport.passes.smooth_quant import scale_nodes
from edgeport.passes.weight_rounding import round_weights
from edgeport.passes.wide_activations import WideActivationModel
from edgeport.runtimes.hostcpu import X86_ARCHES
from edgeport.runtimes.int8_kernels import int8_kernel_nodes


@dataclass
class Candidate:
    """One way to make the all-int8 model: calibration method, smoothing, rounded weights, corrected biases."""

    source: onnx.ModelProto  # the float model ORT quantizes (weights rounded and biases corrected, or not)
    float_source: onnx.ModelProto  # the exact float model it derives from (the original or a smoothed one): reverts read it
    qdq: onnx.ModelProto
    ranges: Path
    method: str
    score: FidelityScore
    outputs: list[Any]  # its outputs on the search split, so the worst samples need no second run
    correction: Any = None  # a BiasCorrection
    reduce_range: bool = False
    wide: WideActivationModel | None = None  # QNN: the search's groups take 16-bit activations, not float
    rounding: Any = None  # a WeightRounding: weights rounded by GPTQ (instead of corrected biases)
    label: str = ""  # unique among the search's candidates: names the files made from it
    float_anyway: frozenset[str] | None = None  # groups ORT runs in float all-int8, once read off its graph


def with_free_types(candidate: Candidate, quant: StaticInt8Config, search: Any, scorer: Scorer, budget: SearchBudget,
                     guard: float) -> tuple[set[str], FidelityScore]:
    """The MAC-free nodes worth keeping float in ``candidate``, and its score with them in float."""
    free, score, _ = revert_free_types(search_space(candidate, quant, search), candidate.score, search, scorer, budget, guard=guard)
    return free, score


def scored_with_free(candidate: Candidate, free: set[str], search: Any, scorer: Scorer, budget: SearchBudget) -> FidelityScore:
    """``candidate``'s score with the MAC-free op types ``free`` in float, as the search will have
    them: how every refinement of the all-int8 model is judged (one trial)."""
    score = scorer.score(session_for(qdq_model_of(candidate).with_float(free)), search)
    budget.spend()
    return score


def qdq_model_of(candidate: Candidate) -> QdqModel | WideActivationModel:
    """Reverted nodes read exact float weights and biases; smoothing's scales are always float. On
    an NPU target "reverting" a group gives it 16-bit activations instead."""
    if candidate.wide is not None:
        return candidate.wide
    return QdqModel(candidate.qdq, candidate.float_source, scale_nodes(candidate.float_source))


# MAC op types whose int8 kernels on ORT's CPU provider the search's revert rules model (QdqModel;
# a Scan is an int8 recurrence, whose int8 MatMuls sit in its body); for any other quantized one
# (ConvTranspose...) ORT's own graph says whether it runs int8
MODELED_MAC_OPS = frozenset({"Conv", "Gemm", "MatMul", "Scan"}) | FLOAT_COMPUTE_OPS


def search_space(candidate: Candidate, quant: StaticInt8Config, search: Any) -> SearchSpace:
    qdq_model = qdq_model_of(candidate)
    groups = [g for g in qdq_model.quantized if g not in quant.exclude_nodes]
    macs = node_mac_counts(candidate.float_source, search.feeds[0])
    op_of = {n.name: n.op_type for n in candidate.float_source.graph.node}
    if candidate.float_anyway is None:  # the search builds a candidate's space several times: ORT's graph is read once
        candidate.float_anyway = float_all_int8(candidate, groups, macs, op_of)
    return SearchSpace(qdq_model, groups, macs, op_of, weight_bytes(candidate.float_source, groups) if candidate.wide is None else {},
                       candidate.qdq.ByteSize(), float_anyway=candidate.float_anyway)


def float_all_int8(candidate: Candidate, groups: list[str], macs: dict[str, int], op_of: dict[str, str]) -> frozenset[str]:
    """Quantized groups of op types the revert rules do not model that ORT's CPU provider runs in
    float even all-int8 (on this ORT, a QDQ ConvTranspose: 3% of PP-OCRv4's detector), read off the
    graph ORT builds from the all-int8 model (about 0.3 s, so only where such a group exists)."""
    unmodeled = {g for g in groups if macs.get(g) and op_of.get(g) not in MODELED_MAC_OPS}
    if not unmodeled or candidate.wide is not None:  # on an NPU the fallback is 16-bit activations, not CPU kernels
        return frozenset()
    return frozenset(unmodeled - int8_kernel_nodes(candidate.qdq))


def bias_corrected(base: Candidate, config: Any, calibration: Any, model: OnnxArtifact, work: Path,
                    candidate: Any, always: bool = False) -> Candidate | None:
    """``base`` with biases corrected for its weight rounding; None when not tried (switched off,
    the target already met, or no layer to correct)."""
    if not config.bias_correction or (base.score.margin >= config.guard_band and not always):
        return None
    return _edited(base, "bias-corrected", "correction", lambda feeds: correct_biases(base.source, base.qdq, feeds),
                   lambda correction: bool(correction.original), calibration, model, work, candidate)


def weight_rounded(base: Candidate, config: Any, calibration: Any, model: OnnxArtifact, work: Path,
                    candidate: Any, always: bool = False) -> Candidate | None:
    """``base``'s float weights rounded by GPTQ on the levels ``base``'s int8 model gives them; None
    when not tried or no layer qualifies. An alternative to bias correction, not an addition: GPTQ's
    objective, the layer's output error on calibration data, already holds its mean shift."""
    if not config.weight_rounding or (base.score.margin >= config.guard_band and not always):
        return None
    pair_bounded = bounds_pairs(base.reduce_range, config.quant)
    return _edited(base, "rounded", "rounding", lambda feeds: round_weights(base.float_source, base.qdq, feeds, pair_bounded),
                   lambda rounding: bool(rounding.layers), calibration, model, work, candidate)


def _edited(base: Candidate, suffix: str, kind: str, edit: Any, changed: Any, calibration: Any, model: OnnxArtifact, work: Path,
            candidate: Any) -> Candidate | None:
    """``base`` quantized again, with the same ranges, from its float model as ``edit`` changed it
    (given up to 32 calibration samples); None when ``edit`` changed nothing."""
    edit_result = edit([b.inputs for b in calibration.batches(model.inputs, 1, 32)])
    if not changed(edit_result):
        return None
    path = work / f"source.{base.label}.{suffix}.onnx"
    onnx.save(edit_result.model, str(path))
    return candidate(path, base.ranges, base.method, f"{base.label}.{suffix}", float_source=base.float_source,
                     bounded=base.reduce_range, **{kind: edit_result})


def corrected_if_better(best: Candidate, config: Any, calibration: Any, model: OnnxArtifact, work: Path, candidate: Any,
                        improvements: dict[str, Any]) -> Candidate:
    """``best`` with corrected biases where that scores better, the try recorded in ``improvements``."""
    corrected = bias_corrected(best, config, calibration, model, work, candidate)
    if corrected is not None:
        improvements["bias_correction"] = {"layers": len(corrected.correction.original), "kept": corrected.score.beats(best.score),
                                           "before": best.score.to_dict(), "after": corrected.score.to_dict()}
        return corrected if improvements["bias_correction"]["kept"] else best
    if config.bias_correction:
        improvements["bias_correction"] = "not tried: the target is met without it"
    return best


def rounded_if_better(best: Candidate, free: set[str] | None, free_score: FidelityScore | None, quant: StaticInt8Config, search: Any,
                      scorer: Scorer, budget: SearchBudget, config: Any, calibration: Any, model: OnnxArtifact, work: Path,
                      candidate: Any, improvements: dict[str, Any]) -> tuple[Candidate, set[str] | None, FidelityScore | None]:
    """``best`` with GPTQ-rounded weights instead of corrected biases where that scores better,
    judged with the MAC-free op types in float as the search will have them; the try recorded."""
    if best.score.margin >= config.guard_band or (free_score is not None and free_score.margin >= config.guard_band):
        if config.weight_rounding:
            improvements["weight_rounding"] = "not tried: the target is met without it"
        return best, free, free_score
    if not config.weight_rounding:
        improvements["weight_rounding"] = "off: AccuracyAwareInt8Config(weight_rounding=True) tries GPTQ rounding"
        return best, free, free_score
    rounded = weight_rounded(best, config, calibration, model, work, candidate, always=True)
    if rounded is None:
        improvements["weight_rounding"] = ("not tried: no layer qualifies (symmetric int8 weights, scaled per output channel or per "
                                           "tensor, read by one Conv/Gemm/MatMul, a Conv 1-D or 2-D without SAME padding)")
        return best, free, free_score
    record = {"method": "GPTQ on the int8 levels ORT chose, from up to 32 calibration samples", "layers": len(rounded.rounding.layers)}
    if best.wide is not None:  # an NPU: no op type is free there, so all-int8 scores decide (as for the ranges)
        kept = rounded.score.beats(best.score)
        improvements["weight_rounding"] = {**record, "kept": kept, "before": best.score.to_dict(), "after": rounded.score.to_dict()}
        return (rounded if kept else best), free, free_score
    if free is None or free_score is None:
        free, free_score = with_free_types(best, quant, search, scorer, budget, config.guard_band)
    after = scored_with_free(rounded, free, search, scorer, budget)
    kept = after.beats(free_score)
    improvements["weight_rounding"] = {**record, "kept": kept, "free_op_types_in_float": len(free),
                                       "before": free_score.to_dict(), "after": after.to_dict(),
                                       **({"replaces": "the corrected biases (GPTQ's weights are not bias-corrected)"}
                                          if kept and best.correction is not None else {})}
    return (rounded, free, after) if kept else (best, free, free_score)


def refined_like(other: Candidate, best: Candidate, config: Any, calibration: Any, model: OnnxArtifact, work: Path,
                 candidate: Any) -> Candidate:
    """``other`` refined as ``best`` was (weights rounded, or biases corrected): a new calibration
    method or rewrite is compared with ``best`` like with like."""
    if best.rounding is not None:
        return weight_rounded(other, config, calibration, model, work, candidate, always=True) or other
    if best.correction is not None:
        return bias_corrected(other, config, calibration, model, work, candidate, always=True) or other
    return other


def source_for_revert(candidate: Candidate, reverted: set[str]) -> onnx.ModelProto:
    """``candidate.source`` with the reverted nodes' weights and biases as in the float model: a
    node kept float is not rounded, so neither GPTQ's weights nor a corrected bias belongs to it (a
    bias a correction added, absent in the float model, becomes zero)."""
    model = onnx.ModelProto()
    model.CopyFrom(candidate.source)
    original = {t.name: t for t in candidate.float_source.graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in reverted:
            continue
        for name in node.input:
            if name in inits and name in original:
                inits[name].CopyFrom(original[name])
            elif name in inits:
                inits[name].CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(inits[name])), name))
    return model


def transformed(base: Candidate, transform: Any, label: str, config: Any, calibration: Any, model: OnnxArtifact,
                 op_types: list[str], quant: StaticInt8Config, calib_ctx: PassContext, scan: Any, work: Path,
                 candidate: Any) -> tuple[Candidate, int] | None:
    """``base`` rebuilt on a function-preserving rewrite of its float model (equalized or smoothed):
    fresh ranges, then weights rounded or biases corrected again as ``base``'s were. None when the
    rewrite changed nothing."""
    feeds = [b.inputs for b in calibration.batches(model.inputs, 1, 32)]
    rewritten, changed = transform(base.float_source, feeds)
    if not changed:
        return None
    path = work / f"source.{label}.onnx"
    onnx.save(rewritten, str(path))
    ranges, _ = calibrate(path, model.inputs, op_types, base.method, quant, calib_ctx, scan, work)
    result = candidate(path, ranges, base.method, f"{base.method}.{label}", float_source=rewritten, bounded=base.reduce_range)
    return refined_like(result, base, config, calibration, model, work, candidate), changed


def full_range_weights(best: Candidate, free: set[str] | None, free_score: FidelityScore | None, quant: StaticInt8Config, search: Any,
                        scorer: Scorer, budget: SearchBudget, config: Any, calibration: Any, model: OnnxArtifact,
                        work: Path, candidate: Any, improvements: dict[str, Any]) -> Candidate:
    """``best`` with full 8-bit weights where the rule bounded them (reduce_range), kept only if it scores better.
    Only measured where this host runs the very kernels that can saturate (x86 without VNNI): a
    measurement elsewhere could not see the saturation that reduce_range exists to avoid."""
    host = host_quant_target()
    if host.arch not in X86_ARCHES or host.has_vnni:
        improvements["full_range_weights"] = f"not tried: {host.source} does not run the target's saturating kernels, so it cannot measure them"
        return best
    if free is None or free_score is None:
        free, free_score = with_free_types(best, quant, search, scorer, budget, config.guard_band)
    float_path = work / f"source.{best.method}.full-range.onnx"
    onnx.save(best.float_source, str(float_path))
    other = candidate(float_path, best.ranges, best.method, f"{best.method}.full-range", float_source=best.float_source, bounded=False)
    # the levels changed, so rounded weights and corrected biases must be made again
    other = refined_like(other, best, config, calibration, model, work, candidate)
    after = scored_with_free(other, free, search, scorer, budget)
    kept = after.beats(free_score)
    improvements["full_range_weights"] = {
        "kept": kept, "before": free_score.to_dict(), "after": after.to_dict(),
        "rule": f"reduce_range off: measured on {host.source}, x86 without VNNI whose u8*s8 kernels can saturate, full 8-bit "
                "weights scored better than bounded ones" if kept else "",
    }
    return other if kept else best


def quantize_candidate(source_path: Path, out: Path, ranges: Path, method: str, op_types: list[str], quant: StaticInt8Config,
              reduce_range: bool, exclude: tuple[str, ...]) -> onnx.ModelProto:
    """Search candidates are QDQ whatever the final format: their float bypasses are built on Q/DQ pairs."""
    qdq_config = replace(quant, format="qdq")
    return quantize_from_ranges(source_path, out, ranges, method, op_types, qdq_config, reduce_range, exclude)
