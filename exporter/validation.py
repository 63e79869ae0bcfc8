"""``edgeport.validate``: an ONNX artifact against device profiles, as measure -> judge -> report.

``runtimes.measure`` takes the readings for each profile (on this machine or a remote device;
off target, the estimate for the target stands beside the host's figures), the budget table in
``device_profiles.budgets`` and its judge give the verdicts, and ``validation_report`` renders
them. This module loads the inputs, runs the three for each profile, and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from edgeport.artifacts import OnnxArtifact
from edgeport.budget_shapes import concrete_inputs, dims_from_data
from edgeport.data import DataSource, open_data
from edgeport.device_profiles import Profile, load_profile
from edgeport.device_profiles.verdict import FAIL, PASS, BudgetResult, judge_budgets, overall
from edgeport.errors import EXIT_BUDGET_FAILED, EXIT_OK, DataError, UsageError
from edgeport.html_report import render_html
from edgeport.outputs import OutputFolder, write_atomic
from edgeport.passes.context import NullProgress, Progress
from edgeport.recipe import RegressionSection
from edgeport.regression import baseline_model, gate_model_file
from edgeport.regression_report import render_markdown as render_regression_markdown
from edgeport.runtimes.measure import measure
from edgeport.runtimes.remote import RemoteDevice, RemoteTarget
from edgeport.runtimes.session import create_session
from edgeport.runtimes.state_carry import StateCarry
from edgeport.validation_report import build_report, render_junit, render_markdown


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
    """Measure for one profile, then judge: every budget by the table's rule, and the target's conditions as found."""
    measured = measure(artifact, ref, source, prof, concrete_inputs(artifact.inputs, prof, dims, data_dims), runs=runs,
                       time_limit_s=time_limit_s, max_eval_samples=max_eval_samples, seed=seed, carry=carry, device=device,
                       show_progress=show_progress)
    return ProfileVerdict(prof, measured.on_target, judge_budgets(prof, measured) + measured.checks, measured.details)
