"""The regression gate: a new artifact against the last release's, both measured now, here.

Latency is timed in alternating rounds in one worker (runtimes.benchmark.interleaved, at least
MIN_ROUNDS), so the machine's drift lands on both models alike. A latency increase counts only as
far as it is sure: the judged figure is the low end of a 95% paired-bootstrap interval of the
percentile ratio, so the same model against itself passes on a noisy machine, and a model 30%
slower fails; a file with the very bytes of the baseline's is not timed at all (it cannot regress,
and timing it twice measures only the host). Memory is each model's peak in a fresh worker; an
increase under 1 MiB is allocator noise, not a regression. Accuracy (labelled data) and min cosine: both models against one
reference on the same data, cosine only when both releases came from the same fp32 model. The
baseline's files give only its model, size and provenance (which edgeport made it, where, when),
and the report says which figure came from where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.artifacts import OnnxArtifact
from edgeport.budget_shapes import concrete_inputs, dims_from_data
from edgeport.data import DataSource, open_data
from edgeport.device_profiles import Profile
from edgeport.errors import UsageError
from edgeport.passes.context import NullProgress, Progress
from edgeport.runtimes.parity_run import accumulate_on_data
from edgeport.recipe import RegressionSection
from edgeport.runtimes import benchmark, ep_plugins
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.session import create_session
from edgeport.runtimes.state_carry import StateCarry
from edgeport.specs import TensorSpec
from edgeport.device_profiles.verdict import FAIL, PASS, SKIPPED, BudgetResult, overall

MEMORY_NOISE_MB = 1.0
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95  # two-sided: the judged low end is the 2.5% quantile of the bootstrap
MIN_ROUNDS = 50  # fewer rounds make the bootstrap interval of a p95 too optimistic
MEASURED_NOW = "measured now, on this host, both models in the same run"


@dataclass
class RegressionResult:
    checks: list[BudgetResult]
    report: dict[str, Any]

    @property
    def verdict(self) -> str:
        return overall(self.checks)


def baseline_model(baseline: str | Path, like: Path | None = None) -> Path:
    """The model file of a baseline output folder (or a model file given directly): model.ort when
    the new model is an .ort file and the baseline has one, else model.onnx."""
    path = Path(baseline)
    if path.is_file() and path.suffix in (".onnx", ".ort"):
        return path
    if like is not None and like.suffix == ".ort" and (path / "model.ort").is_file():
        return path / "model.ort"
    model = path / "model.onnx"
    if not model.is_file():
        what = "does not exist" if not path.exists() else "holds no model.onnx"
        raise UsageError(f"baseline '{baseline}' {what}", fix="give the output folder of the last release (the one its export or run wrote)")
    return model


def compare_with_baseline(
    model: Path, baseline: str | Path, limits: RegressionSection, *, reference: Path | None, data: DataSource | None,
    inputs: list[TensorSpec], profile: Profile | None, runs: int = 100, time_limit_s: float = 300.0, seed: int = 0,
    carry: StateCarry | None = None, progress: Progress | None = None,
) -> RegressionResult:
    """Judge ``model`` against the baseline's model with ``limits``; ``inputs`` have concrete shapes."""
    progress = progress or NullProgress()
    base_path = baseline_model(baseline, like=model)
    new, old = OnnxArtifact.from_file(model), OnnxArtifact.from_file(base_path)
    mismatch = new.io_mismatch(old)
    if mismatch:
        raise UsageError(f"the baseline is not comparable: {mismatch}", fix="compare with a release of the same model interface")
    ref = _reference(new, old, reference, base_path)
    providers, threads, options = _providers(profile)
    same_bytes = new.sha256() == old.sha256()
    if same_bytes:  # one file timed twice can only differ by the host's noise, never regress
        times, memory = [[], []], [None, None]
        checks = [_identical(f"latency_p{q}_increase_max", getattr(limits, f"latency_p{q}_max_increase")) for q in (50, 95)]
        checks.append(_identical("peak_memory_increase_max", limits.peak_memory_max_increase))
    else:
        progress.note(f"regression gate: timing {model.name} and the baseline in alternating rounds")
        times = benchmark.interleaved([model, base_path], providers, inputs, threads=threads, runs=max(runs, MIN_ROUNDS), min_runs=MIN_ROUNDS,
                                      time_limit_s=time_limit_s, seed=seed, provider_options=options)
        memory = [benchmark.measure(path, providers, inputs, threads=threads, runs=5, coverage=False, seed=seed, provider_options=options)["memory"]
                  ["peak_above_baseline_mb"] for path in (model, base_path)]
        checks = [_latency_check(times, q, getattr(limits, f"latency_p{q}_max_increase")) for q in (50, 95)]
        checks.append(_memory_check(memory[0], memory[1], limits.peak_memory_max_increase))
    checks.append(_ratio_check("model_size_increase_max", new.size_bytes, old.size_bytes, limits.size_max_increase, " bytes",
                               "file sizes (external data included)"))
    parity = _parity_both(new, old, ref["path"], data, carry) if ref["path"] is not None and data is not None else None
    checks += _parity_checks(parity, limits, ref, data)
    report = {
        "baseline": {"path": str(Path(baseline).absolute()), "model": str(base_path), **_provenance(base_path.parent)},
        "verdict": overall(checks),
        "measured_now": ([] if same_bytes else ["latency p50/p95 (interleaved)", "peak memory"]) + ["min cosine to one reference and accuracy on labelled data"],
        "same_bytes_as_baseline": same_bytes,
        "from_baseline_files": ["model file and its size", "edgeport version, date and host of the baseline (its manifest and report)"],
        "host": {"providers": providers, "threads": threads, "runs": len(times[0])},
        "reference": {k: (str(v) if isinstance(v, Path) else v) for k, v in ref.items()},
        "data": data.description if data is not None else None,
        "latency_ms": None if same_bytes else {"new": _percentiles(times[0]), "baseline": _percentiles(times[1])},
        "peak_memory_mb": {"new": memory[0], "baseline": memory[1]},
        "bytes": {"new": new.size_bytes, "baseline": old.size_bytes},
        "parity": parity,
        "checks": [c.to_dict() for c in checks],
    }
    return RegressionResult(checks, report)


def gate_model_file(model: Path, baseline: str | Path, limits: RegressionSection, *, reference: Path | None, data: str | Path | DataSource | None,
                    profile: Profile | None, dims: dict[str, int], runs: int, time_limit_s: float, seed: int, carry: StateCarry | None,
                    progress: Progress | None) -> RegressionResult:
    """The gate for a model file as export and validate have it: its data opened, its shapes made
    concrete as the profile's budgets state them (batch 1 without a profile)."""
    inputs = OnnxArtifact.from_file(model).inputs
    source = open_data(data, role="evaluation", seed=seed)
    shapes = concrete_inputs(inputs, profile, dims, dims_from_data(inputs, source))
    return compare_with_baseline(model, baseline, limits, reference=reference or _sibling_fp32(model), data=source, inputs=shapes,
                                 profile=profile, runs=runs, time_limit_s=time_limit_s, seed=seed, carry=carry, progress=progress)


def _sibling_fp32(model: Path) -> Path | None:
    fp32 = model.parent / "model.fp32.onnx"
    return fp32 if fp32.is_file() and fp32 != model else None


def _reference(new: OnnxArtifact, old: OnnxArtifact, given: Path | None, base_path: Path) -> dict[str, Any]:
    """The one reference both models are scored against, and whether that is fair: the fp32 model the
    new release was made from, fair for cosine only when the baseline came from the same fp32 model
    (a retrained model is closer to its own fp32 model by construction). Accuracy needs labels only."""
    base_fp32 = _sibling_fp32(base_path) or (base_path if _release_precision(base_path.parent) == "fp32" else None)
    if given is None:
        return {"path": None, "same_fp32_as_baseline": None}
    ref = OnnxArtifact.from_file(given)
    for side in (new, old):
        mismatch = side.io_mismatch(ref)
        if mismatch:
            raise UsageError(f"the reference does not match both models: {mismatch}", fix="give the fp32 model the new release was made from")
    same = base_fp32 is not None and OnnxArtifact.from_file(base_fp32).sha256() == ref.sha256()
    return {"path": Path(given), "same_fp32_as_baseline": same, "baseline_fp32": base_fp32}


def _release_precision(folder: Path) -> str | None:
    try:
        return json.loads((folder / "report.json").read_text()).get("summary", {}).get("precision")
    except (OSError, ValueError, AttributeError):
        return None


def _providers(profile: Profile | None) -> tuple[list[str], int | None, dict[str, dict[str, str]] | None]:
    """The profile's providers where this host has them all, else the CPU: both models run alike either way."""
    import onnxruntime as ort

    if profile is not None and set(profile.runtime.execution_providers) <= set(ep_plugins.available_providers(ort)):
        options = {profile.preferred_provider: dict(profile.runtime.provider_options)} if profile.runtime.provider_options else None
        return list(profile.runtime.execution_providers), profile.runtime.intra_op_threads, options
    return ["CPUExecutionProvider"], profile.runtime.intra_op_threads if profile is not None else None, None


def _percentiles(times: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(times, 50)), 4), "p95": round(float(np.percentile(times, 95)), 4)}


def _latency_check(times: list[list[float]], q: int, limit: float) -> BudgetResult:
    """The increase of the q-th percentile, judged at the low end of its bootstrap interval."""
    new, old = np.asarray(times[0]), np.asarray(times[1])
    point = float(np.percentile(new, q) / np.percentile(old, q)) - 1
    rng = np.random.default_rng(0)
    rounds = rng.integers(0, len(new), size=(BOOTSTRAP_RESAMPLES, len(new)))  # paired: a round's two runs stay together
    ratios = np.percentile(new[rounds], q, axis=1) / np.percentile(old[rounds], q, axis=1) - 1
    low, high = (float(np.quantile(ratios, p)) for p in ((1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2))
    sure = max(low, 0.0)
    detail = (f"new p{q} {np.percentile(new, q):.4g} ms vs baseline {np.percentile(old, q):.4g} ms: {point:+.1%} "
              f"({CONFIDENCE:.0%} interval {low:+.1%} to {high:+.1%}; judged on the increase the interval is sure of)")
    return BudgetResult(f"latency_p{q}_increase_max", PASS if sure <= limit else FAIL, round(sure, 4), limit, "",
                        MEASURED_NOW + ", interleaved (idle threads sleep, so both run slower than alone)", detail)


def _identical(name: str, limit: float) -> BudgetResult:
    return BudgetResult(name, PASS, 0.0, limit, "", "the same bytes as the baseline's model", "nothing to time: the files are identical")


def _memory_check(new_mb: float, old_mb: float, limit: float) -> BudgetResult:
    increase = (new_mb - old_mb) / old_mb if old_mb > 0 else (float("inf") if new_mb > old_mb else 0.0)
    regressed = increase > limit and new_mb - old_mb > MEMORY_NOISE_MB
    detail = f"new {new_mb:.4g} MB vs baseline {old_mb:.4g} MB above the runtime's own ({increase:+.1%}; increases under {MEMORY_NOISE_MB:g} MB are noise)"
    judged = round(max(increase, 0.0), 4) if increase != float("inf") else None
    return BudgetResult("peak_memory_increase_max", FAIL if regressed else PASS, judged, limit, "",
                        MEASURED_NOW + ", each in a fresh worker", detail)


def _ratio_check(name: str, new: float, old: float, limit: float, unit: str, basis: str) -> BudgetResult:
    increase = new / old - 1 if old else 0.0
    detail = f"new {new:,.0f}{unit} vs baseline {old:,.0f}{unit} ({increase:+.1%})"
    return BudgetResult(name, PASS if increase <= limit else FAIL, round(max(increase, 0.0), 4), limit, "", basis, detail)


def _parity_both(new: OnnxArtifact, old: OnnxArtifact, reference: Path, data: DataSource | None, carry: StateCarry | None) -> dict[str, Any] | None:
    if data is None:
        return None
    ref = create_session(str(reference))
    results = {}
    for side, artifact in (("new", new), ("baseline", old)):
        acc = ParityAccumulator(names=[o.name for o in ref.get_outputs()], class_outputs=model_class_outputs(str(reference)))
        accumulate_on_data(acc, ref, create_session(str(artifact.path)), data, artifact.inputs, carry=carry, max_samples=1000)
        results[side] = acc.result()
    return results


def _parity_checks(parity: dict[str, Any] | None, limits: RegressionSection, ref: dict[str, Any], data: DataSource | None) -> list[BudgetResult]:
    basis = MEASURED_NOW + ", against one reference on the same data"
    if parity is None:
        why = ("no evaluation data to compare both models on" if ref["path"] is not None else
               "no reference model (the new release's model.fp32.onnx, or --reference)")
        return [BudgetResult("cosine_min_drop_max", SKIPPED, None, limits.cosine_max_drop, "", basis, why)]
    checks = []
    for name, key, limit in (("cosine_min_drop_max", "cosine_min", limits.cosine_max_drop), ("accuracy_drop_max", "candidate_accuracy", limits.accuracy_max_drop)):
        new, old = parity["new"].get(key), parity["baseline"].get(key)
        if key == "candidate_accuracy" and (new is None or old is None):
            continue  # no labels: nothing to say about accuracy
        if key == "cosine_min" and not ref["same_fp32_as_baseline"]:
            why = ("the baseline was made from another fp32 model (retrained or changed), and each release is closest to its own: "
                   "cosine to either favours one side; accuracy on labelled data is the fair comparison")
            checks.append(BudgetResult(name, SKIPPED, None, limit, "", basis, why))
            continue
        if new is None or old is None:
            checks.append(BudgetResult(name, SKIPPED, None, limit, "", basis, f"no {key} for one side"))
            continue
        drop = old - new
        detail = f"new {new:.4g} vs baseline {old:.4g} ({'a drop of ' + format(drop, '.4g') if drop > 0 else 'no drop'})"
        checks.append(BudgetResult(name, PASS if drop <= limit else FAIL, round(max(drop, 0.0), 6), limit, "", basis, detail))
    return checks


def _provenance(folder: Path) -> dict[str, Any]:
    """Who made the baseline, when and where, as its own files say (absent for a bare model file)."""
    facts: dict[str, Any] = {}
    for name in ("manifest.json", "report.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        facts.setdefault("edgeport", data.get("versions", {}).get("edgeport"))
        facts.setdefault("created_utc", data.get("created_utc"))
        for profile in (data.get("validation") or {}).get("profiles", []):
            facts.setdefault("validated_on", profile.get("host"))
    return {k: v for k, v in facts.items() if v is not None}
