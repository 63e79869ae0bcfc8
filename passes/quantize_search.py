"""Accuracy-aware int8: quantize every op, make int8 as good as it gets, then revert to float the
groups that cost the most fidelity until the target is met, within a budget of MACs in float.

Search and verdict use different data: the evaluation samples alternate between a search split
(ranking, trials, stopping) and a held-out split the verdict is reported on, so the result is not
fitted to the samples that judge it. When no mix meets the target the best candidate is still
returned and the record names the groups that stood in the way; the caller turns that into exit 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import DataError, QuantizationError, UsageError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.fidelity import FidelityScore, FidelityTarget, load_metric
from edgeport.passes.int8_eval import (
    Scorer, add_reference, calibration_and_evaluation, load_splits, session_for, worst_samples,
)
from edgeport.passes.int8_noise_floor import input_rounding_floor, rounds_inputs
from edgeport.passes.search_source import search_source
from edgeport.passes.search_verdict import search_verdict
from edgeport.passes.int8_graph_facts import compute_in_subgraphs, float_as_run, nodes_reading_unbounded_tensors, nothing_quantized
from edgeport.passes.qdq_graph import QdqModel, gather_before_dequantize
from edgeport.passes.quant_defaults import choose_op_types, int8_speedup, model_family, reduce_range_decision
from edgeport.passes.quantize_static import (
    StaticInt8Config, default_op_types, op_types_to_quantize,
    host_quant_target, per_tensor_if_needed, quantize_from_ranges, resolve_reduce_range,
)
from edgeport.passes.equalization import equalize_pairs
from edgeport.passes.recurrent_int8 import restore_cells
from edgeport.passes.recurrent_scan import RECURRENT_CHOICES, SCAN_SUFFIX
from edgeport.passes.smooth_quant import scale_nodes, smooth_activations
from edgeport.passes.fallback_search import SearchBudget, SearchResult, revert_free_types, search_fallback
from edgeport.passes.wide_activations import (
    WideActivationModel, compilable_mix, npu_verdict_session, qnn_installed, start_on_npu, wide_activation_share,
)
from edgeport.runtimes.parity import class_score_outputs
from edgeport.passes.calibration import METHODS, ONE_SHAPE_METHODS, calibrate
from edgeport.passes.registry import PassInfo
from edgeport.passes.search_candidates import (
    Candidate, corrected_if_better, full_range_weights, quantize_candidate, refined_like, rounded_if_better, scored_with_free, search_space,
    source_for_revert, transformed, with_free_types,
)

NPU_VERDICT_SAMPLES = 32  # per split, judged on QNN's HTP simulator (seconds per inference on a real model)
NPU_TRIAL_S = 3.0  # search trials run on the simulator when one takes at most this long, else on ORT's CPU kernels


@dataclass(frozen=True)
class AccuracyAwareInt8Config:
    """Static int8 (``quant``: format, types, per-channel...) searched to meet ``target``.

    ``max_fallback`` is the share of MACs allowed to stay float; ``search_budget_s`` and
    ``max_trials`` bound the work (each trial runs one candidate on the ranking subset or the
    search split); ``ranking_trials`` is how many more groups, in the proxy's order, each ranking
    measures alone in int8 (at most half the trials and time left; 0: the proxy's order alone).
    """

    quant: StaticInt8Config = field(default_factory=StaticInt8Config)
    target: FidelityTarget = field(default_factory=FidelityTarget.default)
    max_fallback: float = 0.25
    search_budget_s: float = 600.0
    max_trials: int = 300
    ranking_trials: int = 200
    ranking_samples: int = 16
    eval_samples: int = 256
    bias_correction: bool = True
    # GPTQ: weights rounded to cut each layer's output error, not each weight's; opt-in: it raised
    # all-int8 fidelity on a MobileNetV2, but the fallback then gained less per MAC (bench/README.md)
    weight_rounding: bool = False
    # minmax starts; each further method is tried while the target is missed. mse: per-tensor ranges
    # that least err in the mean square (a histogram pass); percentile clips every tensor alike.
    # mean_minmax only when listed: won on a planted-outlier MLP's all-int8 score, then capped its mix
    # at 0.95 once the broken layer went float (minmax 0.996); on the bench, chosen on no model
    calibration_methods: tuple[str, ...] = ("minmax", "mse", "percentile")
    equalization: bool = True  # cross-layer equalization of Conv pairs
    smooth_quant: bool = True  # for MatMuls that read activations with outlier channels
    recurrent: str = "auto"  # GRU/LSTM into int8 Scans: auto (large steps only), always, never
    # SmoothQuant's migration strengths, each tried: 0.5 (the paper's default), 0.8, 0.95 (NNCF's for MatMul)
    smooth_alphas: tuple[float, ...] = (0.5, 0.8, 0.95)
    guard_band: float = 0.3  # the search split must beat the target by this normalized margin, so held-out data meets it too

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fallback <= 1.0:
            raise UsageError(f"max_fallback {self.max_fallback} is not within [0, 1]", fix="give the share of MACs allowed in float, e.g. 0.25")
        if self.search_budget_s <= 0 or self.max_trials < 1:
            raise UsageError("the search budget must allow at least one trial", fix="give --search-budget as seconds > 0 or trials >= 1")
        for name, least in (("ranking_trials", 0), ("ranking_samples", 1), ("eval_samples", 1)):
            if getattr(self, name) < least:
                raise UsageError(f"{name} {getattr(self, name)} is below {least}", fix=f"set {name} to {least} or more")
        for alpha in self.smooth_alphas:
            if not 0.0 < alpha < 1.0:
                raise UsageError(f"smooth alpha {alpha} is not within (0, 1)", fix="use e.g. 0.5 (how much of the range moves into the weights)")
        if self.recurrent not in RECURRENT_CHOICES:
            raise UsageError(f"recurrent '{self.recurrent}' is unknown", fix=f"use one of {', '.join(RECURRENT_CHOICES)}")
        unknown = [m for m in self.calibration_methods if m not in METHODS]
        if unknown or not self.calibration_methods:
            raise UsageError(f"calibration method '{(unknown or [''])[0]}' is unknown", fix=f"use some of {', '.join(METHODS)}")


def quantize_accuracy_aware(model: OnnxArtifact, config: AccuracyAwareInt8Config, *, ctx: PassContext) -> OnnxArtifact:
    ctx.progress.start("int8 search trials")  # a counter: the search ends when the target is met, mostly long before its budget
    try:
        return _search(model, config, ctx)
    finally:
        ctx.progress.finish()


def _search(model: OnnxArtifact, config: AccuracyAwareInt8Config, ctx: PassContext) -> OnnxArtifact:
    started = time.perf_counter()
    budget = SearchBudget(started + config.search_budget_s, config.max_trials, ctx.progress)
    notes: list[str] = []
    quant = per_tensor_if_needed(config.quant, model.path, notes)
    if quant.format not in ("qdq", "qoperator"):
        raise UsageError(f"format '{quant.format}' is unknown", fix="use qdq or qoperator")
    if ctx.calibration is None:
        raise QuantizationError("static int8 quantization needs calibration data",
                                fix="pass --calib DATA (real samples), --calib random to accept unrepresentative ranges, or --precision dynamic-int8")
    work = ctx.work_dir / "int8-search"
    work.mkdir(parents=True, exist_ok=True)
    on_npu = quant.rules == "qnn"  # float is the CPU there: the fallback is 16-bit activations
    npu_smoothing = on_npu and config.smooth_quant
    if npu_smoothing:
        config = replace(config, smooth_quant=False)
    calibration, evaluation, data_note = calibration_and_evaluation(ctx.calibration, ctx.evaluation, ctx.state_carry, model.inputs)
    if data_note:
        notes.append(data_note)

    prepared = search_source(model.path, quant, config.recurrent, on_npu, ctx, work, notes)
    source_path, source, folded, recurrences = prepared.path, prepared.model, prepared.folded, prepared.recurrences
    op_types = op_types_to_quantize(quant, default_op_types(quant, source))
    reduce_range, range_rule = resolve_reduce_range(quant.reduce_range, ctx, quant.rules)

    search, held_out = load_splits(evaluation, model.inputs, config.eval_samples, ctx.state_carry)
    reference = session_for(str(model.path))
    add_reference(search, reference)
    add_reference(held_out, reference)
    scorer = Scorer(config.target, load_metric(config.target.metric), class_score_outputs(onnx.load(str(model.path), load_external_data=False)))

    ctx.progress.note("int8 search: making the all-int8 model as good as it can be")
    scan = calibration.scan(model.inputs, quant.calibration_batch_size, quant.calibration_samples)
    if scan.batches == 0:
        raise DataError(f"calibration data '{calibration.description}' yields no samples", fix="give at least one sample")
    calib_ctx = PassContext(work_dir=work, seed=ctx.seed, calibration=calibration, progress=ctx.progress, cache_dir=ctx.cache_dir)
    methods = [m for m in config.calibration_methods if m not in ONE_SHAPE_METHODS or len(scan.shapes) == 1]
    if len(methods) < len(config.calibration_methods):
        notes.append(f"calibration samples differ in shape, so {', '.join(sorted(set(config.calibration_methods) - set(methods)))} "
                     "ranges were not tried (pad samples to one shape to compare them)")
    if on_npu and "mse" in methods[1:]:  # its ranges fit one bit width; W8A16 mixes two
        methods.remove("mse")
    # minmax first; each further technique only while the target is not met with the guard band
    ranges, _ = calibrate(source_path, model.inputs, op_types, methods[0], quant, calib_ctx, scan, work)
    unbounded = nodes_reading_unbounded_tensors(source, ranges)
    if unbounded:
        notes.append(f"kept float from the start: {', '.join(sorted(unbounded)[:5])}{' ...' if len(unbounded) > 5 else ''} read tensors whose "
                     "calibrated range is not finite (e.g. attention masks filled with -inf), which int8 cannot represent")
        quant = replace(quant, exclude_nodes=tuple(dict.fromkeys((*quant.exclude_nodes, *sorted(unbounded)))))

    def candidate(path: Path, ranges: Path, method: str, label: str, correction: Any = None, float_source: onnx.ModelProto = source,
                  bounded: bool = reduce_range, rounding: Any = None) -> Candidate:
        pinned = scale_nodes(float_source)
        exclude = (*quant.exclude_nodes, *sorted(pinned))
        qdq = quantize_candidate(path, work / f"all.{label}.onnx", ranges, method, op_types, quant, bounded, exclude)
        budget.spend()
        scored = QdqModel(qdq, float_source, pinned).with_float(set()) if pinned else qdq
        wide = WideActivationModel(qdq, float_source, path, ranges, method, op_types, quant, exclude, work) if on_npu else None
        edited = correction or rounding  # the float model with corrected biases or rounded weights, if any
        return Candidate(edited.model if edited else float_source, float_source, qdq, ranges, method,
                         *scorer.evaluate(session_for(scored), search), correction, bounded, wide, rounding, label)

    best = candidate(source_path, ranges, methods[0], methods[0])
    plain_qdq = best.qdq  # before any rewrite: its input Q/DQ read the graph inputs themselves
    improvements: dict[str, Any] = {"calibration": {methods[0]: best.score.to_dict()}}
    if recurrences:
        improvements["recurrent_cells"] = recurrences
    if npu_smoothing:
        improvements["smooth_quant"] = "not tried: its scales stay float, which QNN's HTP would leave to the CPU"
    # Cheapest first: bias correction (one pass over 32 samples), then other calibration methods
    # (a histogram pass each), then GPTQ rounding, each only while the target is missed.
    best = corrected_if_better(best, config, calibration, model, work, candidate, improvements)
    free: set[str] | None = None
    free_score: FidelityScore | None = None
    for method in methods[1:]:
        if best.score.margin >= config.guard_band or (free_score is not None and free_score.margin >= config.guard_band):
            improvements["calibration"][method] = "not tried: the target is met without it"
            continue
        try:
            other = candidate(source_path, calibrate(source_path, model.inputs, op_types, method, quant, calib_ctx, scan, work)[0], method, method)
        except Exception as exc:  # histograms fail on tensors with inf (attention masks) or NaN
            notes.append(f"{method} calibration failed ({first_line(exc)}); kept {best.method}")
            continue
        other = refined_like(other, best, config, calibration, model, work, candidate)  # compare like with like
        if on_npu:  # no op type is free there: every one widened costs the NPU's time
            improvements["calibration"][method] = other.score.to_dict()
            best = other if other.score.beats(best.score) else best
            continue
        if free is None:  # judged with MAC-free op types float, as the search has them (MiniLM: all-int8 favoured mse, then 5% float)
            free, free_score = with_free_types(best, quant, search, scorer, budget, config.guard_band)
        other_free = scored_with_free(other, free, search, scorer, budget)
        improvements["calibration"][method] = {"all_int8": other.score.to_dict(), "free_op_types_in_float": other_free.to_dict(), "compared_with": {best.method: free_score.to_dict()}}
        if other_free.beats(free_score):
            best, free_score = other, other_free
    improvements["calibration_chosen"] = best.method
    best, free, free_score = rounded_if_better(best, free, free_score, quant, search, scorer, budget, config, calibration, model, work,
                                               candidate, improvements)
    transforms = [("cross_layer_equalization", config.equalization, lambda m, feeds: equalize_pairs(m), False)]
    transforms += [(f"smooth_quant_alpha_{alpha:g}", config.smooth_quant, lambda m, feeds, a=alpha: smooth_activations(m, feeds, a), True)
                   for alpha in config.smooth_alphas]
    unsmoothed: Candidate | None = None
    for name, enabled, transform, smoothing in transforms:
        if not enabled:
            continue
        if best.score.margin >= config.guard_band or (free_score is not None and free_score.margin >= config.guard_band):
            improvements[name] = "not tried: the target is met without it"
            continue
        if free is None:
            # Judge each rewrite where it matters: with the op types that cost no MACs in float, as the
            # search will have them (a quantized Softmax can hide what smoothing does for the MatMuls).
            free, free_score = with_free_types(best, quant, search, scorer, budget, config.guard_band)
        if smoothing and unsmoothed is None:
            unsmoothed = best  # each strength is applied to the model before smoothing, not on top of another
        base = unsmoothed if smoothing else best
        result = transformed(base, transform, name, config, calibration, model, op_types, quant, calib_ctx, scan, work, candidate)
        if result is not None:
            after = scored_with_free(result[0], free, search, scorer, budget)
            kept = after.beats(free_score)
            improvements[name] = {"changed": result[1], "kept": kept, "free_op_types_in_float": len(free),
                                  "before": free_score.to_dict(), "after": after.to_dict()}
            if kept:
                best, free_score = result[0], after
    if reduce_range and quant.reduce_range is None and best.score.margin < config.guard_band \
            and (free_score is None or free_score.margin < config.guard_band):
        best = full_range_weights(best, free, free_score, quant, search, scorer, budget, config, calibration, model, work,
                                   candidate, improvements)
        if not best.reduce_range:
            reduce_range, range_rule = False, improvements["full_range_weights"]["rule"]
    start_score = best.score

    npu_start = None
    if on_npu:
        npu_start = start_on_npu(best.wide, search, scorer, NPU_VERDICT_SAMPLES, NPU_TRIAL_S, improvements)
        if best.wide.required or best.wide.npu_options is not None:
            best.score, best.outputs = scorer.evaluate(best.wide.session(set()), search)
            budget.spend()
            start_score = best.score
    space = search_space(best, quant, search)
    speedup = int8_speedup(ctx.quant_target or host_quant_target())
    space.int8_speedup = speedup.value if not on_npu else None  # the MAC-bound model prices float, not 16-bit activations
    qdq_model, groups = space.qdq, space.groups
    if not groups:
        notes.append(nothing_quantized(source))
    else:
        hidden = compute_in_subgraphs(source)
        if hidden:
            notes.append(f"{', '.join(f'{count} {op}' for op, count in hidden.items())} inside If/Loop/Scan bodies stay float: ONNX Runtime's "
                         "quantizer does not enter subgraphs, and the float-MAC share counts top-level nodes only")
    ranking_subset = search.subset(worst_samples(search, best.outputs, config.ranking_samples))
    family_types = choose_op_types(source).value  # a family rule is at most the search's starting order
    first_types = tuple(sorted({space.op_of[g] for g in groups if space.op_of.get(g) not in family_types})) if family_types else ()
    if npu_start is not None:
        improvements["all_int8_on_npu"] = npu_start.to_dict()
    if npu_start is not None and npu_start.margin >= config.guard_band:  # the NPU meets the target all-int8: nothing widens
        result = SearchResult(set(), best.score, [], [], budget.ok())
    else:
        free, free_score, free_steps = revert_free_types(space, best.score, search, scorer, budget, guard=config.guard_band,
                                                         first_types=first_types)
        result = search_fallback(space, free_score, search, ranking_subset, scorer, budget, ctx.progress, guard=config.guard_band,
                                 max_fallback=config.max_fallback, ranking_trials=config.ranking_trials, reverted=free, steps=free_steps)

    if on_npu and best.wide.uncompilable:
        improvements["uncompilable_trials"] = best.wide.uncompilable
    if on_npu and result.reverted and qnn_installed():  # the mix must compile for the NPU, not only score well
        mix, improvements["w8a16_compile_check"] = compilable_mix(best.wide, result.reverted, space.op_of, dict(quant.target_options))
        if mix != result.reverted:
            result.reverted = mix
            result.score = scorer.score(space.qdq.session(mix), search)
            budget.spend()
    reverted = result.reverted
    out_path = ctx.work_dir / "model.int8.onnx"
    if quant.format == "qdq":
        # The mix the search measured, exactly: reverted nodes read their float inputs (a MAC-free
        # one an int8 Conv's int8 output: see QdqModel), every other Q/DQ pair stays. (ORT's
        # nodes_to_exclude keeps a reverted node's input quantized whenever its producer is
        # quantized, which is a different model.)
        final_model, unfolded = restore_cells(qdq_model.with_float(reverted), folded, reverted) if not on_npu else (qdq_model.with_float(reverted), set())
        if gather_before_dequantize(final_model):
            notes.append("embedding tables stay int8 at run time: each Gather reads the int8 table and dequantizes only the rows it takes")
        onnx.save(final_model, str(out_path))
    else:
        final_source = source_for_revert(best, reverted)
        final_source, unfolded = restore_cells(final_source, folded, reverted)
        final_source_path = work / "final-source.onnx"
        onnx.save(final_source, str(final_source_path))
        quantize_from_ranges(final_source_path, out_path, best.ranges, best.method, op_types, quant, reduce_range,
                             (*quant.exclude_nodes, *sorted(reverted), *sorted(scale_nodes(final_source))))
        if reverted:
            notes.append("QOperator output: the reverted nodes were excluded through ONNX Runtime, whose float/int8 boundaries "
                         "differ from the QDQ mix the search measured; the verdict below is measured on the QOperator file")
    final_qdq = str(out_path)
    final_session = session_for(final_qdq)
    # a QDQ artifact is the very mix the search scored last; a QOperator one is a new model
    search_score = result.score if quant.format == "qdq" and not unfolded else scorer.score(final_session, search)
    judged_on, searched_on = "ONNX Runtime's CPU kernels on this host", len(search)
    npu_session = npu_verdict_session(final_qdq, quant.target_options, notes) if on_npu else None
    if npu_session is not None:  # the verdict in the NPU's own arithmetic, not the CPU's emulation of it
        final_session, judged_on = npu_session, "QNN's HTP (the simulator on this host): the NPU's own fixed-point arithmetic"
        if ctx.state_carry is None:  # the simulator takes seconds per inference on real models
            search, held_out = (split.subset(list(range(min(len(split), NPU_VERDICT_SAMPLES)))) for split in (search, held_out))
            judged_on += f", at most {NPU_VERDICT_SAMPLES} samples of each split"
        search_score = scorer.score(final_session, search)
    held_out_score = scorer.score(final_session, held_out)
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "quantize_search"))
    if unfolded:
        notes.append(f"reverted recurrent cells run as their original GRU/LSTM node (ORT's fused float kernel beats a float Scan): "
                     f"{', '.join(sorted(n.removesuffix(SCAN_SUFFIX) for n in unfolded if n.endswith(SCAN_SUFFIX)))}")
    in_float, float_share, unexpected, requantized = float_as_run(space, out_path, reverted | unfolded, groups, quant.format, on_npu,
                                                                  config.max_fallback, notes)
    float_only = space.share(set())
    if not on_npu and float_only > config.max_fallback:
        notes.append(f"{float_only:.0%} of MACs are float before any revert ({space.float_compute_share():.0%} in GRU/LSTM/RNN nodes, which "
                     f"ONNX Runtime computes only in float): over the {config.max_fallback:.0%} fallback budget"
                     + (f" (recurrent cells: {improvements['recurrent_cells']['rule']})" if "recurrent_cells" in improvements else ""))
    met = search_score.met and held_out_score.met
    floor = None if met else input_rounding_floor(reference, search, plain_qdq, scorer)
    # the floor blocks only a model that still rounds its inputs; where the search kept their
    # readers float, it is a note beside the layer blockers
    still_rounded = floor is not None and rounds_inputs(onnx.load(final_qdq, load_external_data=False))
    verdict = search_verdict(config.max_fallback, met, search_score, held_out_score, result, floor, still_rounded,
                             "with 16-bit activations" if on_npu else "in float")
    if artifact.size_bytes > model.size_bytes:
        notes.append(f"the int8 model is larger than fp32 ({artifact.size_bytes / model.size_bytes:.0%}): constants shared by several nodes (e.g. biases) are quantized once per node")
    family = model_family(source)
    family_rule = choose_op_types(source).rule
    ctx.record_pass(
        PASS, config, started,
        metrics={
            "fidelity": {
                "target": config.target.describe(),
                "target_source": config.target.source,
                "met": met,
                "held_out": held_out_score.to_dict(),
                "held_out_tail": held_out_score.miss_bound() if ctx.state_carry is None else None,  # carried state: samples not independent
                "search_split": search_score.to_dict(),
                "before_search": start_score.to_dict(),
                "data": f"{evaluation.description}: {searched_on} samples searched on, {len(held_out)} held out for this verdict"
                        + (f"; state carried from feed to feed ({ctx.state_carry.describe()})" if ctx.state_carry else ""),
                "judged_on": judged_on,
                "blockers": verdict["blockers"],
                "reason": verdict["reason"],
                **({"input_rounding_floor": floor.to_dict()} if floor is not None else {}),
            },
            "float_mac_share": round(float_share, 4),
            "float_mac_share_basis": "top-level nodes" + (", as ONNX Runtime's CPU provider runs the file" if quant.format == "qdq" and not on_npu else "") + (" (compute inside subgraphs stays float and is not counted)" if compute_in_subgraphs(source) else ""),
            "compute_time_vs_fp32_estimate": {"value": space.compute_estimate_at(float_share), "basis": speedup.rule},
            "max_fallback": config.max_fallback,
            "fallback": "16-bit activations (W8A16): float on QNN's HTP would run on the CPU" if on_npu else "float",
            "fallback_mac_share": round(float_share - space.share(set()), 4),
            **({"activations_16bit": wide_activation_share(onnx.load(final_qdq, load_external_data=False))} if on_npu else {}),
            "reverted": [space.describe(g) for g in sorted(reverted)],
            # int8 nodes whose output a reverted Conv/Gemm/MatMul reads as float: ORT then runs them in float
            "float_with_reverted": [space.describe(g) for g in sorted(in_float - reverted - unfolded - requantized)],
            **({"float_despite_qdq": [space.describe(g) for g in sorted(unexpected)]} if unexpected else {}),
            **({"int8_despite_revert": [space.describe(g) for g in sorted(requantized)]} if requantized else {}),
            "groups": len(groups),
            "improvements": improvements,
            "calibration_method": best.method,
            "ranking": [r.to_dict() for r in result.ranking[:20]],
            "steps": result.steps,
            "trials": config.max_trials - budget.trials_left,
            # a search its clock stopped depends on how busy the machine was: the step cache does not keep it
            "stopped_by_clock": time.perf_counter() >= budget.deadline,
            "candidate_runs": scorer.runs,
            "op_types_quantized": sorted(op_types),
            "reduce_range": reduce_range,
            "decisions": {
                "op_types": f"search started from every op type ONNX Runtime quantizes ({family} graph; the family rule '{family_rule}' "
                            "only set the order in which op types without MACs were tried in float)"
                if quant.op_types is None else "given in the config",
                "reduce_range": reduce_range_decision(range_rule, reduce_range, source, op_types, quant),
                "calibration_method": f"{best.method}: the best on the search split of those tried ({', '.join(m for m in improvements['calibration'] if isinstance(improvements['calibration'][m], dict))})",
            },
            "size_ratio": round(artifact.size_bytes / model.size_bytes, 4),
            "parity_vs_fp32": {**held_out_score.parity_view(), "data": "held-out evaluation split"},
        },
        source=model,
        result=artifact,
        notes=notes,
    )
    return artifact


PASS = PassInfo(AccuracyAwareInt8Config, quantize_accuracy_aware, name="quantize_search", label="quantizing to int8 (accuracy-aware search)", kind="onnx", cacheable=True, precision="int8")
