"""``edgeport.validate``: measure an ONNX artifact against device profiles and give a verdict.

Measures on this machine. When it is not the profile's target (another architecture, or the
profile's providers are missing here), host figures are reported as such and the latency budget
is judged on a roofline estimate for the target, which the verdict names as its basis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeport.artifacts import OnnxArtifact, default_opset
from edgeport.budget_shapes import concrete_inputs, dims_from_data
from edgeport.data import DataSource, open_data
from edgeport.device_profiles import Profile, load_profile
from edgeport.errors import EXIT_BUDGET_FAILED, EXIT_OK, DataError, UsageError
from edgeport.html_report import render_html
from edgeport.npu_checks import coverage_from_refusal, qnn_context_check
from edgeport.outputs import OutputFolder, write_atomic
from edgeport.passes.context import NullProgress, Progress
from edgeport.passes.parity_check import accumulate_on_data
from edgeport.recipe import RegressionSection
from edgeport.regression import baseline_model, gate_model_file
from edgeport.regression_report import render_markdown as render_regression_markdown
from edgeport.runtimes import benchmark, coverage, ep_plugins, estimate
from edgeport.runtimes.graph_cost import graph_cost
from edgeport.runtimes.hostcpu import host_cpu
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.remote import RemoteDevice, RemoteTarget, device_cpu
from edgeport.runtimes.state_carry import StateCarry
from edgeport.runtimes.session import create_session, run_session
from edgeport.runtimes.target_match import claim_target
from edgeport.specs import example_array
from edgeport.validation_report import build_report, render_junit, render_markdown
from edgeport.verdict import FAIL, PASS, BudgetResult, judge, overall

# A simulated NPU (QNN HTP on x86) takes seconds per inference on a real model: its timings mean
# nothing for the device, so a few runs show it works, and parity takes this many samples at most.
SIMULATOR_RUNS = 3
SIMULATOR_PARITY_SAMPLES = 32


@dataclass
class ProfileVerdict:
    profile: Profile
    on_target: bool
    results: list[BudgetResult]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return overall(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "profile_path": self.profile.path,
            "on_target": self.on_target,
            "verdict": self.verdict,
            "budgets": [r.to_dict() for r in self.results],
            **self.details,
        }


@dataclass
class ValidationResult:
    model: Path
    verdicts: list[ProfileVerdict]
    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        gate = self.report.get("regression", {}).get("verdict", PASS)
        return EXIT_OK if all(v.verdict == PASS for v in self.verdicts) and gate == PASS else EXIT_BUDGET_FAILED


def validate(
    model: str | Path,
    *,
    profile: str | Path | Profile | Sequence[str | Path | Profile],
    reference: str | Path | None = None,
    data: str | Path | DataSource | None = None,
    runs: int = 100,
    time_limit_s: float = 60.0,
    dims: dict[str, int] | None = None,
    max_eval_samples: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    junit: str | Path | None = None,
    force: bool = False,
    stateful: Sequence[str] | StateCarry | None = None,
    remote: RemoteTarget | str | None = None,
    baseline: str | Path | None = None,
    regression: RegressionSection | None = None,
) -> ValidationResult:
    """Validate ``model`` against one profile or several (a matrix in one report). With
    ``out_dir``, writes validation.json and validation.md there (beside an export's files, which it
    never touches); with ``junit``, JUnit XML to that file. ``force`` replaces files of those names
    that an earlier validate did not write. ``stateful`` (``["state:stateN"]``) runs the data's
    feeds in order as one stream, each run taking the state the previous run returned. ``remote``
    (``ssh://user@host[:port]`` or a RemoteTarget) measures on that device over SSH instead of here.
    ``baseline`` (the last release's output folder) adds the regression gate (``regression``'s limits)."""
    if runs < 1:
        raise UsageError(f"--runs {runs} is below 1", fix="use at least 1 timed run (100 is the default)")
    # an unwritable or foreign folder fails before measuring
    output = OutputFolder(out_dir, "validate", force=force) if out_dir is not None else None
    try:
        carry = StateCarry.parse(stateful)
        device = RemoteDevice(RemoteTarget.parse(remote) if isinstance(remote, str) else remote) if remote is not None else None
        if device is not None and carry is not None:
            raise UsageError("--stateful and --remote together are not supported yet", fix="validate the stateful model here, or drop --stateful")
        if baseline is not None:
            if device is not None:
                raise UsageError("--baseline with --remote is not supported yet", fix="run the regression gate here, or drop --baseline")
            baseline_model(baseline)  # a missing baseline fails before measuring
        result = _validate(model, profile, reference, data, runs, time_limit_s, dims, max_eval_samples, seed, progress, carry, device)
        markdown = render_markdown(result.report)
        if baseline is not None:
            gate = gate_model_file(Path(model), baseline, regression or RegressionSection(), reference=Path(reference) if reference else None,
                                   data=data, profile=result.verdicts[0].profile, dims=dims or {}, runs=runs, time_limit_s=max(time_limit_s, 120.0),
                                   seed=seed, carry=carry, progress=progress)
            result.report["regression"] = gate.report
            result.report["verdict"] = FAIL if gate.verdict == FAIL else result.report["verdict"]
            markdown += "\n" + render_regression_markdown(gate.report)
        if output is not None:
            files = ["validation.json", "validation.md", "validation.html"]
            output.stage("validation.md").write_text(markdown)
            output.stage("validation.html").write_text(render_html(result.report, model_path=Path(model)))
            output.write_json("validation.json", {**result.report, **output.ledger(files)})
            output.commit(["validation.md", "validation.html", "validation.json"])
    except BaseException:
        if output is not None:
            output.discard()
        raise
    if junit is not None:
        write_atomic(junit, render_junit(result.report, result.report.get("regression")))
    return result


def _validate(model, profile, reference, data, runs, time_limit_s, dims, max_eval_samples, seed, progress,
              carry: StateCarry | None = None, device: RemoteDevice | None = None) -> ValidationResult:
    profiles = [load_profile(p) for p in (profile if isinstance(profile, (list, tuple)) else [profile])]
    if not profiles:
        raise UsageError("no profile given", fix="pass --profile NAME (see 'edgeport profiles list')")
    progress = progress or NullProgress()
    artifact = OnnxArtifact.from_file(model)
    create_session(artifact.path, optimization="disable")  # a model ORT cannot load fails here, exit 2
    ref = OnnxArtifact.from_file(reference) if reference else None
    if ref is not None:
        create_session(ref.path, optimization="disable")
        mismatch = artifact.io_mismatch(ref)
        if mismatch:
            raise DataError(f"the reference does not match the model: {mismatch}", fix="give the fp32 model this artifact was made from as --reference")
    source = open_data(data, role="evaluation", seed=seed)
    data_dims = dims_from_data(artifact.inputs, source)  # also: bad data fails here, before any measurement
    if carry is not None:
        carry.check([s.name for s in artifact.inputs], [s.name for s in artifact.outputs], str(artifact.path))
        if ref is None or source is None:
            raise UsageError("--stateful carries state through parity, which needs a --reference model and --data feeds",
                             fix="give --reference and --data, or drop --stateful")

    verdicts = []
    for prof in profiles:
        progress.note(f"validating against {prof.name} ...")
        verdicts.append(_validate_one(artifact, ref, source, prof, runs, time_limit_s, dims or {}, data_dims, max_eval_samples, seed, carry,
                                      device, show_progress=getattr(progress, "enabled", False)))
    report = build_report(artifact, ref, source, [v.to_dict() for v in verdicts])
    return ValidationResult(artifact.path, verdicts, report)


def _validate_one(artifact, ref, source, prof: Profile, runs, time_limit_s, dims, data_dims, max_eval_samples, seed,
                  carry: StateCarry | None = None, device: RemoteDevice | None = None, show_progress: bool = False) -> ProfileVerdict:
    import onnxruntime as ort

    # where it runs: this host, or the device over SSH (its own CPU facts and providers)
    cpu = device_cpu(device.facts) if device else host_cpu()
    shapes = concrete_inputs(artifact.inputs, prof, dims, data_dims)
    available = device.facts["providers"] if device else ep_plugins.available_providers(ort)
    wanted = list(prof.runtime.execution_providers)
    missing = [p for p in wanted if p not in available]
    claim = claim_target(prof, cpu, available)
    on_target = claim.on_target
    options = {prof.preferred_provider: dict(prof.runtime.provider_options)} if prof.runtime.provider_options else {}
    simulator = prof.preferred_provider not in missing and ep_plugins.simulated(prof.preferred_provider, prof.runtime.provider_options, cpu.arch)
    details: dict[str, Any] = {
        "host": {"arch": cpu.arch, "cpu": cpu.model_name, "cores": cpu.cores, "providers_available": available,
                 **({"remote": device.target.describe(), "onnxruntime": device.facts["onnxruntime"]} if device else {})},
        "target": claim.to_dict(),
        "input_shapes": {s.name: list(s.shape) for s in shapes},
        "providers": {"requested": wanted, "missing_here": missing, **({"options": options} if options else {})},
    }
    if simulator:
        details["simulator"] = (f"{prof.preferred_provider} runs on Qualcomm's HTP simulator on an {cpu.arch} host: coverage, "
                                "numerics and compilation are the NPU's; latency is the estimate's, never the simulator's timing")
    if missing and not prof.runtime.allow_cpu_fallback:
        providers = None
        details["providers"]["used"] = []
        details["providers"]["note"] = f"{', '.join(missing)} not available here and the profile forbids CPU fallback: nothing runs on this host"
    else:
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        if "CPUExecutionProvider" not in providers and prof.runtime.allow_cpu_fallback:
            providers.append("CPUExecutionProvider")
        details["providers"]["used"] = providers
        if missing:
            details["providers"]["note"] = f"{', '.join(missing)} not available here: measured on {', '.join(providers)} (the profile allows CPU fallback)"

    measurement, refused, threads, refusal_coverage = None, None, None, None
    if providers is not None:
        threads = prof.runtime.intra_op_threads
        if threads and not on_target:
            threads = min(threads, cpu.cores)
        request = benchmark.worker_request(
            artifact.path, providers, shapes, threads=threads, runs=min(runs, SIMULATOR_RUNS) if simulator else runs,
            warmup=0 if simulator else 10, time_limit_s=time_limit_s, coverage=True,
            cpu_mem_arena=prof.runtime.enable_cpu_mem_arena, mem_pattern=prof.runtime.enable_mem_pattern,
            cpu_fallback=prof.runtime.allow_cpu_fallback, seed=seed, provider_options=options,
            compiled_context=providers[0] in ep_plugins.PLUGINS,
        )
        measurement = device.measure(artifact.device_files(), request) if device else \
            benchmark.run_worker(artifact.path, providers, request, show_progress=show_progress)
        if "refused" in measurement:
            details["providers"]["note"] = measurement["refused"]
            refused = BudgetResult("runs_without_cpu_fallback", FAIL, None, None, "", "ONNX Runtime session", measurement["refused"])
            refusal_coverage = coverage_from_refusal(artifact.onnx_view(), measurement, prof.preferred_provider)
            measurement, providers = None, None
        else:
            details["measurement"] = {"kind": "target" if on_target else "host", "threads": threads, **measurement,
                                      **({"remote": device.target.describe()} if device else {})}
    graph = artifact.onnx_view()  # the ONNX graph for static analysis (an .ort file has none)
    preferred = prof.preferred_provider
    if measurement is not None and preferred in measurement["providers_used"]:
        cover = measurement.get("coverage")
    elif refusal_coverage is not None:
        cover = refusal_coverage
    else:
        cover = coverage.static_coverage(str(graph), preferred, {s.name: s.shape for s in shapes}) if graph is not None else None
    details["coverage"] = cover
    target_estimate = None
    if graph is not None:
        cost = graph_cost(str(graph), shapes)
        # an accelerator leaves some op types to the CPU: price those at the CPU's peaks where the profile gives them
        # the checker names ops "domain:OpType" (ai.onnx:Erf); the graph's nodes carry the op type
        cpu_ops = frozenset(op.rsplit(":", 1)[-1] for op in (cover or {}).get("unsupported_ops", ())) if prof.hardware.accelerator else frozenset()
        target_estimate = estimate.estimate_latency_ms(cost, estimate.rates_for(prof.hardware, prof.measured),
                                                       estimate.cpu_rates_for(prof.hardware), cpu_ops)
        if cpu_ops and prof.hardware.cpu_peak_gops_fp32 is None:
            target_estimate.setdefault("notes", []).append(
                f"{', '.join(sorted(cpu_ops))} fall back to the CPU, priced at the accelerator's rates: the profile gives no cpu_peak_gops_fp32")
        details["estimate"] = {"kind": "estimate", "graph": cost.to_dict(), **target_estimate}

    parity_samples = min(max_eval_samples, SIMULATOR_PARITY_SAMPLES) if simulator else max_eval_samples
    parity = _parity(artifact, ref, source, providers, shapes, parity_samples, seed, carry, device, threads, options,
                     prof.runtime.allow_cpu_fallback) if ref is not None and providers else None
    if parity is not None and simulator:
        parity["data"] += f" (at most {parity_samples} samples on the simulator)"
    details["parity"] = parity

    results = _judge(prof, artifact, on_target, measurement, target_estimate, cover, parity, providers, ref, source,
                     device.target.describe() if device else None, simulator, refused.detail if refused else None)
    results += [_opset_check(graph, prof), _format_check(artifact, prof), refused]
    return ProfileVerdict(prof, on_target, [r for r in results if r is not None], details)


def _judge(prof, artifact, on_target, measurement, target_estimate, cover, parity, providers, ref, source,
           remote: str | None = None, simulator: bool = False, refused_reason: str | None = None) -> list[BudgetResult | None]:
    budgets = prof.budgets
    where = f" (remote host {remote})" if remote else ""
    host_basis = f"measured on target{where}" if on_target else f"measured on {'the remote host' + where if remote else 'this host'} (not the target)"
    if simulator:
        host_basis = f"measured on this host running {prof.preferred_provider}'s HTP simulator (not the device)"
    if on_target and measurement is not None:
        latency = judge("latency_p95_ms", measurement["latency_ms"]["p95"], budgets.latency_p95_ms, basis=host_basis)
    elif target_estimate is not None and "refused" in target_estimate:
        latency = judge("latency_p95_ms", None, budgets.latency_p95_ms,
                        skip_reason=f"no measurement on the target, and no estimate: {target_estimate['refused']}")
    elif target_estimate is not None:
        latency = judge("latency_p95_ms", target_estimate["latency_ms"], budgets.latency_p95_ms,
                        basis=f"estimate for target (per-node roofline; {estimate.band_text(target_estimate)})")
    else:
        latency = judge("latency_p95_ms", None, budgets.latency_p95_ms,
                        skip_reason="not on the target, and an .ort file without its .onnx beside it cannot be estimated")
    memory = judge("peak_memory_mb", measurement["memory"]["peak_above_baseline_mb"] if measurement and not simulator else None,
                   budgets.peak_memory_mb, basis=host_basis,
                   skip_reason="the simulator's host memory is not the device's (compile memory is in the report)" if simulator
                   else "no session could run on this host")
    size = judge("model_size_mb", artifact.size_bytes / 2**20, budgets.model_size_mb, basis="file size (external data included)")
    cover_basis = cover["source"] if cover else ""
    coverage_result = judge("provider_coverage_min", cover["preferred_share"] if cover else None, budgets.provider_coverage_min,
                            basis=cover_basis, skip_reason=f"{prof.preferred_provider} refused the model without naming nodes ({refused_reason})"
                            if refused_reason else f"{prof.preferred_provider} is not here and has no static checker")
    if coverage_result is not None and cover and cover.get("refused_nodes"):
        coverage_result.detail = "not taken: " + "; ".join(
            f"{n['node']} ({n['op_type']}): {n['reason'] or 'no reason logged'}" for n in cover["refused_nodes"][:5]) \
            + (f"; and {len(cover['refused_nodes']) - 5} more" if len(cover["refused_nodes"]) > 5 else "")
    no_parity = "no --reference model given" if ref is None else "no session could run on this host"
    p = parity or {}
    pb = budgets.parity
    parity_basis = f"measured on {'remote host ' + remote if remote else 'this host'} ({', '.join(providers or [])}) vs reference on CPU here"
    if simulator:
        parity_basis = f"measured on the HTP simulator ({prof.preferred_provider}, the NPU's fixed-point arithmetic) vs reference on CPU here"
    results = [
        latency, memory, size, coverage_result,
        _agreement(p, pb.top1_agreement_min, parity_basis, no_parity),
        judge("parity.cosine_min", p.get("cosine_min"), pb.cosine_min, basis=parity_basis,
              skip_reason=no_parity if not p else "no float output to compare (integer outputs are judged by exact match)"),
        judge("parity.sqnr_db_min", p.get("sqnr_db"), pb.sqnr_db_min, basis=parity_basis,
              skip_reason=no_parity if not p else "no float output with signal to compare"),
        judge("parity.max_abs_diff_max", p.get("max_abs_diff"), pb.max_abs_diff_max, basis=parity_basis, skip_reason=no_parity),
        judge("accuracy_drop_max", p.get("accuracy_drop"), budgets.accuracy_drop_max, basis=parity_basis,
              skip_reason=no_parity if not p else "evaluation data has no labels" if source is not None else "no --data with labels given"),
        _finite_outputs(p, parity_basis),
    ]
    return results


def _agreement(parity: dict, limit: float | None, basis: str, no_parity: str) -> BudgetResult:
    """Top-1 agreement of class-score outputs; where there are none but integer outputs (ids,
    masks), their exact match stands in: both say how often the decision is the same."""
    top1, exact = parity.get("top1_agreement"), parity.get("exact_match")
    if top1 is None and exact is not None:
        return judge("parity.top1_agreement_min", exact, limit, basis=f"{basis}; integer outputs: exact match")
    if top1 is not None and exact is not None:
        return judge("parity.top1_agreement_min", min(top1, exact), limit, basis=f"{basis}; the lower of top-1 and integer outputs' exact match")
    return judge("parity.top1_agreement_min", top1, limit, basis=basis,
                 skip_reason=no_parity if not parity else "no output is class scores or integer decisions")


def _finite_outputs(parity: dict, basis: str) -> BudgetResult | None:
    """Any NaN or Inf in an output fails, whatever the budgets: no metric of such outputs means anything."""
    bad = {side: parity.get(f"non_finite_{side}") or 0 for side in ("candidate", "reference")}
    if not any(bad.values()):
        return None
    return BudgetResult("parity.non_finite_outputs_max", FAIL, bad["candidate"] + bad["reference"], 0, "", basis,
                        f"outputs with NaN or Inf: {bad['candidate']} from the model, {bad['reference']} from the reference")


def _opset_check(graph: Path | None, prof: Profile) -> BudgetResult:
    if graph is None:
        return BudgetResult("opset_supported", "skipped", basis="model file", detail="an .ort file does not expose its opset here")
    opset = default_opset(graph)
    low, high = prof.runtime.opset_min, prof.runtime.opset_max
    ok = low <= opset <= high
    return BudgetResult("opset_supported", PASS if ok else FAIL, opset, None, "", "model file",
                        f"opset {opset} {'within' if ok else 'outside'} the target's {low}..{high}")


def _format_check(artifact: OnnxArtifact, prof: Profile) -> BudgetResult | None:
    """A target that loads only ORT format (mobile and minimal builds) needs the .ort file, and one
    that loads a precompiled QNN context needs model_ctx.onnx; full builds load either format, so an
    "onnx" target sets no check."""
    if prof.runtime.model_format == "qnn-context":
        return qnn_context_check(artifact, prof)
    if prof.runtime.model_format != "ort":
        return None
    ort_file = artifact.path if artifact.is_ort_format else artifact.path.with_suffix(".ort")
    ok = ort_file.is_file()
    detail = f"{ort_file.name} present" if ok else f"the target loads ORT format: no {ort_file.name} beside the model (edgeport export --profile {prof.name} writes it)"
    return BudgetResult("model_format", PASS if ok else FAIL, None, None, "", "model file", detail)


def _parity(artifact, ref, source, providers, shapes, max_samples, seed, carry: StateCarry | None = None,
            device: RemoteDevice | None = None, threads: int | None = None, options: dict[str, dict[str, str]] | None = None,
            cpu_fallback: bool = True) -> dict[str, Any]:
    reference = create_session(ref.path)
    acc = ParityAccumulator(names=[o.name for o in reference.get_outputs()], class_outputs=model_class_outputs(ref.path))
    if device is not None:  # the candidate runs on the device, the reference here: same feeds, in order
        if source is not None:
            batches = list(source.batches(artifact.inputs, batch_size=8, max_samples=max_samples))
            feeds, labels, kind = [b.inputs for b in batches], [b.labels for b in batches], f"{source.role} data: {source.description}"
            if source.role == "calibration":
                kind += " (the samples the int8 ranges came from, so this parity is optimistic: pass --eval for held-out data)"
        else:
            rng = np.random.default_rng(seed)
            feeds, labels, kind = [{s.name: example_array(s, rng) for s in shapes} for _ in range(4)], [None] * 4, "synthetic inputs"
        for feed, label, outputs in zip(feeds, labels, device.outputs(artifact.device_files(), feeds, providers, threads, options, cpu_fallback)):
            acc.update(run_session(reference, feed), outputs, label)
        return {**acc.result(), "data": kind}
    cand = create_session(artifact.path, providers, provider_options=options, cpu_fallback=cpu_fallback)
    if source is not None:
        # Each model carries its own state: the candidate's rounding feeds back as it will on the device.
        how = accumulate_on_data(acc, reference, cand, source, artifact.inputs, carry=carry, max_samples=max_samples)
        kind = f"{source.role} data: {source.description}{how}"
        if source.role == "calibration":  # export --profile with only --calib
            kind += " (the samples the int8 ranges came from, so this parity is optimistic: pass --eval for held-out data)"
    else:
        rng = np.random.default_rng(seed)
        for _ in range(4):
            feed = {s.name: example_array(s, rng) for s in shapes}
            acc.update(run_session(reference, feed), run_session(cand, feed))
        kind = "synthetic inputs"
    return {**acc.result(), "data": kind}
