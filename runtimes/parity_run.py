"""Parity measured by running both models: the candidate (here or on a remote device) against the
reference here, on the same feeds. Validation measures with ``measure_parity``; the passes' step
records and the regression gate run their data through ``accumulate_on_data``, and every metric is
``runtimes.parity.ParityAccumulator``'s."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeport.artifacts import OnnxArtifact
from edgeport.data import DataSource
from edgeport.runtimes.parity import ParityAccumulator, model_class_outputs
from edgeport.runtimes.remote import RemoteDevice
from edgeport.runtimes.session import create_session, run_session
from edgeport.runtimes.state_carry import CarriedSession, StateCarry
from edgeport.specs import TensorSpec, example_array

SYNTHETIC_FEEDS = 4  # seeded random feeds where no data is given: enough to catch a broken graph, not to rank one
OPTIMISTIC = " (the samples the int8 ranges came from, so this parity is optimistic: pass --eval for held-out data)"


def accumulate_on_data(accumulator: ParityAccumulator, reference, candidate, data: DataSource, specs: tuple[TensorSpec, ...], *,
                       carry: StateCarry | None, max_samples: int | None, batch_size: int = 8) -> str:
    """Feed ``data`` to both sessions and accumulate their parity; a carried stream runs feed by
    feed, each session with its own state. Returns how the data was run, for the report."""
    ref_run, cand_run = CarriedSession(reference, carry), CarriedSession(candidate, carry)
    for batch in data.batches(specs, batch_size=1 if carry else batch_size, max_samples=max_samples):
        accumulator.update(ref_run.run(batch.inputs), cand_run.run(batch.inputs), batch.labels)
    return f", run in order with the state carried ({carry.describe()})" if carry else ""


def measure_parity(artifact: OnnxArtifact, ref: OnnxArtifact, source: DataSource | None, providers: list[str],
                   shapes: Sequence[TensorSpec], max_samples: int, seed: int, *, carry: StateCarry | None = None,
                   device: RemoteDevice | None = None, threads: int | None = None,
                   options: dict[str, dict[str, str]] | None = None, cpu_fallback: bool = True) -> dict[str, Any]:
    """The candidate on ``providers`` (on ``device`` where given) against the reference on this
    host's CPU, on the evaluation data, else on seeded synthetic feeds at ``shapes``."""
    reference = create_session(ref.path)
    acc = ParityAccumulator(names=[o.name for o in reference.get_outputs()], class_outputs=model_class_outputs(ref.path))
    if source is not None:
        kind = f"{source.role} data: {source.description}"
        kind_suffix = OPTIMISTIC if source.role == "calibration" else ""  # export --profile with only --calib
        feeds, labels = None, None
    else:
        kind, kind_suffix = "synthetic inputs", ""
        rng = np.random.default_rng(seed)
        feeds, labels = [{s.name: example_array(s, rng) for s in shapes} for _ in range(SYNTHETIC_FEEDS)], [None] * SYNTHETIC_FEEDS
    if device is not None:  # the candidate runs on the device, the reference here: same feeds, in order
        if source is not None:
            batches = list(source.batches(artifact.inputs, batch_size=8, max_samples=max_samples))
            feeds, labels = [b.inputs for b in batches], [b.labels for b in batches]
        for feed, label, outputs in zip(feeds, labels, device.outputs(artifact.device_files(), feeds, providers, threads, options, cpu_fallback)):
            acc.update(run_session(reference, feed), outputs, label)
        return {**acc.result(), "data": kind + kind_suffix}
    cand = create_session(artifact.path, providers, provider_options=options, cpu_fallback=cpu_fallback)
    if source is not None:
        # Each model carries its own state: the candidate's rounding feeds back as it will on the device.
        kind += accumulate_on_data(acc, reference, cand, source, artifact.inputs, carry=carry, max_samples=max_samples)
    else:
        for feed in feeds:
            acc.update(run_session(reference, feed), run_session(cand, feed))
    return {**acc.result(), "data": kind + kind_suffix}
