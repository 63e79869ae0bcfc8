"""Parity of one ONNX artifact against another on the context's data, for step records."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeport.artifacts import OnnxArtifact
from edgeport.passes.context import PassContext
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.session import create_session, run_session
from edgeport.runtimes.state_carry import CarriedSession
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
        ref_run, cand_run = CarriedSession(ref_session, ctx.state_carry), CarriedSession(cand_session, ctx.state_carry)
        for batch in data.batches(reference.inputs, batch_size=1 if ctx.state_carry else batch_size, max_samples=samples):
            accumulator.update(ref_run.run(batch.inputs), cand_run.run(batch.inputs), batch.labels)
        source = "evaluation" if ctx.evaluation is not None else "calibration"
        if ctx.state_carry:
            source += f", run in order with the state carried ({ctx.state_carry.describe()})"
    else:
        rng = np.random.default_rng(ctx.seed)
        feed = {s.name: example_array(s, rng, {d: 2 for d in s.shape if isinstance(d, str)}) for s in reference.inputs}
        accumulator.update(run_session(ref_session, feed), run_session(cand_session, feed))
        source = "synthetic"
    result = accumulator.result()
    result["data"] = source
    return result
