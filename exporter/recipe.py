"""The recipe: one TOML file (``edgeport.toml``) that holds everything ``edgeport export`` takes as
flags, plus the torch steps, budget overrides, the regression gate and the outputs.

Parsing is as strict as a profile's (device_profiles.typed_toml): every problem is named with its
key and the nearest valid one. File paths in a recipe are relative to the recipe's folder;
``module:attr`` references import from ``model.import_root`` (default: the current folder, as
for ``export``). A resolved recipe
(absolute paths, every default filled in) is what the manifest stores, so ``edgeport run
OUTDIR/manifest.json`` builds the same thing again.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeport.device_profiles.schema import Budgets
from edgeport.device_profiles.typed_toml import Problems, build_dataclass, read_toml
from edgeport.errors import EdgeportError, UsageError

SCHEMA_VERSION = 1
DEFAULT_RECIPE = "edgeport.toml"
_REFERENCE = re.compile(r"^(random(:\d+)?|[A-Za-z_][\w.]*:[A-Za-z_][\w.]*)$")  # module:attr, random[:N]


@dataclass(frozen=True)
class ModelSection:
    source: str  # module:attr, TorchScript, .pt2 or .onnx
    weights: str | None = None
    inputs: tuple[str, ...] = ()  # NAME:SHAPE[:DTYPE]
    trust_pickle: bool = False
    teacher: str | None = None  # what distillation steps learn from (default: the model as loaded)
    teacher_weights: str | None = None
    opset: int = 17
    exporter: str = "auto"
    dims: dict[str, int] = field(default_factory=dict)  # sizes of dynamic dims (budgets, fixed-shape targets)
    import_root: str | None = None  # where module:attr references import from (default: the current folder)


@dataclass(frozen=True)
class DataSection:
    calibration: str | None = None
    evaluation: str | None = None
    training: str | None = None  # for distillation steps
    stateful: tuple[str, ...] = ()  # IN:OUT pairs of a streaming model


@dataclass(frozen=True)
class TargetSection:
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None
    min_sqnr: float | None = None
    metric: str | None = None
    metric_min: float | None = None


@dataclass(frozen=True)
class QuantizationSection:
    precision: str = "int8"
    format: str | None = None  # None: qdq, or the profile's
    calibration_method: str = "minmax"
    calibration_samples: int = 256
    per_channel: bool | None = None
    reduce_range: bool | None = None
    op_types: tuple[str, ...] | None = None
    exclude_op_types: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] | None = None
    search: bool = True
    max_fallback: float = 0.25
    search_budget: str | None = None
    recurrent: str = "auto"  # GRU/LSTM into int8 steps: auto, always, never
    target: TargetSection = field(default_factory=TargetSection)


@dataclass(frozen=True)
class ValidationSection:
    profiles: tuple[str, ...] = ()
    runs: int = 100


@dataclass(frozen=True)
class RegressionSection:
    baseline: str | None = None  # the output folder of the last release
    # Limits, as fractions of the baseline's value; a change is a regression only when it passes the
    # limit beyond the run-to-run noise measured in the same run.
    latency_p50_max_increase: float = 0.05
    latency_p95_max_increase: float = 0.05
    peak_memory_max_increase: float = 0.10
    size_max_increase: float = 0.05
    accuracy_max_drop: float = 0.005
    cosine_max_drop: float = 0.005


@dataclass(frozen=True)
class OutputsSection:
    dir: str = "edgeport-out"
    junit: bool = True  # OUTDIR/junit.xml: each budget and regression check a test case


@dataclass(frozen=True)
class Step:
    """A torch step: ``kind`` (distill, or prune with ``method``) and its pass config's fields."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    schema_version: int
    model: ModelSection
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    steps: tuple[Step, ...] = ()
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile name -> budget overrides
    regression: RegressionSection = field(default_factory=RegressionSection)
    outputs: OutputsSection = field(default_factory=OutputsSection)
    path: str = ""  # where it was read from ("" when made from flags)

    def to_dict(self) -> dict[str, Any]:
        """TOML-shaped: defaults included, None left out (TOML has no null)."""
        data = _plain(dataclasses.asdict(self))
        data["steps"] = [{"kind": s.kind, **_plain(s.options)} for s in self.steps]
        data.pop("path", None)
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def step_kinds() -> dict[str, type]:
    """Step kind -> pass config class, from the pass registry. ``prune`` takes ``method`` to pick its config."""
    from edgeport.passes import step_kinds as registered

    return registered()


def step_config(step: Step) -> Any:
    """The pass config a step stands for."""
    key = f"prune:{step.options.get('method')}" if step.kind == "prune" else step.kind
    cls = step_kinds()[key]
    fields_given = {k: tuple(v) if isinstance(v, list) else v for k, v in step.options.items() if k != "method" or step.kind != "prune"}
    return cls(**fields_given)


def parse_recipe(data: dict[str, Any], origin: str) -> tuple[Recipe | None, list[str]]:
    """A Recipe from TOML data, or None and every problem found."""
    problems = Problems(origin)
    data = dict(data)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        problems.add("schema_version", f"must be {SCHEMA_VERSION}, not {version!r}" if version is not None else f"is required (write schema_version = {SCHEMA_VERSION})")
        return None, problems.items
    if "path" in data:  # Recipe.path records where a recipe was read from; a file does not set it
        problems.add("path", "unknown key")
        data.pop("path")
    steps = _parse_steps(data.pop("steps", []), problems)
    budgets = _parse_budgets(data.pop("budgets", {}), problems)
    recipe = build_dataclass(Recipe, {**data, "path": origin}, "", problems)
    if recipe is not None:
        recipe = dataclasses.replace(recipe, steps=steps, budgets=budgets)
        _check_values(recipe, problems)
    return (recipe if not problems.items else None), problems.items


def _parse_steps(raw: Any, problems: Problems) -> tuple[Step, ...]:
    if not isinstance(raw, list):
        problems.add("steps", "must be an array of tables ([[steps]])")
        return ()
    kinds = step_kinds()
    steps = []
    for i, table in enumerate(raw):
        where = f"steps[{i}]"
        if not isinstance(table, dict):
            problems.add(where, "must be a table")
            continue
        options = {k: v for k, v in table.items() if k != "kind"}
        kind = table.get("kind")
        key = f"prune:{options.get('method')}" if kind == "prune" else kind
        if kind not in {k.split(":", 1)[0] for k in kinds}:
            problems.add(f"{where}.kind", f"must be 'distill' or 'prune', not {kind!r}")
            continue
        if key not in kinds:
            methods = [k.split(":", 1)[1] for k in kinds if k.startswith("prune:")]
            problems.add(f"{where}.method", f"must be {', '.join(methods[:-1])} or {methods[-1]}, not {options.get('method')!r}")
            continue
        config_fields = {k: v for k, v in options.items() if k != "method" or kind != "prune"}
        before = len(problems.items)
        try:  # building the config runs its own checks (__post_init__)
            build_dataclass(kinds[key], config_fields, f"{where}.", problems)
        except (EdgeportError, ValueError, TypeError) as exc:
            problems.add(where, exc.problem if isinstance(exc, EdgeportError) else str(exc))
        if len(problems.items) == before:
            steps.append(Step(kind, options))
    return tuple(steps)


def _parse_budgets(raw: Any, problems: Problems) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        problems.add("budgets", "must be a table of profile names")
        return {}
    result = {}
    for profile, overrides in raw.items():
        if build_dataclass(Budgets, overrides, f"budgets.{profile}.", problems) is not None:
            result[profile] = overrides
    return result


PRECISIONS = ("int8", "dynamic-int8", "fp16", "fp32", "auto")
CHOICES = {"quantization.precision": PRECISIONS, "quantization.format": ("qdq", "qoperator"),
           "quantization.calibration_method": ("minmax", "mse", "mean_minmax", "entropy", "percentile"), "model.exporter": ("auto", "torchscript", "dynamo")}


def _check_values(r: Recipe, problems: Problems) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(r, section), name)
        if value is not None and value not in allowed:
            near = difflib.get_close_matches(str(value), allowed, n=1)
            problems.add(key, f"'{value}' is not one of {', '.join(allowed)}" + (f"; did you mean '{near[0]}'?" if near else ""))
    for name in ("latency_p50_max_increase", "latency_p95_max_increase", "peak_memory_max_increase", "size_max_increase",
                 "accuracy_max_drop", "cosine_max_drop"):
        if getattr(r.regression, name) < 0:
            problems.add(f"regression.{name}", f"must not be negative, not {getattr(r.regression, name)}")
    for dim, size in r.model.dims.items():
        if size < 1:
            problems.add(f"model.dims.{dim}", f"must be at least 1, not {size}")
    if not 0 <= r.quantization.max_fallback <= 1:
        problems.add("quantization.max_fallback", f"must be within [0, 1], not {r.quantization.max_fallback}")
    if r.quantization.recurrent not in ("auto", "always", "never"):
        problems.add("quantization.recurrent", f"must be auto, always or never, not {r.quantization.recurrent!r}")
    for profile in r.budgets:
        if profile not in r.validation.profiles:
            problems.add(f"budgets.{profile}", f"overrides budgets of a profile that validation.profiles does not list ({', '.join(r.validation.profiles) or 'none'})")
    if r.steps and Path(r.model.source).suffix == ".onnx":
        problems.add("steps", "torch steps need a torch model, and model.source is an .onnx file")


def check_recipe(path: str | Path) -> tuple[Recipe | None, list[str]]:
    """Every problem with a recipe file, one line each; an empty list means it is valid."""
    data, problems = read_toml(Path(path))
    if data is None:
        return None, problems
    return parse_recipe(data, str(path))


def load_recipe(path: str | Path) -> Recipe:
    """A recipe file, resolved against its folder. Raises UsageError naming the first problem."""
    if not Path(path).is_file():
        raise UsageError(f"recipe '{path}' does not exist", fix=f"write one (see examples/digits/{DEFAULT_RECIPE}), or name it: edgeport run RECIPE")
    recipe, problems = check_recipe(path)
    if problems:
        more = f" (and {len(problems) - 1} more: run 'edgeport recipe check {path}')" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more, fix="correct the recipe against examples/digits/edgeport.toml")
    return resolve(recipe, Path(path).absolute().parent)


def resolve(recipe: Recipe, base: Path) -> Recipe:
    """File paths made absolute against ``base``; module:attr and random[:N] left as they are."""

    def at(value: str | None) -> str | None:
        if value is None or _REFERENCE.match(value) or Path(value).is_absolute():
            return value
        return str((base / value).resolve())

    def profile_at(name: str) -> str:  # a built-in name stays a name
        return at(name) if name.endswith(".toml") or "/" in name else name

    m, d = recipe.model, recipe.data
    renamed = {profile_at(p): overrides for p, overrides in recipe.budgets.items()}
    return dataclasses.replace(
        recipe,
        model=dataclasses.replace(m, source=at(m.source), weights=at(m.weights), teacher=at(m.teacher), teacher_weights=at(m.teacher_weights),
                                  import_root=at(m.import_root) if m.import_root else str(Path.cwd())),
        data=dataclasses.replace(d, calibration=at(d.calibration), evaluation=at(d.evaluation), training=at(d.training)),
        validation=dataclasses.replace(recipe.validation, profiles=tuple(profile_at(p) for p in recipe.validation.profiles)),
        budgets=renamed,
        regression=dataclasses.replace(recipe.regression, baseline=at(recipe.regression.baseline)),
        outputs=dataclasses.replace(recipe.outputs, dir=at(recipe.outputs.dir)),
    )


def with_budget_overrides(profile: Any, overrides: dict[str, Any]) -> Any:
    """``profile`` with the recipe's budget overrides applied (a nested parity table merges)."""
    if not overrides:
        return profile
    parity = dataclasses.replace(profile.budgets.parity, **overrides.get("parity", {})) if "parity" in overrides else profile.budgets.parity
    rest = {k: v for k, v in overrides.items() if k != "parity"}
    budgets = dataclasses.replace(profile.budgets, parity=parity, **rest)
    return dataclasses.replace(profile, budgets=budgets)
