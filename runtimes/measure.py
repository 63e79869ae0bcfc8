"""Measure an ONNX artifact for one device profile: where it runs, its latency and memory, the
preferred provider's coverage, the roofline estimate for the target, and parity with a reference.

Measures on this machine, or on a remote device over SSH. When that is not the profile's target
(another architecture, or the profile's providers are missing), the figures are readings of
another machine, and the estimate for the target stands beside them: each reading says what it
stands on, and the budget table's basis rule picks the one a budget is judged on. Nothing here
judges a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from edgeport.artifacts import OnnxArtifact
from edgeport.data import DataSource
from edgeport.device_profiles import Profile
from edgeport.device_profiles.budgets import ESTIMATE, HOST, STATIC, TARGET, Reading
from edgeport.device_profiles.verdict import BudgetResult
from edgeport.runtimes import benchmark, coverage, ep_plugins, estimate
from edgeport.runtimes.graph_cost import graph_cost
from edgeport.runtimes.hostcpu import HostCpu, host_cpu
from edgeport.runtimes.parity_run import measure_parity
from edgeport.runtimes.remote import RemoteDevice, device_cpu
from edgeport.runtimes.state_carry import StateCarry
from edgeport.runtimes.target_checks import finite_outputs_check, format_check, opset_check, refusal_check
from edgeport.runtimes.target_match import claim_target
from edgeport.specs import TensorSpec

# A simulated NPU (QNN HTP on x86) takes seconds per inference on a real model: its timings mean
# nothing for the device, so a few runs show it works, and parity takes this many samples at most.
SIMULATOR_RUNS = 3
SIMULATOR_PARITY_SAMPLES = 32

Readings = tuple[Reading, ...]


@dataclass
class Measurement:
    """What was measured for one profile. Each quantity a budget can be judged on holds its
    readings (a field per ``BudgetSpec.measures``); ``checks`` are the target's yes/no conditions;
    ``details`` are the figures behind them, as the report shows them."""

    on_target: bool
    latency_p95_ms: Readings = ()
    peak_memory_mb: Readings = ()
    model_size_mb: Readings = ()
    provider_coverage: Readings = ()
    decision_agreement: Readings = ()  # top-1 agreement of class scores, else integer outputs' exact match
    cosine_min: Readings = ()
    sqnr_db: Readings = ()
    max_abs_diff: Readings = ()
    accuracy_drop: Readings = ()
    checks: list[BudgetResult] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where a profile's model runs here: the providers used (None: none may run), and why."""

    cpu: HostCpu
    on_target: bool
    providers: list[str] | None
    options: dict[str, dict[str, str]]
    simulator: bool
    where: str  # the basis of a reading measured here
    details: dict[str, Any]


def measure(artifact: OnnxArtifact, ref: OnnxArtifact | None, source: DataSource | None, prof: Profile, shapes: Sequence[TensorSpec], *,
            runs: int, time_limit_s: float, max_eval_samples: int, seed: int, carry: StateCarry | None = None,
            device: RemoteDevice | None = None, show_progress: bool = False) -> Measurement:
    """Every reading the profile's budgets and conditions are judged on, taken at ``shapes``."""
    place = _placement(prof, shapes, device)
    timing, refused, refusal_cover = _time(artifact, prof, place, shapes, runs, time_limit_s, seed, device, show_progress)
    graph = artifact.onnx_view()  # the ONNX graph for static analysis (an .ort file has none)
    cover, cover_kind = _coverage(graph, prof, place, shapes, timing, refusal_cover)
    target_estimate = _estimate(graph, prof, shapes, cover)
    providers = None if refused else place.providers
    parity = None
    if ref is not None and providers:
        samples = min(max_eval_samples, SIMULATOR_PARITY_SAMPLES) if place.simulator else max_eval_samples
        parity = measure_parity(artifact, ref, source, providers, shapes, samples, seed, carry=carry, device=device,
                                threads=_threads(prof, place), options=place.options,
                                cpu_fallback=prof.runtime.allow_cpu_fallback)
        if place.simulator:
            parity["data"] += f" (at most {samples} samples on the simulator)"
    details = dict(place.details)
    if refused:
        details["providers"]["note"] = refused
    if timing is not None:
        details["measurement"] = timing
    details["coverage"] = cover
    if target_estimate is not None:
        details["estimate"] = target_estimate
    details["parity"] = parity
    parity_basis = _parity_basis(prof, place, providers, device)
    result = Measurement(place.on_target, **_session_readings(artifact, prof, place, timing, target_estimate, cover, cover_kind, refused),
                         **_parity_readings(parity, place.on_target, parity_basis, ref, source), details=details)
    result.checks = [c for c in (opset_check(graph, prof), format_check(artifact, prof), refusal_check(refused),
                                 finite_outputs_check(parity, parity_basis)) if c is not None]
    return result


def _placement(prof: Profile, shapes: Sequence[TensorSpec], device: RemoteDevice | None) -> Placement:
    import onnxruntime as ort

    cpu = device_cpu(device.facts) if device else host_cpu()  # the device's own CPU facts and providers when remote
    available = device.facts["providers"] if device else ep_plugins.available_providers(ort)
    wanted = list(prof.runtime.execution_providers)
    missing = [p for p in wanted if p not in available]
    claim = claim_target(prof, cpu, available)
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
    remote = f" (remote host {device.target.describe()})" if device else ""
    where = f"measured on target{remote}" if claim.on_target else \
        f"measured on {'the remote host' + remote if device else 'this host'} (not the target)"
    if simulator:
        where = f"measured on this host running {prof.preferred_provider}'s HTP simulator (not the device)"
    return Placement(cpu, claim.on_target, providers, options, simulator, where, details)


def _threads(prof: Profile, place: Placement) -> int | None:
    threads = prof.runtime.intra_op_threads
    return min(threads, place.cpu.cores) if threads and not place.on_target else threads


def _time(artifact, prof: Profile, place: Placement, shapes, runs, time_limit_s, seed, device, show_progress):
    """The benchmark worker's figures (latency, memory, coverage by the session's placement), or the
    provider's refusal when the profile forbids CPU fallback and it would not take the model."""
    if place.providers is None:
        return None, None, None
    threads = _threads(prof, place)
    request = benchmark.worker_request(
        artifact.path, place.providers, shapes, threads=threads, runs=min(runs, SIMULATOR_RUNS) if place.simulator else runs,
        warmup=0 if place.simulator else 10, time_limit_s=time_limit_s, coverage=True,
        cpu_mem_arena=prof.runtime.enable_cpu_mem_arena, mem_pattern=prof.runtime.enable_mem_pattern,
        cpu_fallback=prof.runtime.allow_cpu_fallback, seed=seed, provider_options=place.options,
        compiled_context=place.providers[0] in ep_plugins.PLUGINS,
    )
    timing = device.measure(artifact.device_files(), request) if device else \
        benchmark.run_worker(artifact.path, place.providers, request, show_progress=show_progress)
    if "refused" in timing:
        return None, timing["refused"], coverage.coverage_from_refusal(artifact.onnx_view(), timing, prof.preferred_provider)
    return {"kind": "target" if place.on_target else "host", "threads": threads, **timing,
            **({"remote": device.target.describe()} if device else {})}, None, None


def _coverage(graph, prof: Profile, place: Placement, shapes, timing, refusal_cover) -> tuple[dict[str, Any] | None, str]:
    """The preferred provider's share of nodes, and what it stands on: the session's placement or
    the provider's refusals where it ran here, else ONNX Runtime's static checker."""
    measured = TARGET if place.on_target else HOST
    if timing is not None and prof.preferred_provider in timing["providers_used"]:
        return timing.get("coverage"), measured
    if refusal_cover is not None:
        return refusal_cover, measured
    if graph is None:
        return None, STATIC
    return coverage.static_coverage(str(graph), prof.preferred_provider, {s.name: s.shape for s in shapes}), STATIC


def _estimate(graph, prof: Profile, shapes, cover) -> dict[str, Any] | None:
    if graph is None:
        return None
    cost = graph_cost(str(graph), shapes)
    # an accelerator leaves some op types to the CPU: price those at the CPU's peaks where the profile gives them
    # the checker names ops "domain:OpType" (ai.onnx:Erf); the graph's nodes carry the op type
    cpu_ops = frozenset(op.rsplit(":", 1)[-1] for op in (cover or {}).get("unsupported_ops", ())) if prof.hardware.accelerator else frozenset()
    target_estimate = estimate.estimate_latency_ms(cost, estimate.rates_for(prof.hardware, prof.measured),
                                                   estimate.cpu_rates_for(prof.hardware), cpu_ops)
    if cpu_ops and prof.hardware.cpu_peak_gops_fp32 is None:
        target_estimate.setdefault("notes", []).append(
            f"{', '.join(sorted(cpu_ops))} fall back to the CPU, priced at the accelerator's rates: the profile gives no cpu_peak_gops_fp32")
    return {"kind": "estimate", "graph": cost.to_dict(), **target_estimate}


def _session_readings(artifact, prof: Profile, place: Placement, timing, target_estimate, cover, cover_kind: str,
                      refused: str | None) -> dict[str, Readings]:
    measured = TARGET if place.on_target else HOST
    latency = [Reading(timing["latency_ms"]["p95"], measured, place.where)] if timing else []
    if target_estimate is None:
        latency.append(Reading(None, ESTIMATE, missing="not on the target, and an .ort file without its .onnx beside it cannot be estimated"))
    elif "refused" in target_estimate:
        latency.append(Reading(None, ESTIMATE, missing=f"no measurement on the target, and no estimate: {target_estimate['refused']}"))
    else:
        latency.append(Reading(target_estimate["latency_ms"], ESTIMATE,
                               f"estimate for target (per-node roofline; {estimate.band_text(target_estimate)})"))
    if timing and not place.simulator:
        memory = Reading(timing["memory"]["peak_above_baseline_mb"], measured, place.where)
    else:
        memory = Reading(None, measured, place.where, missing="the simulator's host memory is not the device's (compile memory is in the report)"
                         if place.simulator else "no session could run on this host")
    return {"latency_p95_ms": tuple(latency), "peak_memory_mb": (memory,),
            "model_size_mb": (Reading(artifact.size_bytes / 2**20, STATIC, "file size (external data included)"),),
            "provider_coverage": (_coverage_reading(prof, cover, cover_kind, refused),)}


def _coverage_reading(prof: Profile, cover, kind: str, refused: str | None) -> Reading:
    if not cover or cover.get("preferred_share") is None:
        return Reading(None, STATIC, missing=f"{prof.preferred_provider} refused the model without naming nodes ({refused})"
                       if refused else f"{prof.preferred_provider} is not here and has no static checker")
    refused_nodes = cover.get("refused_nodes") or []
    detail = ("not taken: " + "; ".join(f"{n['node']} ({n['op_type']}): {n['reason'] or 'no reason logged'}" for n in refused_nodes[:5])
              + (f"; and {len(refused_nodes) - 5} more" if len(refused_nodes) > 5 else "")) if refused_nodes else ""
    return Reading(cover["preferred_share"], kind, cover["source"], detail=detail)


def _parity_basis(prof: Profile, place: Placement, providers, device: RemoteDevice | None) -> str:
    if place.simulator:
        return f"measured on the HTP simulator ({prof.preferred_provider}, the NPU's fixed-point arithmetic) vs reference on CPU here"
    where = "remote host " + device.target.describe() if device else "this host"
    return f"measured on {where} ({', '.join(providers or [])}) vs reference on CPU here"


def _parity_readings(parity, on_target: bool, basis: str, ref, source) -> dict[str, Readings]:
    kind = TARGET if on_target else HOST
    p = parity or {}
    no_parity = "no --reference model given" if ref is None else "no session could run on this host"

    def reading(key: str, missing_with_parity: str) -> Readings:
        return (Reading(p.get(key), kind, basis, missing=no_parity if not p else missing_with_parity),)

    no_labels = "evaluation data has no labels" if source is not None else "no --data with labels given"
    return {"decision_agreement": (_agreement(p, kind, basis, no_parity),),
            "cosine_min": reading("cosine_min", "no float output to compare (integer outputs are judged by exact match)"),
            "sqnr_db": reading("sqnr_db", "no float output with signal to compare"),
            "max_abs_diff": reading("max_abs_diff", no_parity),
            "accuracy_drop": reading("accuracy_drop", no_labels)}


def _agreement(parity: dict, kind: str, basis: str, no_parity: str) -> Reading:
    """Top-1 agreement of class-score outputs; where there are none but integer outputs (ids,
    masks), their exact match stands in: both say how often the decision is the same."""
    top1, exact = parity.get("top1_agreement"), parity.get("exact_match")
    if top1 is None and exact is not None:
        return Reading(exact, kind, f"{basis}; integer outputs: exact match")
    if top1 is not None and exact is not None:
        return Reading(min(top1, exact), kind, f"{basis}; the lower of top-1 and integer outputs' exact match")
    return Reading(top1, kind, basis, missing=no_parity if not parity else "no output is class scores or integer decisions")
