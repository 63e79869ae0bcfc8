"""Parity of one ONNX artifact against another on the context's data, for step records."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeport.artifacts import OnnxArtifact
from edgeport.data import DataSource
from edgeport.passes.context import PassContext
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.session import create_session, run_session
from edgeport.runtimes.state_carry import CarriedSession, StateCarry
from edgeport.specs import TensorSpec, example_array


def accumulate_on_data(accumulator: ParityAccumulator, reference, candidate, data: DataSource, specs: tuple[TensorSpec, ...], *,
                       carry: StateCarry | None, max_samples: int | None, batch_size: int = 8) -> str:
    """Feed ``data`` to both sessions and accumulate their parity; a carried stream runs feed by
    feed, each session with its own state. Returns how the data was run, for the report."""
    ref_run, cand_run = CarriedSession(reference, carry), CarriedSession(candidate, carry)
    for batch in data.batches(specs, batch_size=1 if carry else batch_size, max_samples=max_samples):
        accumulator.update(ref_run.run(batch.inputs), cand_run.run(batch.inputs), batch.labels)
    return f", run in order with the state carried ({carry.describe()})" if carry else ""


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
