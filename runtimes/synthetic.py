"""Synthetic inputs where no data is given: the one generator behind validation's parity, the
passes' checks and the benchmark worker's timed feeds.

Standalone (numpy only): shipped to remote devices beside bench_worker.py.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def synthetic_array(shape: Sequence[int], dtype: str | np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Normal floats; ints and bools are all ones, which is a valid token id, attention mask and
    segment id for any model (random 0/1 masks can mask whole rows)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dtype)
    return np.ones(tuple(shape), dtype=dtype)
