"""The concrete input shapes a profile's budgets are stated at, from the profile, --dim and data:
shared by validation (what it measures at) and export (what --precision auto prices)."""

from __future__ import annotations

from edgeport.data import DataSource
from edgeport.specs import batch_size_for
from edgeport.device_profiles import Profile
from edgeport.errors import UsageError
from edgeport.specs import TensorSpec


def concrete_inputs(inputs: tuple[TensorSpec, ...], prof: Profile | None, dims: dict[str, int],
                    data_dims: dict[str, int] | None = None) -> list[TensorSpec]:
    """The shapes budgets are stated at: the profile's batch for a leading symbolic dim; other
    symbolic dims from --dim, then the profile's [budgets.dims], then the evaluation data. Without
    a profile (a regression gate alone): batch 1."""
    sizes = {**(data_dims or {}), **(prof.budgets.dims if prof else {}), **dims}
    out = []
    for spec in inputs:
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0 and dim not in dims:
                shape.append(prof.budgets.batch if prof else 1)
            elif dim in sizes:
                shape.append(sizes[dim])
            else:
                raise UsageError(
                    f"input '{spec.name}' has dynamic dim '{dim}' with no size for " + (f"profile '{prof.name}'" if prof else "timing"),
                    fix=f"pass --dim {dim}=N, set [budgets.dims] {dim} = N in the profile, or give --data to take it from",
                )
        out.append(TensorSpec(spec.name, tuple(shape), spec.dtype))
    return out


def dims_from_data(inputs: tuple[TensorSpec, ...], source: DataSource | None) -> dict[str, int]:
    """Sizes of symbolic non-batch dims as the first evaluation batch has them (e.g. sequence)."""
    if source is None:
        return {}
    # one batch: a model compiled for a fixed batch takes only whole ones
    first = next(iter(source.batches(inputs, batch_size=1, max_samples=batch_size_for(inputs, 1))), None)
    if first is None:
        return {}
    found: dict[str, int] = {}
    for spec in inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and axis > 0:
                found.setdefault(dim, int(first.inputs[spec.name].shape[axis]))
    return found
