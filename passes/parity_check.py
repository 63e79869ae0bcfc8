"""Parity of one ONNX artifact against another on the context's data, for step records."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeport.artifacts import OnnxArtifact
from edgeport.passes.context import PassContext
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.parity_run import accumulate_on_data
from edgeport.runtimes.session import create_session, run_session
from edgeport.specs import example_array


def parity_between(
    reference: OnnxArtifact, candidate: OnnxArtifact, ctx: PassContext, *, samples: int | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Compare outputs on evaluation data (else calibration data, else seeded synthetic inputs)."""
    ref_session = create_session(reference.path)
    cand_session = create_session(candidate.path)
    accumulator = ParityAccumulator(names=[o.name for o in ref_session.get_outputs()], class_outputs=model_class_outputs(reference.path))
    data = ctx.evaluation or ctx.calibration
    if data is not None:
        how = accumulate_on_data(accumulator, ref_session, cand_session, data, reference.inputs, carry=ctx.state_carry,
                                 max_samples=samples, batch_size=batch_size)
        source = ("evaluation" if ctx.evaluation is not None else "calibration") + how
    else:
        rng = np.random.default_rng(ctx.seed)
        feed = {s.name: example_array(s, rng, {d: 2 for d in s.shape if isinstance(d, str)}) for s in reference.inputs}
        accumulator.update(run_session(ref_session, feed), run_session(cand_session, feed))
        source = "synthetic"
    result = accumulator.result()
    result["data"] = source
    return result
