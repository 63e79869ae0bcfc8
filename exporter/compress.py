"""``edgeport.distill`` and ``edgeport.prune``: compress a torch model, check it, and write
OUTDIR/model.pt2 (which ``edgeport export`` takes as its MODEL) plus report.json comparing the
new model with the original: parameters, MACs, ONNX latency and accuracy."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeport.api import seed_everything
from edgeport.artifacts import TorchArtifact
from edgeport.data import DataSource, open_data
from edgeport.errors import EXIT_BUDGET_FAILED, EXIT_OK, ExportError, UsageError, first_line
from edgeport.model_loading import load_model
from edgeport.outputs import OutputFolder
from edgeport.passes import prune_methods, run_pass, step_kinds
from edgeport.passes.context import NullProgress, PassContext, Progress, default_cache_dir
from edgeport.passes.distill import DistillConfig, distill as distill_pass
from edgeport.passes.distill_world import finish_distributed, is_main_process
from edgeport.passes.export_onnx import OnnxExportConfig, export_onnx
from edgeport.passes.lowrank import LowRankConfig
from edgeport.passes.prune import ChannelPruneConfig, MagnitudePruneConfig
from edgeport.passes.torch_stats import count_macs, count_params
from edgeport.passes.trace_sizes import export_dynamic_shapes, traceable_sizes
from edgeport.specs import TensorSpec, example_array, parse_input_specs
from edgeport.versions import runtime_versions



@dataclass
class CompressResult:
    out_dir: Path | None  # None on non-zero ranks of a distributed run, which write nothing
    report: dict[str, Any]
    model: Any
    exit_code: int = EXIT_OK


def distill(
    *, teacher: Any, student: Any, data: str | Path | DataSource, out_dir: str | Path, inputs: Sequence[str | TensorSpec] | None = None,
    teacher_weights: str | Path | None = None, student_weights: str | Path | None = None, val_data: str | Path | DataSource | None = None,
    eval_data: str | Path | DataSource | None = None, config: DistillConfig | None = None, trust_pickle: bool = False,
    cache_dir: str | Path | None = None, progress: Progress | None = None, force: bool = False, min_fidelity: float = 0.9,
) -> CompressResult:
    """Distill ``teacher`` into ``student`` on ``data`` (samples with optional labels). Fidelity to
    the teacher is measured on ``eval_data`` (else the training data); below ``min_fidelity`` (mean
    cosine) the result is still written, and the exit code is 1."""
    config = config or DistillConfig()
    seed_everything(config.seed, with_torch=True)  # before loading: a student built by a factory draws its initial weights now
    specs = parse_input_specs(inputs)
    train = open_data(data, role="training", seed=config.seed)
    if train is None:
        raise UsageError("distillation needs training data", fix="pass --data DATA")
    teacher_art = load_model(teacher, inputs=specs, weights=teacher_weights, trust_pickle=trust_pickle, example_data=train)
    student_art = load_model(student, inputs=teacher_art.inputs, weights=student_weights, trust_pickle=trust_pickle)
    _require_torch(teacher_art, "teacher")
    _require_torch(student_art, "student")
    validation = open_data(val_data, role="validation", seed=config.seed)
    evaluation = open_data(eval_data, role="evaluation", seed=config.seed)
    return _run(
        student_art, out_dir, kind="distill", reference=teacher_art, evaluation=evaluation, cache_dir=cache_dir, progress=progress, seed=config.seed,
        work=lambda ctx: distill_pass(student_art, config, teacher=teacher_art, data=train, ctx=ctx, val_data=validation), force=force,
        fidelity_data=evaluation or train, min_fidelity=min_fidelity,
    )


def prune(
    model: Any, *, method: str, ratio: float | None = None, out_dir: str | Path, inputs: Sequence[str | TensorSpec] | None = None,
    weights: str | Path | None = None, data: str | Path | DataSource | None = None, teacher: Any = None, teacher_weights: str | Path | None = None,
    steps: int = 1, recover: DistillConfig | None = None, round_to: int = 8, ignore: Sequence[str] = (), layers: Sequence[str] | None = None,
    energy: float = 0.9, eval_data: str | Path | DataSource | None = None, trust_pickle: bool = False, seed: int = 0,
    cache_dir: str | Path | None = None, progress: Progress | None = None, force: bool = False, min_fidelity: float = 0.9,
    method_options: dict[str, Any] | None = None,
) -> CompressResult:
    """Prune ``model`` (magnitude or channels) or factorize it (lowrank), or run any other
    ``prune:<method>`` pass the registry holds, configured by ``method_options`` (its config's
    fields). With ``data`` and ``recover``, channel pruning runs in ``steps`` rounds, each followed
    by distillation from the original (or ``teacher``) to win back accuracy."""
    methods = prune_methods()
    if method not in methods:
        raise UsageError(f"pruning method '{method}' is unknown", fix=f"use one of {', '.join(methods)}")
    if method in ("magnitude", "channels") and ratio is None:
        raise UsageError(f"--ratio is required for {method} pruning", fix="pass e.g. --ratio 0.5")
    if steps < 1:
        raise UsageError(f"--steps {steps} is below 1", fix="use 1 or more")
    seed_everything(seed, with_torch=True)
    specs = parse_input_specs(inputs)
    train = open_data(data, role="training", seed=seed)
    original = load_model(model, inputs=specs, weights=weights, trust_pickle=trust_pickle, example_data=train)
    _require_torch(original, "model")
    if layers is not None and method == "channels":
        raise UsageError("--layers applies to magnitude and lowrank methods", fix="use --ignore to keep layers whole in channel pruning")
    configs: list[Any]
    if method == "magnitude":
        configs = [MagnitudePruneConfig(ratio=ratio, layers=tuple(layers) if layers else None)]
    elif method == "lowrank":
        configs = [LowRankConfig(energy=energy, layers=tuple(layers) if layers else None)]
    elif method != "channels":
        configs = [step_kinds()[f"prune:{method}"](**{**({"layers": tuple(layers)} if layers else {}), **(method_options or {})})]
    else:
        per_step = 1 - (1 - ratio) ** (1 / steps)  # the kept share compounds over steps
        configs = [ChannelPruneConfig(ratio=round(per_step, 6), round_to=round_to, ignore=tuple(ignore)) for _ in range(steps)]
    if recover is not None and train is None:
        raise UsageError("recovery by distillation needs training data", fix="pass --data DATA, or --recover-epochs 0")
    # A pass that fine-tunes itself (weight sharing trains its shared values) takes the recovery
    # epochs: a plain distillation after it would train every weight apart again.
    self_recovering = recover is not None and all("fine_tune_epochs" in {f.name for f in dataclasses.fields(c)} for c in configs)
    if self_recovering:
        configs = [dataclasses.replace(c, fine_tune_epochs=recover.epochs) for c in configs]
    teacher_art = original if teacher is None else load_model(teacher, inputs=original.inputs, weights=teacher_weights, trust_pickle=trust_pickle)
    evaluation = open_data(eval_data, role="evaluation", seed=seed)

    def work(ctx: PassContext) -> TorchArtifact:
        current = original
        ctx.teacher, ctx.training, ctx.recovery = teacher_art, train, recover
        for config in configs:
            current = run_pass(current, config, ctx)
            if recover is not None and not self_recovering:
                current = distill_pass(current, recover, teacher=teacher_art, data=train, ctx=ctx)
        return current

    return _run(original, out_dir, kind=f"prune_{method}", reference=teacher_art if teacher is not None else original, evaluation=evaluation,
                cache_dir=cache_dir, progress=progress, seed=seed, work=work, force=force, fidelity_data=evaluation or train,
                min_fidelity=min_fidelity)


def _run(start: TorchArtifact, out_dir, *, kind, reference: TorchArtifact, evaluation, cache_dir, progress, seed, work, force: bool = False,
         fidelity_data: DataSource | None = None, min_fidelity: float = 0.9) -> CompressResult:
    # Rank from torchrun's environment: the process group only starts inside training.
    output = OutputFolder(out_dir, "compress", force=force) if is_main_process() else None
    work_dir = output.work if output else Path(_private_tmp())
    # Checkpoints sit beside OUTDIR, not in it: OUTDIR only ever holds finished artifacts, and an
    # interrupted run leaves its checkpoints for --resume.
    checkpoints = Path(out_dir).absolute().parent / f".{Path(out_dir).name}.edgeport-checkpoints"
    try:
        ctx = PassContext(work_dir=work_dir, seed=seed, progress=progress or NullProgress(),
                          cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), checkpoint_dir=checkpoints)
        result = work(ctx)
        finish_distributed()
        if output is None:
            shutil.rmtree(work_dir, ignore_errors=True)
            return CompressResult(None, {}, result.module)
        comparison = {"reference": _describe(reference, evaluation, ctx, "reference"), "result": _describe(result, evaluation, ctx, "result")}
        fidelity = fidelity_to_reference(reference, result, fidelity_data, seed, min_fidelity)
        _save_program(result, output.stage("model.pt2"))
        report = {
            "schema_version": "1.0", "kind": kind,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": runtime_versions(), "model": {"source": start.source, "inputs": [s.to_dict() for s in start.inputs]},
            "steps": [r.to_dict() for r in ctx.records], "comparison": comparison,
            "ratios": _ratios(comparison),
            "fidelity_to_reference": fidelity,
            **output.ledger(["model.pt2", "report.json"]),
        }
        output.write_json("report.json", report)
        output.commit(["model.pt2", "report.json"])
        shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing left to resume
    except BaseException:
        if output:
            output.discard()
        raise
    return CompressResult(output.path, report, result.module, EXIT_OK if fidelity["met"] else EXIT_BUDGET_FAILED)


def fidelity_to_reference(reference: TorchArtifact, result: TorchArtifact, data: DataSource | None, seed: int, floor: float) -> dict[str, Any]:
    """The compressed model's outputs against the reference's (the teacher, or the model before
    pruning), with or without labels: cosine, SQNR, and top-1 agreement for class scores. A mean
    cosine under ``floor``, or any NaN, is a collapse: reported, written for inspection, exit 1."""
    import torch

    from edgeport.runtimes.parity import ParityAccumulator

    def outputs(module: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in reference.inputs])
        return [o.detach().float().numpy() for o in (out if isinstance(out, (tuple, list)) else [out]) if hasattr(o, "detach")]

    accumulator = ParityAccumulator()
    if data is not None:
        for batch in data.batches(reference.inputs, batch_size=64, max_samples=512):
            accumulator.update(outputs(reference.module.eval(), batch.inputs), outputs(result.module.eval(), batch.inputs))
        source = f"{data.role} data: {data.description}"
    else:
        rng = np.random.default_rng(seed)
        sizes = traceable_sizes(reference, rng)
        for _ in range(4):
            feed = {s.name: example_array(s, rng, sizes) for s in reference.inputs}
            accumulator.update(outputs(reference.module.eval(), feed), outputs(result.module.eval(), feed))
        source = "synthetic inputs (no --eval or --data given)"
    measured = accumulator.result()
    cosine = measured.get("cosine_mean")
    met = cosine is not None and cosine >= floor and not measured["non_finite_candidate"]
    return {**measured, "data": source, "floor_cosine_mean": floor, "met": met,
            **({} if met else {"verdict": f"the outputs collapsed: mean cosine to the reference {cosine} < {floor}; the model is written "
                                          "for inspection, not for use (more recovery epochs, a lower ratio, or --ignore the layers that matter)"})}


def _describe(artifact: TorchArtifact, evaluation: DataSource | None, ctx: PassContext, name: str) -> dict[str, Any]:
    """Parameters, MACs at batch 1, ONNX Runtime latency (1 thread, p50) and accuracy when labelled."""
    from edgeport.runtimes.benchmark import measure

    out: dict[str, Any] = {"params": count_params(artifact.module), "macs": count_macs(artifact.module, artifact.inputs)}
    onnx_dir = ctx.work_dir / f"compare-{name}"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    onnx_artifact = export_onnx(artifact, OnnxExportConfig(), ctx=PassContext(work_dir=onnx_dir, seed=ctx.seed))
    sizes = traceable_sizes(artifact, np.random.default_rng(ctx.seed))
    sizes.update({s.shape[0]: 1 for s in artifact.inputs if s.rank and isinstance(s.shape[0], str)})  # latency at batch 1
    shapes = [TensorSpec(s.name, s.concrete(sizes), s.dtype) for s in artifact.inputs]
    timing = measure(onnx_artifact.path, ["CPUExecutionProvider"], shapes, threads=1, runs=100, coverage=False)
    out["onnx_latency_ms_p50_1thread"] = timing["latency_ms"]["p50"]
    if evaluation is not None:
        out["accuracy"] = _accuracy(artifact, evaluation)
    return out


def _accuracy(artifact: TorchArtifact, data: DataSource) -> float | None:
    import torch

    correct = total = 0
    with torch.no_grad():
        for batch in data.batches(artifact.inputs, batch_size=256):
            if batch.labels is None:
                return None
            out = artifact.module(*[torch.from_numpy(batch.inputs[s.name]) for s in artifact.inputs])
            out = out[0] if isinstance(out, (tuple, list)) else out
            correct += int((out.argmax(-1).numpy() == np.asarray(batch.labels)).sum())
            total += len(batch.labels)
    return round(correct / total, 5) if total else None


def _ratios(comparison: dict[str, Any]) -> dict[str, Any]:
    ref, res = comparison["reference"], comparison["result"]
    ratios = {k: round(res[k] / ref[k], 4) for k in ("params", "macs", "onnx_latency_ms_p50_1thread") if ref.get(k)}
    if ref.get("accuracy") is not None and res.get("accuracy") is not None:
        ratios["accuracy_drop"] = round(ref["accuracy"] - res["accuracy"], 5)
    return ratios


def _save_program(artifact: TorchArtifact, path: Path) -> None:
    """torch.export the model with a dynamic batch dim, so ``edgeport export`` can take it."""
    import torch

    rng = np.random.default_rng(0)
    sizes = traceable_sizes(artifact, rng)
    args = tuple(torch.from_numpy(example_array(s, rng, sizes)) for s in artifact.inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(artifact.module.eval(), args, dynamic_shapes=export_dynamic_shapes(artifact.inputs))
            torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportError(f"torch.export cannot capture the compressed model: {first_line(exc)[:200]}", fix="make forward() free of data-dependent Python control flow") from exc


def _require_torch(artifact: Any, role: str) -> None:
    if not isinstance(artifact, TorchArtifact):
        raise UsageError(f"the {role} is an ONNX model, but compression works on torch models", fix="pass the PyTorch model (module:attr, TorchScript or .pt2)")


def _private_tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="edgeport-rank-")
