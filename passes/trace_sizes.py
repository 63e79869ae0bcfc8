"""Concrete sizes for a model's dynamic dims: what tracing, torch.export, pruning, MAC counting
and latency comparisons feed the model. One rule for all of them, so a model that exports also
prunes and counts (an audio frontend needs thousands of samples where a text model takes 8)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeport.artifacts import TorchArtifact
from edgeport.errors import ExportError, first_line
from edgeport.specs import TensorSpec, example_array

# Sizes tried for non-batch dynamic dims, smallest first: 8 suits text and images, while audio
# frontends (strided convolutions over raw samples) need thousands.
SIZE_LADDER = (8, 64, 512, 4096)


def traceable_sizes(model: TorchArtifact, rng: np.random.Generator, data: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Sizes per symbolic dim that the model's forward accepts: the data's own sizes first, then
    a ladder of synthetic ones. Raises the forward's error (ExportError) when none works.

    Size 1 gets specialized away by tracers and equal sizes let a tracer confuse two dims, so a
    leading (batch) dim gets 2 and other dims distinct sizes.
    """
    candidates = []
    if data is not None:
        from_data = {name: int(data[spec.name].shape[axis]) for spec in model.inputs for axis, name in spec.dynamic_axes.items() if axis > 0}
        candidates.append(_sizes_for(model.inputs, SIZE_LADDER[0], from_data))
    candidates += [_sizes_for(model.inputs, base, {}) for base in SIZE_LADDER]
    failure: ExportError | None = None
    for sizes in candidates:
        try:
            check_forward(model, {s.name: example_array(s, rng, sizes) for s in model.inputs})
            return sizes
        except ExportError as exc:
            failure = exc
    raise failure


def _sizes_for(specs: tuple[TensorSpec, ...], base: int, given: dict[str, int]) -> dict[str, int]:
    """Leading (batch) dims at 2; other dims as ``given``, else base, base + 1, ... (all distinct)."""
    sizes: dict[str, int] = {}
    next_size = base
    for spec in specs:
        for axis, name in spec.dynamic_axes.items():
            if name in sizes:
                continue
            if axis == 0:
                sizes[name] = 2
            elif name in given:
                sizes[name] = max(given[name], 2)
            else:
                sizes[name], next_size = next_size, next_size + 1
    return sizes


def check_forward(model: TorchArtifact, inputs: dict[str, np.ndarray]) -> None:
    import torch

    try:
        with torch.no_grad():
            model.module(*[torch.from_numpy(inputs[s.name]) for s in model.inputs])
    except Exception as exc:
        shapes = ", ".join(s.describe() for s in model.inputs)
        raise ExportError(
            f"the model's forward fails on inputs {shapes}: {type(exc).__name__}: {first_line(exc)}",
            fix="check --input names, shapes and dtypes against what forward() expects",
        ) from exc


def export_dynamic_shapes(specs: tuple[TensorSpec, ...]) -> tuple[Any, ...] | None:
    """torch.export's dynamic_shapes for the specs: one Dim per symbolic name, shared across inputs."""
    import torch

    dims: dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in s.dynamic_axes.items()} or None for s in specs)
    return shapes if any(shapes) else None
