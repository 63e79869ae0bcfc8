"""Weight rounding that minds the layer's inputs (GPTQ: Frantar et al. 2022; AIMET's AdaRound asks
the same question by gradient descent).

Rounding each weight to its nearest int8 level minimizes the weight's own error, not the layer's
output error: on PP-OCRv4's detector 8-bit per-channel weights alone, rounded to nearest, cost a
min cosine of 0.985, one 48x48 1x1 conv 0.994 by itself. GPTQ rounds a layer's input columns one
at a time and moves the error of each onto the columns not yet rounded, weighted by the inverse of
the layer's input second moment H = E[x x^T] measured on calibration data, so the layer's outputs
on that data change least. The levels stay those ONNX Runtime chose (the scale per channel is
read from the QDQ model), so ORT re-quantizing the rounded weights reproduces them exactly. Under
pair-bounded weights (``pair_bounded_weights``: reduce_range in a QDQ file) GPTQ keeps each pair's
levels within the bound as it rounds, and one pair on it, so the scale derived again is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.passes.graph_edit import read_counts
from edgeport.passes.int8_eval import exposed_runs
from edgeport.passes.pair_bounded_weights import PAIR_LEVELS, output_axis, pair_bounded_scales, reduction_order, trans_b, weight_rows

ROUNDED_OPS = ("Conv", "Gemm", "MatMul")
DAMPING = 0.01  # of H's mean diagonal, added to it: GPTQ's default, keeps the inverse stable
BLOCK = 128  # columns rounded before the rest is updated at once (GPTQ's lazy batch update)
PASS_BYTES = 256 << 20  # second moments held at once: layers beyond them wait for another pass over the data
MAX_COLUMNS = 4096  # a layer with more inputs (a 128 MB moment, a few copies while solved) is left rounded to nearest


@dataclass(frozen=True)
class WeightGrid:
    """The int8 levels ORT gave one weight: ``scale`` per row of the GPTQ matrix, levels -limit..limit."""

    scale: np.ndarray  # (rows,) in the layer's output-channel order
    limit: np.ndarray  # (rows,) the largest |level| each row uses (127, or 64 or pair-bounded levels under reduce_range)
    per_channel: bool
    axis: int  # the weight axis the scales run along


@dataclass
class WeightRounding:
    model: onnx.ModelProto  # the float source with rounded weights (on ORT's grid, in float)
    layers: list[str] = field(default_factory=list)  # nodes whose weights were rounded


def round_weights(source: onnx.ModelProto, qdq: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                  pair_bounded: bool = False) -> WeightRounding:
    """``source`` with each quantized Conv/Gemm/MatMul weight rounded by GPTQ on the grid that
    ``qdq`` (ORT's int8 model of ``source``) uses for it; ``pair_bounded``: ``qdq``'s weights
    were bounded per MLAS pair, and their rounding is too."""
    grids = _weight_grids(qdq)
    inits = {t.name: t for t in source.graph.initializer}
    readers = read_counts(source.graph)
    candidates = [n for n in source.graph.node
                  if n.op_type in ROUNDED_OPS and n.name and len(n.input) > 1 and n.input[1] in grids and n.input[1] in inits
                  and readers[n.input[1]] == 1 and (not grids[n.input[1]].per_channel or grids[n.input[1]].axis == output_axis(n))]
    weights = {n.input[1]: numpy_helper.to_array(inits[n.input[1]]) for n in candidates}  # each read once
    layers = [n for n in candidates if _rows_view(n, weights[n.input[1]]) is not None]
    model = onnx.ModelProto()
    model.CopyFrom(source)
    new_inits = {t.name: t for t in model.graph.initializer}
    result = WeightRounding(model)
    for chunk in _passes(layers, weights):
        second_moments = _input_second_moments(source, chunk, weights, feeds)
        for layer in chunk:
            moments = second_moments.get(layer.name)
            if moments is None:
                continue
            weight, grid = weights[layer.input[1]], grids[layer.input[1]]
            rows, to_weight = _rows_view(layer, weight)
            original = rows.reshape(-1, rows.shape[-1])
            bound = _pair_bound(layer, weight, grid, original) if pair_bounded else None
            rounded = np.concatenate([_gptq(rows[g], moments[g], grid, g, bound) for g in range(len(moments))])
            rounded = _keep_scale(rounded, original, grid) if bound is None else rounded
            new_inits[layer.input[1]].CopyFrom(numpy_helper.from_array(to_weight(rounded).astype(weight.dtype), layer.input[1]))
            result.layers.append(layer.name)
    return result


def _weight_grids(qdq: onnx.ModelProto) -> dict[str, WeightGrid]:
    """Float weight name -> its levels, for symmetric signed int8 weights (zero point 0)."""
    inits = {t.name: t for t in qdq.graph.initializer}
    grids = {}
    for node in qdq.graph.node:
        name = node.input[0] if node.op_type == "DequantizeLinear" else ""
        if not name.endswith("_quantized") or name not in inits or inits[name].data_type != onnx.TensorProto.INT8:
            continue
        q = numpy_helper.to_array(inits[name]).astype(np.int64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64).reshape(-1)
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else np.zeros(1)
        if np.any(zero != 0) or q.ndim < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        if scale.size == 1:
            grids[name[: -len("_quantized")]] = WeightGrid(scale, np.array([np.abs(q).max()]), per_channel=False, axis=axis)
        elif scale.size == q.shape[axis]:
            limit = np.abs(np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)).max(axis=1)
            grids[name[: -len("_quantized")]] = WeightGrid(scale, limit, per_channel=True, axis=axis)
    return grids


def _rows_view(layer: onnx.NodeProto, weight: np.ndarray):
    """The weight as GPTQ matrices, one per group: (groups, rows = outputs, columns = inputs), and
    the function that turns the rounded (rows, columns) matrix back into the weight's layout."""
    attrs = {a.name: a for a in layer.attribute}
    if layer.op_type == "Conv":
        group = attrs["group"].i if "group" in attrs else 1
        if weight.ndim not in (3, 4) or weight.shape[0] % group or ("auto_pad" in attrs and attrs["auto_pad"].s not in (b"NOTSET", b"VALID")):
            return None
        rows = weight.reshape(group, weight.shape[0] // group, -1)
        return rows, lambda r: r.reshape(weight.shape)
    if weight.ndim != 2:
        return None
    if layer.op_type == "Gemm":
        if "transA" in attrs and attrs["transA"].i:
            return None
        if trans_b(layer):  # (N, K): rows already
            return weight[None], lambda r: r
    return weight.T[None], lambda r: r.T  # MatMul / Gemm: (K, N) -> rows are the N outputs


def _passes(layers: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> list[list[onnx.NodeProto]]:
    """Layers in groups whose second moments (float64, groups x K x K) fit PASS_BYTES together."""
    chunks: list[list[onnx.NodeProto]] = [[]]
    held = 0
    for layer in layers:
        rows, _ = _rows_view(layer, weights[layer.input[1]])
        size = rows.shape[0] * rows.shape[-1] ** 2 * 8
        if rows.shape[-1] > MAX_COLUMNS:
            continue
        if chunks[-1] and held + size > PASS_BYTES:
            chunks.append([])
            held = 0
        chunks[-1].append(layer)
        held += size
    return [c for c in chunks if c]


def _input_second_moments(source: onnx.ModelProto, layers: list[onnx.NodeProto], weights: dict[str, np.ndarray],
                          feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per layer, E[x x^T] of the columns its weight multiplies, (groups, K, K), from the float model."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for layer in layers:
        by_input.setdefault(layer.input[0], []).append(layer)
    for values in exposed_runs(source, sorted(by_input), feeds):
        for name, x in values.items():
            for layer in by_input[name]:
                columns = _columns(layer, x.astype(np.float32), weights[layer.input[1]])
                if columns is None:
                    continue
                moment = np.matmul(columns, columns.transpose(0, 2, 1)).astype(np.float64)
                sums[layer.name] = sums.get(layer.name, 0) + moment
                counts[layer.name] = counts.get(layer.name, 0) + columns.shape[-1]
    return {name: total / counts[name] for name, total in sums.items() if counts[name]}


def _columns(layer: onnx.NodeProto, x: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """What the weight's columns multiply, (groups, K, M): im2col for a Conv, rows for a MatMul."""
    if layer.op_type != "Conv":
        k = weight.shape[1] if trans_b(layer) else weight.shape[0]
        return x.reshape(-1, k).T[None] if x.shape[-1] == k else None
    attrs = {a.name: a for a in layer.attribute}
    spatial = weight.ndim - 2
    if x.ndim != weight.ndim:
        return None
    if spatial == 1:  # a 1-D conv as a 2-D one of height 1
        x, weight = x[:, :, None, :], weight[:, :, None, :]
    group = attrs["group"].i if "group" in attrs else 1
    kh, kw = weight.shape[2:]
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * spatial
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * spatial
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * spatial)
    if spatial == 1:
        strides, dilations, pads = [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span_h, span_w = dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1
    if padded.shape[2] < span_h or padded.shape[3] < span_w:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]  # (N, C, OH, OW, kh, kw)
    n, channels, oh, ow = windows.shape[:4]
    per_group = channels // group
    # (groups, C/g, kh, kw, N*OH*OW): columns in the weight's (C/g, kh, kw) order
    grouped = windows.reshape(n, group, per_group, oh, ow, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4)
    return np.ascontiguousarray(grouped).reshape(group, per_group * kh * kw, n * oh * ow)


@dataclass(frozen=True)
class PairBound:
    """How GPTQ keeps a pair-bounded grid: ``partners[j]``, the column MLAS adds column j to in 16
    bits (-1: the packing's zero padding), and ``pinned``, the level of the pair that set each row's
    scale (NaN elsewhere), rounded inside GPTQ so its error is moved onto the columns after it."""

    partners: np.ndarray  # (columns,)
    pinned: np.ndarray  # (rows of every group, columns)


def _pair_bound(layer: onnx.NodeProto, weight: np.ndarray, grid: WeightGrid, original: np.ndarray) -> PairBound | None:
    """The pair bound of ``grid`` where it is this weight's pair-bounded grid; None elsewhere
    (depthwise, or a weight ``bound_weight_pairs`` left as ORT made it)."""
    order = reduction_order(layer, weight)
    if order is None:
        return None
    rows, _ = weight_rows(layer, weight)
    expected = pair_bounded_scales(rows[:, order].T)
    expected = np.array([expected.max()]) if not grid.per_channel else expected
    live = expected > 0  # an all-zero channel keeps ORT's scale
    if expected.size != grid.scale.size or not np.allclose(grid.scale[live], expected[live], rtol=1e-5):
        return None
    columns = order.size
    partners = np.full(columns, -1)
    pairs = order[: columns // 2 * 2].reshape(-1, 2)
    partners[pairs[:, 0]], partners[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    # the pair with the largest |w| sum sets the scale (PAIR_LEVELS levels): its levels are fixed
    first = np.flatnonzero((partners > np.arange(columns)) | (partners < 0))  # each pair once; unpaired columns too
    second = np.where(partners[first] < 0, columns, partners[first])  # the padding: a zero column appended
    padded = np.abs(np.concatenate([original, np.zeros((original.shape[0], 1))], axis=1))
    sums = padded[:, first] + padded[:, second]
    scale = grid.scale if grid.per_channel else np.full(original.shape[0], grid.scale[0])
    pinned = np.full(original.shape, np.nan)
    for row in (np.flatnonzero(sums.max(axis=1) > 0) if grid.per_channel else [int(np.argmax(sums.max(axis=1)))]):
        pair = int(np.argmax(sums[row]))
        a, b = first[pair], second[pair]
        if b < columns and padded[row, a] < padded[row, b]:
            a, b = b, a
        level = PAIR_LEVELS if b == columns else min(np.round(padded[row, a] / scale[row]), PAIR_LEVELS)
        pinned[row, a] = (np.sign(original[row, a]) or 1.0) * level
        if b < columns:
            pinned[row, b] = (np.sign(original[row, b]) or 1.0) * (PAIR_LEVELS - level)
    return PairBound(partners, pinned)


def _gptq(rows: np.ndarray, moment: np.ndarray, grid: WeightGrid, group: int, pair_bound: PairBound | None = None) -> np.ndarray:
    """GPTQ on one group's (rows, K) matrix: each column rounded, its error pushed onto the rest;
    with ``pair_bound``, a column whose partner is rounded already keeps their levels within the
    bound, and the pair that set a row's scale takes its pinned levels."""
    out_rows = rows.shape[0]
    span = slice(group * out_rows, (group + 1) * out_rows)
    scale = grid.scale[span] if grid.per_channel else np.full(out_rows, grid.scale[0])
    limit = grid.limit[span] if grid.per_channel else np.full(out_rows, grid.limit[0])
    scale = np.where(scale > 0, scale, 1.0)[:, None]
    limit = limit[:, None].astype(np.float64)
    pinned = pair_bound.pinned[span] if pair_bound is not None else None
    w = rows.astype(np.float64).copy()
    h = moment.copy()
    dead = np.diag(h) <= 0  # columns no calibration sample ever feeds: rounded to nearest
    live = np.diag(h)[~dead]
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMPING * (np.mean(live) if live.size else 1.0)  # in place: no K x K identity
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, GPTQ's update rows
    except np.linalg.LinAlgError:
        upper = np.eye(h.shape[0])  # no error to move: each weight to its nearest level (within its pair's bound)
    k = w.shape[1]
    rounded = np.empty_like(w)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        errors = np.empty((out_rows, end - start))
        for j in range(start, end):
            bound = limit
            if pair_bound is not None and 0 <= (partner := pair_bound.partners[j]) < j:
                bound = np.minimum(limit, PAIR_LEVELS - np.abs(np.round(rounded[:, partner:partner + 1] / scale)))
            levels = np.clip(np.round(w[:, j:j + 1] / scale), -bound, bound)
            if pinned is not None:
                levels = np.where(np.isnan(pinned[:, j:j + 1]), levels, pinned[:, j:j + 1])
            q = levels * scale
            rounded[:, j] = q[:, 0]
            error = (w[:, j] - q[:, 0]) / upper[j, j]
            w[:, j:end] -= np.outer(error, upper[j, j:end])
            errors[:, j - start] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    return rounded


def _keep_scale(rounded: np.ndarray, original: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """ORT derives each scale from the largest |weight|: where rounding left no weight on the
    outermost level, the original largest weight goes back on it, so the scale ORT computes from the
    rounded weights is the one the rounding used."""
    if grid.per_channel:
        scale, limit = grid.scale[:, None], grid.limit[:, None]
        top = np.isclose(np.abs(rounded), limit * scale, rtol=1e-5, atol=0).any(axis=1)
        for row in np.flatnonzero(~top & (grid.limit > 0)):
            column = int(np.argmax(np.abs(original[row])))
            rounded[row, column] = np.sign(original[row, column]) * grid.limit[row] * grid.scale[row]
        return rounded
    outer = grid.limit[0] * grid.scale[0]
    if not np.isclose(np.abs(rounded), outer, rtol=1e-5, atol=0).any():
        index = np.unravel_index(int(np.argmax(np.abs(original))), original.shape)
        rounded[index] = np.sign(original[index]) * outer
    return rounded
