"""Data factories that tests name as module:attr."""

import numpy as np


def two_input_samples():
    rng = np.random.default_rng(0)
    for i in range(5):
        yield {"a": rng.standard_normal(3).astype(np.float32), "b": np.array(i)}
