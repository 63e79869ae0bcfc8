"""Data factories that tests name as module:attr."""

import numpy as np


def two_input_samples():
    rng = np.random.default_rng(0)
    for i in range(5):
        yield {"a": rng.standard_normal(3).astype(np.float32), "b": np.array(i)}


def _digits_images():
    rng = np.random.default_rng(0)
    for _ in range(16):
        yield {"image": rng.standard_normal((1, 8, 8)).astype(np.float32)}


one_shot_generator = _digits_images()  # a generator object, not a function: it can be read only once
