"""Tensor specs: a model input's name, shape (ints or symbolic dim names) and dtype, and their parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgeport.errors import UsageError

Dim = int | str

# The dtypes a model input may carry, by the names numpy and torch both understand.
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_DIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. A str dim is symbolic (dynamic), e.g. "batch" or "sequence"."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise UsageError(
                f"input '{self.name}' has unsupported dtype '{self.dtype}'",
                fix=f"use one of {', '.join(SUPPORTED_DTYPES)}",
            )
        for dim in self.shape:
            if isinstance(dim, int) and dim <= 0:
                raise UsageError(f"input '{self.name}' has a non-positive dim {dim}", fix="give dims >= 1")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def rank(self) -> int:
        return len(self.shape)

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete shape fits this spec (symbolic dims match any size)."""
        return len(shape) == len(self.shape) and all(
            isinstance(want, str) or want == got for want, got in zip(self.shape, shape)
        )

    def concrete(self, sizes: dict[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
        sizes = sizes or {}
        return tuple(d if isinstance(d, int) else sizes.get(d, default) for d in self.shape)

    def describe(self) -> str:
        return f"{self.name}:{'x'.join(str(d) for d in self.shape)}:{self.dtype}"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], tuple(data["shape"]), data.get("dtype", "float32"))


def parse_input_spec(text: str) -> TensorSpec:
    """Parse NAME:SHAPE[:DTYPE], e.g. ``image:batchx3x224x224:float32``."""
    fix = "write NAME:SHAPE[:DTYPE], e.g. image:batchx3x224x224:float32 (a name instead of a number makes that dim dynamic)"
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"--input '{text}' is not NAME:SHAPE[:DTYPE]", fix=fix)
    name, shape_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if not _NAME_RE.match(name):
        raise UsageError(f"--input '{text}': '{name}' is not a valid input name", fix=fix)
    dims: list[Dim] = []
    for token in shape_text.split("x"):
        if token.isdigit():
            dims.append(int(token))
        elif _DIM_NAME_RE.match(token):
            dims.append(token)
        else:
            raise UsageError(f"--input '{text}': dim '{token}' is neither a number nor a name", fix=fix)
    if dtype not in SUPPORTED_DTYPES:
        raise UsageError(f"--input '{text}': unknown dtype '{dtype}'", fix=f"use one of {', '.join(SUPPORTED_DTYPES)}")
    return TensorSpec(name, tuple(dims), dtype)


def parse_input_specs(inputs) -> tuple[TensorSpec, ...] | None:
    """``--input`` values (strings or TensorSpecs) as specs; None when none were given."""
    return tuple(parse_input_spec(s) if isinstance(s, str) else s for s in inputs) if inputs else None


def example_array(spec: TensorSpec, rng: np.random.Generator, sizes: dict[str, int] | None = None) -> np.ndarray:
    """A synthetic array for a spec, from the one generator the benchmark worker also feeds (runtimes.synthetic)."""
    from edgeport.runtimes.synthetic import synthetic_array

    return synthetic_array(spec.concrete(sizes), spec.dtype, rng)


def batch_size_for(specs: tuple[TensorSpec, ...], batch_size: int) -> int:
    """The batch size a model takes: its fixed leading dim where it has one (a model compiled for
    batch 1), else the one asked for."""
    fixed = {s.shape[0] for s in specs if s.rank and isinstance(s.shape[0], int)}
    return fixed.pop() if len(fixed) == 1 else batch_size
