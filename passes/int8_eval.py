"""Evaluation data for an int8 search (held apart from calibration, held in memory), fp32 reference
outputs, and scoring of candidates.

The search runs many candidates over the same few hundred samples, so samples are read once, one
sample per run (an even/odd split then gives the search split and the held-out split), and
candidate sessions are built from in-memory models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from edgeport.data import Batch, DataSource
from edgeport.specs import batch_size_for
from edgeport.errors import DataError
from edgeport.passes.fidelity import FidelityScore, FidelityTarget, MetricFn, Outputs, per_sample_cosine, score
from edgeport.runtimes.state_carry import StateCarry, carried_outputs
from edgeport.specs import TensorSpec


@dataclass
class EvalSplit:
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    reference: list[Outputs] = field(default_factory=list)
    carry: StateCarry | None = None  # set: the feeds are one stream, run in order with the state carried
    reference_session: ort.InferenceSession | None = None  # the fp32 model, for a carried subset's own reference

    def subset(self, indices: list[int]) -> "EvalSplit":
        if self.carry is None or not indices:
            return EvalSplit([self.feeds[i] for i in indices], [self.labels[i] for i in indices], [self.reference[i] for i in indices])
        # A carried feed depends on the feeds before it, so the subset is the run of consecutive feeds
        # that ends at the worst one. It is a stream of its own, starting from the state its first
        # feed's data gives, so its fp32 reference is run again the same way.
        end = indices[0] + 1
        start = max(0, end - len(indices))
        window = list(range(start, min(len(self.feeds), start + len(indices))))
        part = EvalSplit([self.feeds[i] for i in window], [self.labels[i] for i in window], carry=self.carry,
                         reference_session=self.reference_session)
        if self.reference_session is not None:
            part.reference = part.outputs(self.reference_session)
        else:
            part.reference = [self.reference[i] for i in window]
        return part

    def outputs(self, session: ort.InferenceSession) -> list[Outputs]:
        if self.carry is not None:
            return carried_outputs(session, self.feeds, self.carry)
        return [run(session, feed) for feed in self.feeds]

    def __len__(self) -> int:
        return len(self.feeds)


class SampleSubset(DataSource):
    """Every sample of ``parent`` whose index ``keep`` accepts: splits one data set in two (e.g.
    calibration and held-out evaluation) without copying it. Ready-made batches count as one sample."""

    def __init__(self, parent: DataSource, keep: Callable[[int], bool], description: str):
        self.parent, self.keep = parent, keep
        self.role, self.warning = parent.role, parent.warning
        self.description = description

    def batches(self, specs: tuple[TensorSpec, ...], batch_size: int = 8, max_samples: int | None = None) -> Iterator[Batch]:
        pending: list[Batch] = []
        emitted = 0
        batch_size = batch_size_for(specs, batch_size)
        for index, single in enumerate(self.parent.batches(specs, 1, None)):
            if not self.keep(index):
                continue
            if single.feeds is not None:  # complete feeds pass one by one: they cannot be stacked
                yield single
                emitted += 1
                if max_samples is not None and emitted >= max_samples:
                    break
                continue
            if pending and any(pending[0].inputs[n].shape[1:] != a.shape[1:] for n, a in single.inputs.items()):
                yield _joined(pending)
                pending = []
            pending.append(single)
            emitted += single.size
            if sum(b.size for b in pending) >= batch_size:
                yield _joined(pending)
                pending = []
            if max_samples is not None and emitted >= max_samples:
                break
        if pending:
            yield _joined(pending)


def _joined(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    inputs = {n: np.concatenate([p.inputs[n] for p in parts]) for n in parts[0].inputs}
    labelled = all(p.labels is not None for p in parts)
    return Batch(inputs, np.concatenate([np.asarray(p.labels) for p in parts]) if labelled else None)


def calibration_and_evaluation(calibration_data: DataSource, evaluation_data: DataSource | None, carry: StateCarry | None,
                               specs: tuple[TensorSpec, ...]) -> tuple[DataSource, DataSource, str | None]:
    """Evaluation data apart from calibration: given, or every fourth calibration sample set aside
    (for a carried stream, its last quarter: the stream must stay in one piece)."""
    if evaluation_data is not None:
        return calibration_data, evaluation_data, None
    source = calibration_data
    if carry is not None:
        count = sum(1 for _ in source.batches(specs, batch_size=1))
        if count < 8:
            raise DataError(f"calibration data '{source.description}' holds {count} feeds: too few to hold a carried stream apart "
                            "for evaluation", fix="give at least 8 feeds, or separate evaluation feeds with --eval")
        cut = count - max(2, count // 4)
        calibration = SampleSubset(source, lambda i: i < cut, f"{source.description} (its first {cut} feeds)")
        evaluation = SampleSubset(source, lambda i: i >= cut, f"{source.description} (its last {count - cut} feeds, held apart from calibration)")
        return calibration, evaluation, (f"no evaluation data was given: the last {count - cut} calibration feeds were held apart "
                                         "as one stream to judge fidelity on (pass --eval for a verdict on data of your own)")
    calibration = SampleSubset(source, lambda i: i % 4 != 3, f"{source.description} (3 of every 4 samples)")
    evaluation = SampleSubset(source, lambda i: i % 4 == 3, f"{source.description} (every 4th sample, held apart from calibration)")
    return calibration, evaluation, ("no evaluation data was given: every 4th calibration sample was held apart to judge fidelity on "
                                     "(pass --eval for a verdict on data of your own)")


def session_for(model: onnx.ModelProto | str, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session as the artifact will run (all graph optimizations, so QDQ fuses to int8 kernels)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load_splits(data: DataSource, specs: tuple[TensorSpec, ...], max_samples: int,
                carry: StateCarry | None = None) -> tuple[EvalSplit, EvalSplit]:
    """Samples alternate between the search split (even) and the held-out split (odd). A carried
    stream is cut in two instead (first half, second half), each half a stream of its own."""
    search, held_out = EvalSplit(carry=carry), EvalSplit(carry=carry)
    batches = list(data.batches(specs, batch_size=1, max_samples=max_samples))
    for index, batch in enumerate(batches):
        first_half = index < (len(batches) + 1) // 2
        split = (search if first_half else held_out) if carry is not None else (search if index % 2 == 0 else held_out)
        split.feeds.append(batch.inputs)
        split.labels.append(batch.labels)
    if len(held_out) == 0:
        raise DataError(
            f"evaluation data '{data.description}' yields {len(search)} sample(s); the int8 search needs at least 2 "
            "(one to search on, one held out to report on)", fix="give more evaluation samples (--eval)")
    return search, held_out


def add_reference(split: EvalSplit, session: ort.InferenceSession) -> None:
    split.reference = split.outputs(session)
    split.reference_session = session


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Outputs:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})


@dataclass
class Scorer:
    """Scores candidate models on a split against the fp32 reference."""

    target: FidelityTarget
    metric_fn: MetricFn | None = None
    class_outputs: frozenset[int] | None = None  # outputs that are class scores (None: judged by shape)
    runs: int = 0  # candidate model runs so far, for the report

    def outputs(self, session: ort.InferenceSession, split: EvalSplit) -> list[Outputs]:
        self.runs += len(split)
        return split.outputs(session)

    def score(self, session: ort.InferenceSession, split: EvalSplit) -> FidelityScore:
        return self.evaluate(session, split)[0]

    def evaluate(self, session: ort.InferenceSession, split: EvalSplit) -> tuple[FidelityScore, list[Outputs]]:
        """The candidate's score on the split, and its outputs for further use."""
        outputs = self.outputs(session, split)
        return score(self.target, split.reference, outputs, split.labels, self.metric_fn, self.class_outputs), outputs


def worst_samples(split: EvalSplit, outputs: list[Outputs], count: int) -> list[int]:
    """Indices of the samples on which a candidate's ``outputs`` deviate most (lowest cosine)."""
    worst = [_deviation(ref, cand) for ref, cand in zip(split.reference, outputs)]
    return sorted(range(len(worst)), key=lambda i: worst[i])[:count]


def _deviation(reference: Outputs, candidate: Outputs) -> tuple[float, float]:
    """Lowest cosine of the vector outputs, then the largest error of outputs with one value per
    sample (whose cosine says nothing): lower sorts as worse."""
    scalar_error = 0.0
    for ref, cand in zip(reference, candidate):
        ref = np.asarray(ref)
        if ref.dtype.kind == "f" and ref.size == (ref.shape[0] if ref.ndim else 1):
            error = np.abs(ref.astype(np.float64) - np.asarray(cand, np.float64))
            scalar_error = max(scalar_error, float(np.nan_to_num(error, nan=np.inf).max(initial=0.0)))
    return float(per_sample_cosine(reference, candidate).min()), -scalar_error


def run_exposing(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]],
                 carry: StateCarry | None = None) -> dict[str, list[np.ndarray]]:
    """Run ``model`` with extra graph outputs; names whose type is unknown or not a tensor are skipped."""
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for run_values in exposed_runs(model, names, feeds, carry):
        for name, value in run_values.items():
            values[name].append(value)
    return {k: v for k, v in values.items() if v}


def exposed_runs(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]],
                 carry: StateCarry | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``run_exposing`` one feed at a time: a caller that reduces each run keeps one run's
    intermediate tensors in memory, not every feed's."""
    existing = {o.name for o in model.graph.output}
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    types = _tensor_types(model)
    extra = [n for n in names if n in produced and n not in existing and n in types]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for name in extra:
        exposed.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    session = session_for(exposed)
    out_names = [o.name for o in session.get_outputs()]
    wanted = set(names)
    runs = carried_outputs(session, feeds, carry) if carry is not None else (run(session, feed) for feed in feeds)
    for outputs in runs:
        yield {name: np.asarray(value) for name, value in zip(out_names, outputs) if name in wanted}


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX's type inference can tell (weights left out, so it is cheap)."""
    skeleton = _inferred_skeleton(model)
    graph = skeleton.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output) if v.type.HasField("tensor_type")}
    # Q/DQ outputs and node outputs inference could not type: DequantizeLinear gives float
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            types.setdefault(node.output[0], onnx.TensorProto.FLOAT)
    return {k: v for k, v in types.items() if v}


_SHAPE_TENSOR_MAX = 16  # elements of an int64 constant kept in the skeleton (shapes, axes, slice bounds)


def static_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of ``names`` that ONNX's shape inference fixes for ``feed``'s input shapes, with
    no run: a session of a large model costs more to build (weight prepacking) than inference.
    Names whose shape stays symbolic or unknown are left out, for a real run to measure."""
    fixed = {name: value.shape for name, value in feed.items()}
    skeleton = _inferred_skeleton(model, fixed)
    wanted = set(names)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in (*skeleton.graph.input, *skeleton.graph.value_info, *skeleton.graph.output):
        if value.name in wanted and value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _inferred_skeleton(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """``model`` without its weights (declared as inputs of their shape instead), types and shapes
    inferred; graph inputs take ``input_shapes`` where given. Best effort: what inference cannot
    tell stays unknown."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph  # everything but the weights, whose copy would cost what inference saves
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    if input_shapes is None:  # types only: what the file declares helps where inference stops
        graph.value_info.extend(model.graph.value_info)
    # outputs by type only: a shape the file declares (batch 1 from an export) must not override
    # what the feed's shapes give; value_info likewise is left for inference to fill
    graph.output.extend(helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) if o.type.HasField("tensor_type") else o
                        for o in model.graph.output)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT64 and math.prod(tensor.dims) <= _SHAPE_TENSOR_MAX:
            graph.initializer.append(tensor)  # a Reshape's target shape: kept, so inference can follow it
        else:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for graph_input in skeleton.graph.input:
        if input_shapes and graph_input.name in input_shapes and graph_input.type.HasField("tensor_type"):
            dims = graph_input.type.tensor_type.shape.dim
            del dims[:]
            for size in input_shapes[graph_input.name]:
                dims.add().dim_value = int(size)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:
        return skeleton  # types of model inputs/outputs and stored value_info still help
