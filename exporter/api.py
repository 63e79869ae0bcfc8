"""The Python API: ``edgeport.export`` does everything ``edgeport export`` does."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from edgeport.artifacts import OnnxArtifact, TorchArtifact, file_sha256, save_artifact
from edgeport.data import DataSource, open_data
from edgeport.device_profiles import Profile, load_profile
from edgeport.errors import EXIT_BUDGET_FAILED, EXIT_OK, QuantizationError, UsageError
from edgeport.model_loading import load_model
from edgeport.precision_choice import choose_precision
from edgeport.outputs import OutputFolder
from edgeport.passes.context import NullProgress, PassContext, Progress, default_cache_dir
from edgeport.passes.export_onnx import OnnxExportConfig
from edgeport.passes.fix_shapes import FixShapesConfig
from edgeport.passes.fp16 import Fp16Config
from edgeport.passes.quantize_dynamic import DynamicInt8Config
from edgeport.passes.optimize import GraphOptimizeConfig
from edgeport.passes.opset_upgrade import OpsetUpgradeConfig
from edgeport.passes.fidelity import FidelityTarget
from edgeport.passes.quantize_search import AccuracyAwareInt8Config
from edgeport.passes.quantize_static import StaticInt8Config
from edgeport.passes import finishing_steps, pass_info, run_pass
from edgeport.passes.ort_format import OrtFormatConfig
from edgeport.passes.qnn_context import QnnContextConfig, QnnRefusal, context_files
from edgeport.pipeline import Pipeline
from edgeport.profile_defaults import fidelity_target, fixed_shapes_for, qnn_context_profile, quant_config_for, quant_target
from edgeport.html_report import render_html
from edgeport.recipe import RegressionSection
from edgeport.regression import baseline_model, gate_model_file
from edgeport.regression_report import render_markdown as render_regression_markdown
from edgeport.reports import build_export_report, render_markdown
from edgeport.runtimes.ep_plugins import QNN
from edgeport.runtimes.state_carry import StateCarry
from edgeport.specs import TensorSpec, parse_input_specs
from edgeport.budget_shapes import concrete_inputs, dims_from_data
from edgeport.validation import validate
from edgeport.validation_report import render_junit, render_markdown as render_validation_markdown
from edgeport.device_profiles.verdict import FAIL
from edgeport.versions import runtime_versions


# 2.0: "recipe" holds the resolved recipe (was: a description), "inputs" their hashes, "pipeline" the steps
MANIFEST_SCHEMA_VERSION = "2.0"
PRECISIONS = ("int8", "dynamic-int8", "fp16", "fp32", "auto")  # auto: int8 where the profile's target runs it faster


@dataclass
class ExportResult:
    out_dir: Path
    report: dict[str, Any]
    exit_code: int = EXIT_OK

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.onnx"


def export(
    model: Any,
    *,
    out_dir: str | Path,
    inputs: Sequence[TensorSpec | str] | None = None,
    weights: str | Path | None = None,
    calib: str | Path | DataSource | None = None,
    eval: str | Path | DataSource | None = None,  # noqa: A002 - mirrors the CLI's --eval
    quantize: bool = True,
    precision: str = "int8",
    trust_pickle: bool = False,
    export_config: OnnxExportConfig | None = None,
    optimize_config: GraphOptimizeConfig | None = None,
    quant_config: StaticInt8Config | AccuracyAwareInt8Config | None = None,
    search: bool = True,
    fidelity: FidelityTarget | None = None,
    max_fallback: float = 0.25,
    search_budget: str | float | None = None,
    recurrent: str = "auto",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    profile: str | Path | Profile | Sequence[str | Path | Profile] | None = None,
    runs: int = 100,
    torch_steps: Sequence[Any] = (),
    teacher: Any = None,
    teacher_weights: str | Path | None = None,
    train_data: str | Path | DataSource | None = None,
    use_cache: bool = True,
    force: bool = False,
    stateful: Sequence[str] | StateCarry | None = None,
    dims: dict[str, int] | None = None,
    provenance: dict[str, Any] | None = None,
    junit: bool = False,
    baseline: str | Path | None = None,
    regression: RegressionSection | None = None,
) -> ExportResult:
    """Export ``model`` (module, module:attr, TorchScript, .pt2 or .onnx) to ``out_dir``.

    Writes model.onnx in ``precision`` (int8: static, with calibration data; dynamic-int8: weights
    only; fp16; fp32, the same as ``quantize=False``), model.fp32.onnx beside it, report.json,
    report.md, report.html and manifest.json. Raises an EdgeportError subclass on bad input; nothing is left
    half-written. With ``profile``, int8 settings follow the (first) profile unless
    ``quant_config`` is given, and the artifact is validated against every profile;
    ``exit_code`` is then 1 if a budget failed. ``torch_steps`` (pruning, low-rank, distillation
    configs) run on the torch model before export; a distillation step learns from ``teacher``
    (default: the model as loaded) on ``train_data``. ONNX steps whose input, config, data and
    versions are unchanged come from the step cache unless ``use_cache`` is False.

    int8 is accuracy-aware unless ``search`` is False: every op is quantized, then the groups that
    cost the most fidelity revert to float until ``fidelity`` (default: from the profiles' parity
    budgets, else cosine >= 0.99 per sample) is met on held-out evaluation data, with at most
    ``max_fallback`` of the MACs in float and within ``search_budget`` ("300s" or "80t"). If no
    mix meets it, the best candidate is written and ``exit_code`` is 1. ``recurrent`` says which
    GRU/LSTM cells the search rewrites into int8 Scans: "auto" (steps large enough to gain),
    "always" or "never".

    ``stateful`` (``["state:stateN"]``) judges a streaming model as it runs: evaluation feeds run
    in order, each run taking the state the previous run returned.

    ``dims`` sizes symbolic dims (``{"sequence": 128}``) where a profile needs them: validation's
    shapes, and the fixed shapes of a target that compiles for one shape (``fixed_shapes``, NPUs).

    ``provenance`` (``{"recipe": ..., "inputs": ...}``, from ``edgeport.run``) goes into the
    manifest, so ``edgeport run OUTDIR/manifest.json`` can build the same files again. With
    ``junit`` and a profile, junit.xml holds each budget as a test case.

    ``baseline`` (the last release's output folder) runs the regression gate with ``regression``'s
    limits (default: RegressionSection's): both models measured now, side by side; a regression
    makes ``exit_code`` 1.
    """
    profiles = [load_profile(p) for p in (profile if isinstance(profile, (list, tuple)) else [profile])] if profile else []
    precision = precision if quantize else "fp32"
    npu = [p.name for p in profiles if p.preferred_provider == QNN]
    if npu and len(npu) < len(profiles):  # one artifact cannot follow QNN's quantization rules and the CPU's
        other = next(p.name for p in profiles if p.name not in npu)
        raise UsageError(f"profiles {npu[0]} (QNN) and {other} need differently quantized models",
                         fix="export once per kind of target, then check an artifact against the others with 'edgeport validate'")
    if precision not in PRECISIONS:
        raise UsageError(f"precision '{precision}' is unknown", fix=f"use one of {', '.join(PRECISIONS)}")
    specs = parse_input_specs(inputs)
    carry = StateCarry.parse(stateful)
    calibration = open_data(calib, role="calibration", seed=seed)
    evaluation = open_data(eval, role="evaluation", seed=seed + 1)
    if carry is not None and calibration is None and evaluation is None:
        raise UsageError("--stateful carries state through evaluation, which needs data", fix="give --eval (or --calib) feeds, or drop --stateful")
    if precision == "auto" and not profiles:
        raise UsageError("--precision auto decides by the target's int8 speed, which needs a device profile", fix="pass --profile P, or name a precision")
    if precision == "int8" and calibration is None:
        raise QuantizationError(
            "static int8 quantization needs calibration data",
            fix="pass --calib DATA (real samples), --calib random to accept unrepresentative ranges, or --precision dynamic-int8",
        )
    if baseline is not None:
        baseline_model(baseline)  # a missing baseline fails before any work
    output = OutputFolder(out_dir, "export", force=force)
    try:
        # before loading: a model built by a factory (a student to distill) draws its initial weights then
        seed_everything(seed, with_torch=not (isinstance(model, (str, Path)) and str(model).endswith(".onnx")))
        artifact = load_model(model, inputs=specs, weights=weights, trust_pickle=trust_pickle, example_data=calibration or evaluation)
        ctx = PassContext(
            work_dir=output.work,
            seed=seed,
            calibration=calibration,
            evaluation=evaluation,
            progress=progress or NullProgress(),
            cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
            quant_target=quant_target(profiles[0], profiles[1:]) if profiles else None,
        )
        if carry is not None and isinstance(artifact, OnnxArtifact):
            carry.check([s.name for s in artifact.inputs], [s.name for s in artifact.outputs], str(model))
            ctx.state_carry = carry
        seed_everything(seed)
        fp32_steps: list[Any] = []
        if isinstance(artifact, TorchArtifact):
            if torch_steps:
                ctx.training = open_data(train_data, role="training", seed=seed)
                ctx.teacher = load_model(teacher, inputs=artifact.inputs, weights=teacher_weights, trust_pickle=trust_pickle) if teacher is not None else TorchArtifact(copy.deepcopy(artifact.module), artifact.inputs, artifact.source)
            fp32_steps.extend(torch_steps)
            fp32_steps.append(export_config or OnnxExportConfig())
        elif torch_steps:
            raise UsageError("pruning and distillation steps need a torch model, not an .onnx file", fix="pass the PyTorch model, or drop the torch steps")
        if isinstance(artifact, OnnxArtifact) and precision in ("int8", "dynamic-int8", "auto"):
            fp32_steps.append(OpsetUpgradeConfig())  # files from other converters are often opset 11-12: int8 needs 13
        optimize_step = optimize_config or GraphOptimizeConfig()
        fixed_for = fixed_shapes_for(profiles)
        if fixed_for is None:
            fp32_steps.append(optimize_step)
            fp32 = Pipeline(fp32_steps, use_cache=use_cache).run(artifact, ctx)
        else:  # an NPU compiles one shape: fix it before optimizing, which then folds the shape arithmetic
            exported = Pipeline(fp32_steps, use_cache=use_cache).run(artifact, ctx)
            shapes = concrete_inputs(exported.inputs, fixed_for, dims or {}, dims_from_data(exported.inputs, evaluation or calibration))
            tail = [FixShapesConfig({s.name: tuple(s.shape) for s in shapes}), optimize_step]
            fp32 = Pipeline(tail, use_cache=use_cache).run(exported, ctx)
            fp32_steps.extend(tail)
        if carry is not None:  # a torch model's output names are known once it is exported
            carry.check([s.name for s in fp32.inputs], [s.name for s in fp32.outputs], "the exported model")
            ctx.state_carry = carry
        choice = None
        targets = [(p, concrete_inputs(fp32.inputs, p, dims or {}, dims_from_data(fp32.inputs, evaluation or calibration)))
                   for p in profiles] if precision in ("auto", "int8") else []
        if precision == "auto":
            choice = choose_precision(targets, fp32, calibration is not None)
            precision = choice.precision
            ctx.progress.note(f"precision auto: {choice.precision} ({choice.reason})")
        quant_config = _int8_config(quant_config, profiles, search, fidelity, max_fallback, search_budget, recurrent)
        if not use_cache:  # --no-cache means no cached calibration ranges either
            quant_config = _without_range_cache(quant_config)
        precision_step = {"int8": quant_config, "dynamic-int8": DynamicInt8Config(), "fp16": Fp16Config()}.get(precision)
        # what passes ask of a finished fp32 file (weight sharing: indices and codebooks where weights
        # are shared); a reduced precision stores the weights its own way
        finishing = finishing_steps() if precision_step is None else []
        unfinished = [f"{pass_info(f).name} not run: it applies to fp32 output, and {precision} stores weights its own way"
                      for f in finishing_steps() if any(pass_info(s).finishing is f for s in torch_steps)] if precision_step is not None else []
        int8_pipeline = Pipeline([precision_step] if precision_step else finishing, use_cache=use_cache)
        final = int8_pipeline.run(fp32, ctx)
        reduced = final is not fp32  # a second model (smaller precision, or packed weights) beside the fp32 one
        data_warnings = [d.warning for d in (calibration, evaluation) if d is not None and d.warning]
        names = _stage_artifacts(output, fp32, final if reduced else None)
        post_steps = [OrtFormatConfig()] if any(p.runtime.model_format == "ort" for p in profiles) else []
        for config in post_steps:  # mobile targets load ORT format: model.ort beside model.onnx
            shutil.copyfile(run_pass(final, config, ctx).path, output.stage("model.ort"))
            names.append("model.ort")
        compiled_for, context_warning = qnn_context_profile(profiles), None
        if compiled_for is not None and precision == "int8":  # the NPU's precompiled form, beside the QDQ model
            context_step = QnnContextConfig(dict(compiled_for.runtime.provider_options))
            try:
                compiled = run_pass(final, context_step, ctx)
            except QnnRefusal as exc:  # validation fails the format budget and names each node QNN refuses
                context_warning = f"no QNN context binary written for {compiled_for.name}: {exc}"
            else:
                for path in context_files(compiled):
                    shutil.copyfile(path, output.stage(path.name))
                    names.append(path.name)
                post_steps.append(context_step)
        report = build_export_report(
            source=str(model) if isinstance(model, (str, Path)) else type(model).__name__,
            inputs=[s.to_dict() for s in fp32.inputs],
            outputs=[s.to_dict() for s in fp32.outputs],
            data={"calibration": calibration.description if calibration else None, "evaluation": evaluation.description if evaluation else None,
                  "state_carried": carry.to_dict() if carry else None},
            steps=[r.to_dict() for r in ctx.records],
            artifacts={n: {"bytes": output.stage(n).stat().st_size, "sha256": file_sha256(output.stage(n))} for n in names},
            versions=runtime_versions(),
            warnings=data_warnings + [n for r in ctx.records for n in r.notes] + ([context_warning] if context_warning else []) + unfinished,
        )
        if choice is not None:
            report["precision"] = choice.to_dict()
        elif precision == "int8" and targets:  # asked for int8: say so where the target's int8 does not pay
            advice = choose_precision(targets, fp32, calibration is not None)
            if advice.precision != "int8":
                report["warnings"].append(f"int8 costs fidelity for no speed on this target ({advice.basis}): --precision auto would ship "
                                          f"{advice.precision} ({advice.reason})")
        exit_code = EXIT_OK
        search_record = next((r for r in ctx.records if "fidelity" in r.metrics), None)  # the step that judged a fidelity target
        if search_record is not None and not search_record.metrics["fidelity"]["met"]:
            exit_code = EXIT_BUDGET_FAILED  # the best candidate is still written, with the blockers named
        if profiles:
            validation = validate(
                output.stage(names[0]), profile=profiles, reference=output.stage("model.fp32.onnx") if reduced else None,
                data=evaluation or calibration, runs=runs, seed=seed, progress=ctx.progress, stateful=carry, dims=dims,
            )
            # Name the files where they will live, not where they were staged.
            validation.report["model"]["path"] = str(output.path / names[0])
            if validation.report["reference"]:
                validation.report["reference"] = str(output.path / "model.fp32.onnx")
            report["validation"] = {k: v for k, v in validation.report.items() if k in ("verdict", "profiles")}
            exit_code = max(exit_code, validation.exit_code)
        gate = None
        if baseline is not None:
            gate = gate_model_file(output.stage(names[0]), baseline, regression or RegressionSection(),
                                   reference=output.stage("model.fp32.onnx" if reduced else names[0]), data=evaluation or calibration,
                                   profile=profiles[0] if profiles else None, dims=dims or {}, runs=runs, time_limit_s=300.0, seed=seed,
                                   carry=carry, progress=ctx.progress)
            report["regression"] = gate.report
            exit_code = max(exit_code, EXIT_BUDGET_FAILED if gate.verdict == FAIL else EXIT_OK)
        output.write_json("report.json", report)
        markdown = render_markdown(report)
        if profiles:  # the validation section, as `edgeport validate` writes it
            markdown += "\n" + render_validation_markdown(validation.report).replace("# edgeport validation report", "# Validation", 1)
        if gate is not None:
            markdown += "\n" + render_regression_markdown(gate.report)
        output.stage("report.md").write_text(markdown)
        output.stage("report.html").write_text(render_html(report, model_path=output.stage(names[0])))
        files = [*names, "report.json", "report.md", "report.html", "manifest.json"]
        if junit and (profiles or gate is not None):
            output.stage("junit.xml").write_text(render_junit(validation.report if profiles else None, gate.report if gate else None))
            files.append("junit.xml")
        manifest = _manifest(report, Pipeline(fp32_steps + int8_pipeline.steps + post_steps), seed, specs, provenance)
        output.write_json("manifest.json", {**manifest, **output.ledger(files)})
        output.commit(files)
    except BaseException:
        output.discard()
        raise
    return ExportResult(output.path, report, exit_code)


def _int8_config(given: StaticInt8Config | AccuracyAwareInt8Config | None, profiles: list[Profile], search: bool,
                 fidelity: FidelityTarget | None, max_fallback: float, search_budget: str | float | None, recurrent: str = "auto") -> Any:
    if isinstance(given, AccuracyAwareInt8Config):
        return given
    base = given or (quant_config_for(profiles[0]) if profiles else StaticInt8Config())
    if not search:
        return base
    seconds, trials = parse_search_budget(search_budget)
    return AccuracyAwareInt8Config(quant=base, target=fidelity or fidelity_target(profiles), max_fallback=max_fallback,
                                   search_budget_s=seconds, max_trials=trials, recurrent=recurrent)


def _without_range_cache(config: StaticInt8Config | AccuracyAwareInt8Config) -> StaticInt8Config | AccuracyAwareInt8Config:
    if isinstance(config, AccuracyAwareInt8Config):
        return dataclasses.replace(config, quant=dataclasses.replace(config.quant, use_cache=False))
    return dataclasses.replace(config, use_cache=False)


def parse_search_budget(budget: str | float | None) -> tuple[float, int]:
    """"300" or "300s": seconds; "80t": trials. Returns (seconds, trials), the other unbounded-ish."""
    defaults = AccuracyAwareInt8Config()
    if budget is None:
        return defaults.search_budget_s, defaults.max_trials
    text = str(budget).strip().lower()
    try:
        if text.endswith("t"):
            trials = int(text[:-1])
            if trials >= 1:
                return 1e9, trials
        else:
            seconds = float(text[:-1] if text.endswith("s") else text)
            if seconds > 0:
                return seconds, 10**9
    except ValueError:
        pass
    raise UsageError(f"search budget '{budget}' is not seconds or trials", fix="write e.g. --search-budget 300s or --search-budget 80t")


def _stage_artifacts(output: OutputFolder, fp32: OnnxArtifact, int8: OnnxArtifact | None) -> list[str]:
    """The artifacts as shipped (see save_artifact), with their weight files if large."""
    pairs = [(fp32, "model.onnx")] if int8 is None else [(int8, "model.onnx"), (fp32, "model.fp32.onnx")]
    return [p.name for artifact, name in pairs for p in save_artifact(onnx.load(str(artifact.path)), output.stage(name))]


def _manifest(report: dict[str, Any], pipeline: Pipeline, seed: int, specs, provenance: dict[str, Any] | None) -> dict[str, Any]:
    described = {
        "model": report["model"]["source"],
        "inputs": [s.to_dict() for s in specs] if specs else report["model"]["inputs"],
        "data": report["data"],
    }
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created_utc": report["created_utc"],
        "artifacts": {n: {"sha256": a["sha256"], "bytes": a["bytes"]} for n, a in report["artifacts"].items()},
        "versions": report["versions"],
        "seed": seed,
        # the resolved recipe (every setting, absolute paths) where a recipe made this run, so
        # `edgeport run manifest.json` repeats it; else what the Python API was given
        "recipe": provenance["recipe"] if provenance else described,
        "inputs": provenance["inputs"] if provenance else {},
        "pipeline": pipeline.describe(),
    }


def seed_everything(seed: int, *, with_torch: bool = False) -> None:
    """Python's, numpy's and torch's generators; torch only when it is loaded already or
    ``with_torch`` asks for it (an .onnx export needs no torch, so it never imports it here)."""
    import random
    import sys

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if with_torch or "torch" in sys.modules:
        try:
            import torch
        except ImportError:  # loading the torch model says so, with the fix
            return
        torch.manual_seed(seed)
