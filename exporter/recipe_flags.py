"""The one table that maps ``edgeport export``'s flags onto recipe keys.

``export`` builds a recipe from its flags through this table and runs it exactly as ``edgeport
run`` runs a recipe file, so a recipe with the same values gives the same bytes. A test checks
that every export flag is here or is a flag of ``run`` too (RUN_FLAGS: how a run behaves, not what
it builds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeport.errors import UsageError
from edgeport.recipe import SCHEMA_VERSION, Recipe, parse_recipe, resolve


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def parse_dim(text: str) -> tuple[str, int]:
    name, _, size = text.partition("=")
    if not name or not size.isdigit() or int(size) < 1:
        raise UsageError(f"--dim '{text}' is not NAME=N", fix="write e.g. --dim sequence=128")
    return name, int(size)


def _dims(values: tuple[str, ...]) -> dict[str, int] | None:
    return dict(parse_dim(d) for d in values) or None


def _listed(values: tuple[str, ...]) -> list[str] | None:
    return list(values) or None


# export flag (click parameter name) -> (recipe key, how the flag's value becomes the key's value;
# a conversion returning None leaves the key at its default)
EXPORT_FLAGS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "model": ("model.source", None),
    "weights": ("model.weights", None),
    "inputs": ("model.inputs", _listed),
    "trust_pickle": ("model.trust_pickle", None),
    "opset": ("model.opset", None),
    "exporter": ("model.exporter", None),
    "dims": ("model.dims", _dims),
    "calib": ("data.calibration", None),
    "eval_data": ("data.evaluation", None),
    "stateful": ("data.stateful", _listed),
    "precision": ("quantization.precision", None),
    "no_quantize": ("quantization.precision", lambda v: "fp32" if v else None),  # the same as --precision fp32
    "quant_format": ("quantization.format", None),
    "calib_method": ("quantization.calibration_method", None),
    "calib_samples": ("quantization.calibration_samples", None),
    "per_channel": ("quantization.per_channel", None),
    "reduce_range": ("quantization.reduce_range", None),
    "op_types": ("quantization.op_types", _split),
    "exclude_op_types": ("quantization.exclude_op_types", _split),
    "exclude_nodes": ("quantization.exclude_nodes", _split),
    "no_search": ("quantization.search", lambda v: False if v else None),
    "min_cosine": ("quantization.target.min_cosine", None),
    "min_top1_agreement": ("quantization.target.min_top1_agreement", None),
    "max_accuracy_drop": ("quantization.target.max_accuracy_drop", None),
    "min_sqnr": ("quantization.target.min_sqnr", None),
    "metric": ("quantization.target.metric", None),
    "metric_min": ("quantization.target.metric_min", None),
    "max_fallback": ("quantization.max_fallback", None),
    "search_budget": ("quantization.search_budget", None),
    "recurrent": ("quantization.recurrent", None),
    "seed": ("seed", None),
    "profiles": ("validation.profiles", _listed),
    "runs": ("validation.runs", None),
    "baseline": ("regression.baseline", None),
    "out_dir": ("outputs.dir", None),
}
# Flags of both export and run: they say how this run behaves (where its cache is, what it
# prints, whether it may replace files), not what it builds, so a recipe does not hold them.
RUN_FLAGS = ("force", "cache_dir", "no_cache", "as_json", "quiet")


def recipe_from_flags(model: str, opts: dict[str, Any], base: Path | None = None) -> Recipe:
    """The recipe that ``edgeport export MODEL`` with these flags stands for, resolved against
    ``base`` (default: the current folder, as the flags' paths are)."""
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "outputs": {"junit": False}}
    # the table's order is the order applied: --no-quantize, after --precision, wins
    for param, (key, convert) in EXPORT_FLAGS.items():
        value = model if param == "model" else opts.get(param)
        if convert is not None:
            value = convert(value)
        if value is None:
            continue
        table = data
        *sections, name = key.split(".")
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
    recipe, problems = parse_recipe(data, "flags")
    if problems:
        key, _, why = problems[0].replace("flags: ", "", 1).partition(": ")
        flag = next((p for p, (k, _) in EXPORT_FLAGS.items() if k == key), None)
        named = "MODEL" if flag == "model" else f"--{flag.replace('_', '-')}" if flag else key
        raise UsageError(f"{named}: {why}", fix="correct the flag (edgeport export --help)")
    return resolve(recipe, base or Path.cwd())
