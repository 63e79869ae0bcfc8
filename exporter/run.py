"""``edgeport run``: a recipe (a file, or the one a manifest stores) turned into one export.

``edgeport export``'s flags become a recipe too (recipe_flags), and both go through
``run_recipe``: one path from settings to artifacts, so the same settings give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

from edgeport.api import ExportResult, export
from edgeport.artifacts import file_sha256
from edgeport.device_profiles import BUILTIN_DIR, load_profile
from edgeport.errors import UsageError, first_line
from edgeport.passes.context import Progress
from edgeport.passes.export_onnx import OnnxExportConfig
from edgeport.passes.quantize_static import StaticInt8Config
from edgeport.profile_defaults import fidelity_target, quant_config_for
from edgeport.versions import package_version, runtime_versions
from edgeport.recipe import DEFAULT_RECIPE, Recipe, load_recipe, parse_recipe, step_config, with_budget_overrides


def run_recipe(recipe: Recipe, *, out_dir: str | Path | None = None, baseline: str | Path | None = None, cache_dir: str | Path | None = None,
               use_cache: bool = True, force: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export as ``recipe`` says, into ``out_dir`` (default: the recipe's outputs.dir). ``baseline``
    replaces the recipe's regression baseline."""
    if baseline is not None:
        recipe = dataclasses.replace(recipe, regression=dataclasses.replace(recipe.regression, baseline=str(Path(baseline).absolute())))
    if out_dir is not None:  # the manifest says where this run wrote, so running it again writes there
        recipe = dataclasses.replace(recipe, outputs=dataclasses.replace(recipe.outputs, dir=str(Path(out_dir).absolute())))
    profiles = [with_budget_overrides(load_profile(p), recipe.budgets.get(p, {})) for p in recipe.validation.profiles]
    q, m, d = recipe.quantization, recipe.model, recipe.data
    base = quant_config_for(profiles[0]) if profiles else StaticInt8Config()
    explicit = {"format": q.format, "per_channel": q.per_channel, "reduce_range": q.reduce_range, "op_types": q.op_types,
                "exclude_op_types": q.exclude_op_types, "exclude_nodes": q.exclude_nodes}
    quant_config = dataclasses.replace(base, calibration_method=q.calibration_method, calibration_samples=q.calibration_samples,
                                       **{k: v for k, v in explicit.items() if v is not None})
    t = q.target
    flags = {"min_cosine": t.min_cosine, "min_top1_agreement": t.min_top1_agreement, "max_accuracy_drop": t.max_accuracy_drop,
             "min_sqnr_db": t.min_sqnr, "metric": t.metric, "metric_min": t.metric_min}
    if not q.search and any(v is not None for v in flags.values()):
        raise UsageError("fidelity targets need the int8 search, which --no-search turns off", fix="drop --no-search or the target flags")
    target = fidelity_target(profiles, flags) if any(v is not None for v in flags.values()) else None
    _importable(recipe)
    provenance = {"recipe": recipe.to_dict(), "inputs": input_hashes(recipe)}
    return export(
        m.source, out_dir=recipe.outputs.dir, force=force, inputs=list(m.inputs) or None, weights=m.weights,
        calib=d.calibration, eval=d.evaluation, precision=q.precision, trust_pickle=m.trust_pickle,
        export_config=OnnxExportConfig(opset=m.opset, exporter=m.exporter), quant_config=quant_config, search=q.search, fidelity=target,
        max_fallback=q.max_fallback, search_budget=q.search_budget, recurrent=q.recurrent, seed=recipe.seed, cache_dir=cache_dir, progress=progress,
        profile=profiles or None, runs=recipe.validation.runs, use_cache=use_cache, stateful=list(d.stateful) or None,
        dims=dict(m.dims) or None, torch_steps=[step_config(s) for s in recipe.steps], teacher=m.teacher, teacher_weights=m.teacher_weights,
        train_data=d.training, provenance=provenance, junit=recipe.outputs.junit,
        baseline=recipe.regression.baseline, regression=recipe.regression,
    )


def load_run_source(path: str | Path | None) -> tuple[Recipe, list[str]]:
    """The recipe ``edgeport run`` was given, and warnings about it: a recipe file (default
    ./edgeport.toml) or an earlier run's manifest.json, whose inputs must be unchanged to build the
    same bytes. A manifest's regression baseline is not replayed (give --baseline for a gate)."""
    path = Path(path or DEFAULT_RECIPE)
    if path.suffix != ".json":
        return load_recipe(path), []
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"manifest '{path}' cannot be read ({first_line(exc)})", fix="give the manifest.json an export wrote, or a recipe .toml") from exc
    data = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UsageError(f"manifest '{path}' holds no resolved recipe (it was written by an older edgeport or by the Python API)",
                         fix="run the export again with 'edgeport export' or 'edgeport run RECIPE'")
    recipe, problems = parse_recipe(data, str(path))
    if problems:
        raise UsageError(problems[0], fix="the manifest's recipe is from another edgeport version: rebuild it from the recipe file")
    recipe = dataclasses.replace(recipe, regression=dataclasses.replace(recipe.regression, baseline=None))
    _importable(recipe)
    now = input_hashes(recipe)
    for key, digest in (manifest.get("inputs") or {}).items():
        if now.get(key) != digest:
            state = "has changed" if key in now else "is gone"
            raise UsageError(f"input {key} of the recipe {state} since {path} was written", fix="restore that input, or run the recipe as it is now")
    then, current = manifest.get("versions") or {}, {**runtime_versions(), "torch": package_version("torch")}  # torch is not imported yet
    changed = [f"{name} {then[name]} -> {current.get(name)}" for name in sorted(then) if then[name] != current.get(name)]
    warnings = [f"{path} was built with other versions ({', '.join(changed)}): the artifacts may differ in bytes"] if changed else []
    return recipe, warnings


def _importable(recipe: Recipe) -> None:
    """module:attr references import from the recipe's import root, ahead of the current folder
    (which edgeport's loaders otherwise put first)."""
    root = recipe.model.import_root
    if not root:
        return
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(1, here)


def input_hashes(recipe: Recipe) -> dict[str, str]:
    """sha256 of every file the recipe reads (a folder: of its files' names and hashes; a
    module:attr model: of the module's source file), keyed by recipe key."""
    m, d = recipe.model, recipe.data
    keys = {"model.source": m.source, "model.weights": m.weights, "model.teacher": m.teacher, "model.teacher_weights": m.teacher_weights,
            "data.calibration": d.calibration, "data.evaluation": d.evaluation, "data.training": d.training}
    keys.update({f"validation.profiles[{i}]": p if Path(p).is_file() else str(BUILTIN_DIR / f"{p}.toml")
                 for i, p in enumerate(recipe.validation.profiles)})  # a built-in profile by its file: it changes with edgeport
    hashes = {}
    for key, value in keys.items():
        digest = _digest(value) if value else None
        if digest is not None:
            hashes[key] = digest
    return hashes


def _digest(value: str) -> str | None:
    path = Path(value)
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        listing = "\n".join(f"{p.relative_to(path)} {file_sha256(p)}" for p in sorted(path.rglob("*")) if p.is_file())
        return hashlib.sha256(listing.encode()).hexdigest()
    module, sep, _ = value.partition(":")
    if not sep or module == "random":
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return file_sha256(Path(origin)) if origin and Path(origin).is_file() else None
