"""Batches from data sources: an item's arrays bound to input names by rank, cast to the input's
dtype, grouped into the model's batch size (or passed on as complete feeds), and checked."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from edgeport.data import LABELS_KEY, Batch, DataSource, Item, NpyRows, array_rows, takes_complete_feeds
from edgeport.errors import DataError
from edgeport.specs import TensorSpec, batch_size_for


def bind_names(item: Item, specs: tuple[TensorSpec, ...], source: DataSource) -> dict[str, Any]:
    """Map an item's arrays onto input names, accepting unnamed arrays for one-input models."""
    names = [s.name for s in specs]
    keys = list(item.arrays)
    if keys in ([""], ["arr_0"]):  # a bare .npy, or numpy.savez(f, array) without a name
        if len(specs) != 1:
            raise DataError(f"{source.role} data '{item.origin}' holds one unnamed array but the model takes {len(specs)} inputs {names}", fix="save arrays keyed by input name (numpy.savez(f, name=array, ...))")
        return {names[0]: item.arrays[keys[0]]}
    if all(k.startswith("#") for k in keys):
        if len(keys) != len(specs):
            raise DataError(f"{source.role} data '{item.origin}' holds {len(keys)} arrays but the model takes {len(specs)} inputs {names}", fix="give one array per input, in input order")
        return {spec.name: item.arrays[key] for spec, key in zip(specs, keys)}
    missing = [n for n in names if n not in item.arrays]
    if missing:
        raise DataError(f"{source.role} data '{source.description}' has no array for input '{missing[0]}' (it has {keys})", fix=f"key the arrays by the model's input names {names}")
    extra = [k for k in keys if k not in names]
    if extra:
        raise DataError(f"{source.role} data '{source.description}' has array '{extra[0]}' that is not a model input {names}", fix=f"remove it or rename it to one of {names} (labels go under '{LABELS_KEY}')")
    return {n: item.arrays[n] for n in names}


def cast_to_spec(array: np.ndarray, spec: TensorSpec, source: DataSource) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if array.dtype == want:
        return array
    if want.kind == "f" and array.dtype.kind in "fiub":
        return array.astype(want)
    if want.kind in "iu" and array.dtype.kind in "iub":
        return array.astype(want)
    if want.kind == "b" and array.dtype.kind in "iub":
        return array.astype(bool)
    raise DataError(f"{source.role} data for input '{spec.name}' is {array.dtype} but the model takes {spec.dtype}", fix=f"save it as {spec.dtype}")


def complete_feeds(source: DataSource, specs: tuple[TensorSpec, ...], max_samples: int | None) -> Iterator[Batch]:
    """Complete feeds, each as given: never stacked with another, never split."""
    emitted = 0
    for item in source.items():
        arrays = materialize(bind_names(item, specs, source))
        offsets = {s.name: arrays[s.name].ndim - s.rank for s in specs}
        if set(offsets.values()) - {0, 1} or len(set(offsets.values())) != 1:
            shapes = ", ".join(f"{n}{tuple(a.shape)}" for n, a in arrays.items())
            want = ", ".join(f"{s.name}{s.describe()}" for s in specs)
            raise DataError(f"{source.role} data '{item.origin}' gives {shapes}, but this model takes complete feeds ({want}): "
                            "an input has no batch axis at 0, so samples cannot be stacked",
                            fix="save each feed exactly as the model takes it (one .npz per feed), or a list of them along a new first axis")
        count = len(next(iter(arrays.values()))) if next(iter(offsets.values())) == 1 else None
        if count is not None and any(len(a) != count for a in arrays.values()):
            raise DataError(f"{source.role} data '{item.origin}' lists a different number of feeds per input "
                            f"({', '.join(f'{n}: {len(a)}' for n, a in arrays.items())})", fix="give every input the same number of feeds")
        labels = None if item.labels is None else np.asarray(item.labels)
        for i in range(count if count is not None else 1):
            feed = {s.name: cast_to_spec(arrays[s.name][i] if count is not None else arrays[s.name], s, source) for s in specs}
            label = None if labels is None else (labels[i] if count is not None and labels.ndim else labels)
            yield checked_batch(Batch(feed, None if label is None else np.asarray(label)[None], feeds=1), specs, source)
            emitted += 1
            if max_samples is not None and emitted >= max_samples:
                return


def batch_items(source: DataSource, specs: tuple[TensorSpec, ...], batch_size: int, max_samples: int | None) -> Iterator[Batch]:
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is below 1", fix="use a batch size of at least 1")
    if takes_complete_feeds(specs):
        yield from complete_feeds(source, specs, max_samples)
        return
    target = batch_size_for(specs, batch_size)
    pending: list[tuple[dict[str, np.ndarray], Any]] = []
    emitted = 0

    def flush() -> Iterator[Batch]:
        nonlocal pending
        if pending:
            inputs = {s.name: np.stack([p[0][s.name] for p in pending]) for s in specs}
            labels = None if pending[0][1] is None else np.stack([np.asarray(p[1]) for p in pending])
            pending = []
            yield checked_batch(Batch(inputs, labels), specs, source)

    for item in source.items():
        arrays = bind_names(item, specs, source)
        first = specs[0]
        offset = rank_offset(arrays[first.name], first, source)
        for spec in specs[1:]:
            if rank_offset(arrays[spec.name], spec, source) != offset:
                raise DataError(f"{source.role} data arrays '{first.name}' and '{spec.name}' disagree on what their first axis means", fix="give every input the same layout: samples along axis 0")
        if offset == 1:  # ready-made batches
            streams = {n: array_rows(a) for n, a in arrays.items()}
            label_stream = array_rows(item.labels) if item.labels is not None else None
            for blocks in zip_blocks(streams, label_stream, source):
                inputs, labels = blocks
                for i in range(next(iter(inputs.values())).shape[0]):
                    batch = Batch({s.name: cast_to_spec(inputs[s.name][i], s, source) for s in specs}, None if labels is None else labels[i])
                    yield checked_batch(batch, specs, source)
                    emitted += batch.size
                    if max_samples is not None and emitted >= max_samples:
                        return
            continue
        if offset == -1:  # one sample
            labels = None if item.labels is None else np.asarray(item.labels)[None]
            blocks_iter: Iterable = [({n: a[None] for n, a in materialize(arrays).items()}, labels)]
        else:
            streams = {n: array_rows(a) for n, a in arrays.items()}
            label_stream = array_rows(item.labels) if item.labels is not None else None
            blocks_iter = zip_blocks(streams, label_stream, source)
        for inputs, labels in blocks_iter:
            for i in range(next(iter(inputs.values())).shape[0]):
                sample = {s.name: cast_to_spec(inputs[s.name][i], s, source) for s in specs}
                if pending and any(pending[0][0][n].shape != sample[n].shape for n in sample):
                    yield from flush()  # shapes changed (e.g. text length): a batch holds one shape
                pending.append((sample, None if labels is None else labels[i]))
                emitted += 1
                if len(pending) == target:
                    yield from flush()
                if max_samples is not None and emitted >= max_samples:
                    yield from flush()
                    return
    yield from flush()


def materialize(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, array in arrays.items():
        blocks = list(array_rows(array)) if isinstance(array, NpyRows) else None
        out[name] = np.asarray(array) if blocks is None else np.concatenate(blocks) if blocks else np.empty(array.shape, array.dtype)
    return out


def rank_offset(array: Any, spec: TensorSpec, source: DataSource) -> int:
    offset = array.ndim - spec.rank
    if offset not in (-1, 0, 1):
        shape = tuple(array.shape)
        raise DataError(f"{source.role} data for input '{spec.name}' has shape {shape} but the model takes {spec.describe()}", fix=f"give samples of rank {spec.rank - 1}, blocks of rank {spec.rank}, or batches of rank {spec.rank + 1}")
    return offset


def zip_blocks(streams: dict[str, Iterator[np.ndarray]], labels: Iterator[np.ndarray] | None, source: DataSource):
    """Walk several row streams in step, re-chunking so each yielded block has the same row count."""
    buffers: dict[str, list[np.ndarray]] = {n: [] for n in streams}
    label_buffer: list[np.ndarray] = []
    while True:
        for name, stream in streams.items():
            if not buffers[name]:
                block = next(stream, None)
                if block is not None:
                    buffers[name].append(block)
        if labels is not None and not label_buffer:
            block = next(labels, None)
            if block is not None:
                label_buffer.append(block)
        empty = [n for n, b in buffers.items() if not b]
        if empty:
            if len(empty) != len(buffers):
                raise DataError(f"{source.role} data arrays have different sample counts ('{empty[0]}' runs out first)", fix="give every input (and labels) the same number of samples")
            return
        count = min(b[0].shape[0] for b in buffers.values())
        if labels is not None:
            if not label_buffer:
                raise DataError(f"{source.role} data has fewer labels than samples", fix="give one label per sample")
            count = min(count, label_buffer[0].shape[0])
        out = {}
        for name, buffer in buffers.items():
            out[name], rest = buffer[0][:count], buffer[0][count:]
            buffers[name] = [rest] if len(rest) else []
        out_labels = None
        if labels is not None:
            out_labels, rest = label_buffer[0][:count], label_buffer[0][count:]
            label_buffer = [rest] if len(rest) else []
        yield out, out_labels


def checked_batch(batch: Batch, specs: tuple[TensorSpec, ...], source: DataSource) -> Batch:
    for spec in specs:
        shape = batch.inputs[spec.name].shape
        if not spec.matches(shape):
            raise DataError(f"{source.role} data for input '{spec.name}' gives batches of shape {shape} but the model takes {spec.describe()}", fix="reshape the data to the model's input shape")
    return batch
