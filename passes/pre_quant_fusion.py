"""Function-preserving rewrites that take rounding points out of a graph before it is quantized.

ORT's quantizer rounds every tensor between two quantizable ops to int8. Converters (PaddlePaddle's
above all) leave a Conv's learned scale and shift as separate Mul/Add nodes, and spell HardSwish as
Add, Clip, Mul and Div: each of those tensors is rounded again, on its own range. On PP-OCRv4's
detector that alone cost min cosine 0.899 where the folded graph reaches 0.916 with the same ranges.

- A Mul, Add, Sub or Div by a constant that is a scalar or one value per channel folds into the
  weights and bias of the Conv before it (whose output it alone reads), or of the Conv after it
  (the only reader of its output) where that Conv pads nothing. ORT's own Conv+Mul/Add fusions
  left all 76 such nodes of PP-OCRv4's detector in place (Paddle's scalars have shape (1,)).
- x * Clip(x + 3, 0, 6) / 6, in any of its spellings, and x * HardSigmoid(x) with alpha 1/6, beta
  1/2, become one HardSwish (opset 14) where the target's provider runs it: ORT's NNAPI and CoreML
  providers take the parts but not HardSwish, so there the parts stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from edgeport.artifacts import declared_opset
from edgeport.passes.qdq_graph import reads

HARDSWISH_OPSET = 14
NO_HARDSWISH_PROVIDERS = ("NnapiExecutionProvider", "CoreMLExecutionProvider")
_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass(frozen=True)
class FusionCounts:
    folded_into_conv: int = 0
    hardswish: int = 0

    def note(self) -> str:
        parts = []
        if self.folded_into_conv:
            parts.append(f"folded {self.folded_into_conv} constant scale/shift node(s) into the Conv beside them")
        if self.hardswish:
            parts.append(f"fused {self.hardswish} HardSwish spelled out as Add/Clip/Mul/Div")
        return ("; ".join(parts) + ": fewer tensors rounded to int8 (function-preserving)") if parts else ""


def fuse_for_quantization(model: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",),
                          keep: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, FusionCounts]:
    """A copy of ``model`` with Conv scale/shift folded, and HardSwish fused unless one of the
    ``providers`` the file will run on lacks it; nodes named in ``keep`` (a user's exclusions) are
    left as they are."""
    try:  # a rewrite needs its tensors' ranks and types: infer what the file does not say
        result = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model over 2 GB, or ops inference does not know: rewrite what is known
        result = onnx.ModelProto()
        result.CopyFrom(model)
    graph = result.graph
    opset = declared_opset(result) or 0
    # HardSwish first: its Div by 6 would otherwise fold into the Conv that reads it
    hardswish_runs = opset >= HARDSWISH_OPSET and not set(providers) & set(NO_HARDSWISH_PROVIDERS)
    fused = _until_none_left(result, lambda m, view: _fuse_one_hardswish(m, view, keep)) if hardswish_runs else 0
    folded = _until_none_left(result, lambda m, view: _fold_one(m, view, keep))
    if folded or fused:
        _drop_unused_initializers(graph)
    return result, FusionCounts(folded, fused)


def fused_for_quantization(path: Path, work: Path, providers: Sequence[str], keep: Sequence[str], notes: list[str]) -> Path:
    """``path``, or a fused copy of it in ``work`` when a rewrite applied (the note says which)."""
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    fused, counts = fuse_for_quantization(onnx.load(str(path)), providers, frozenset(keep))
    if not counts.note():
        return path
    out = work / "fused.onnx"
    onnx.save(fused, str(out), save_as_external_data=external, location=f"{out.name}.data")  # a model over 2 GB stays one
    notes.append(counts.note())
    return out


class _Graph:
    """Producers, readers, constants and known tensor types of a model's graph, rebuilt after each rewrite."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:  # a subgraph's reads count: an If branch may read the tensor too
            for name in [*node.input, *(reads(node) - set(node.input))]:
                self.readers.setdefault(name, []).append(node)
        # from IR 4 on, an initializer that is also an input is a default the caller may override
        overridable = {i.name for i in graph.input} if model.ir_version >= 4 else set()
        self.constants = {t.name: t for t in graph.initializer if t.name not in overridable}
        self.outputs = {o.name for o in graph.output}
        self.types = {v.name: v.type.tensor_type for v in (*graph.input, *graph.value_info, *graph.output) if v.type.HasField("tensor_type")}
        self.names = {name for node in graph.node for name in (*node.input, *node.output)} | {t.name for t in graph.initializer}

    def rank(self, name: str) -> int | None:
        known = self.types.get(name)
        return len(known.shape.dim) if known is not None and known.HasField("shape") else None

    def channels(self, name: str) -> int | None:
        known = self.types.get(name)
        dims = known.shape.dim if known is not None and known.HasField("shape") else []
        return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None

    def is_float32(self, name: str) -> bool:
        known = self.types.get(name)
        return known is not None and known.elem_type == onnx.TensorProto.FLOAT

    def dims(self, name: str) -> tuple[int, ...]:
        """A constant's shape, read without converting its data (the loop asks for every Conv's)."""
        return tuple(self.constants[name].dims)

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def scalar(self, name: str) -> float | None:
        value = self.value(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 and value.dtype.kind == "f" else None


def _until_none_left(model: onnx.ModelProto, rewrite_one: Callable[[onnx.ModelProto, _Graph], bool]) -> int:
    """Apply ``rewrite_one`` (which rewrites the first match it finds, if any) with a fresh view of
    the graph each time, until it finds none; how many it rewrote."""
    count = 0
    while rewrite_one(model, _Graph(model)):
        count += 1
    return count


def _fold_one(model: onnx.ModelProto, view: _Graph, keep: frozenset[str]) -> bool:
    for conv in model.graph.node:
        if not _foldable_conv(conv, view, keep):
            continue
        after = _affine_after(conv, view, keep)
        if after is not None:
            _fold_after(model.graph, conv, *after, view)
            return True
        before = _affine_before(conv, view, keep)
        if before is not None:
            _fold_before(model.graph, conv, *before, view)
            return True
    return False


def _foldable_conv(conv: onnx.NodeProto, view: _Graph, keep: frozenset[str]) -> bool:
    if conv.op_type != "Conv" or conv.name in keep or len(conv.input) < 2 or conv.input[1] not in view.constants:
        return False
    has_bias = len(conv.input) > 2 and conv.input[2]
    return (not has_bias or conv.input[2] in view.constants) and view.constants[conv.input[1]].data_type == onnx.TensorProto.FLOAT


def _affine_after(conv: onnx.NodeProto, view: _Graph, keep: frozenset[str]):
    """(the node, kind, per-output-channel constant) when the Conv's only reader scales or shifts it."""
    node = view.only_reader(conv.output[0])
    weight = view.dims(conv.input[1])
    found = _affine_of(node, conv.output[0], view, keep, rank=len(weight), channels=weight[0])
    return None if found is None else (node, *found)


def _affine_before(conv: onnx.NodeProto, view: _Graph, keep: frozenset[str]):
    """(the node, its input, kind, per-input-channel constant) when the Conv reads a scaled or shifted
    tensor no one else reads, and pads nothing: a shift folds into the bias only where every
    window sees real data (a padded zero would have been shifted too)."""
    node = view.producer.get(conv.input[0])
    if node is None or view.only_reader(conv.input[0]) is not conv or len(node.input) != 2 or _pads(conv):
        return None
    weight = view.dims(conv.input[1])
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    x = next((name for name in node.input if name not in view.constants), None)
    if x is None or view.rank(x) != len(weight) or view.channels(x) != weight[1] * group:
        return None  # x of unknown shape, or one the constant broadcasts up to the Conv's input
    found = _affine_of(node, x, view, keep, rank=len(weight), channels=weight[1] * group)
    return None if found is None else (node, x, *found)


def _pads(conv: onnx.NodeProto) -> bool:
    attributes = {a.name: a for a in conv.attribute}
    auto_pad = attributes["auto_pad"].s.decode() if "auto_pad" in attributes else "NOTSET"
    pads = list(attributes["pads"].ints) if "pads" in attributes else []
    return auto_pad not in ("NOTSET", "VALID") or any(pads)


def _affine_of(node: onnx.NodeProto | None, x: str, view: _Graph, keep: frozenset[str], rank: int, channels: int):
    """("scale" or "shift", one value per channel) when ``node`` computes x * k, x / k, x + k or x - k
    with k a float constant that is a scalar or one value per channel of a rank-``rank`` tensor."""
    if node is None or node.op_type not in _AFFINE_OPS or node.name in keep or len(node.input) != 2 or x not in node.input:
        return None
    if node.op_type in ("Sub", "Div") and node.input[0] != x:
        return None  # k - x and k / x are not a scale and shift of x
    other = node.input[1] if node.input[0] == x else node.input[0]
    if other not in view.constants or view.constants[other].data_type != onnx.TensorProto.FLOAT:
        return None
    constant = view.value(other)
    per_channel = _per_channel(constant, rank, channels)
    if per_channel is None or (node.op_type == "Div" and np.any(per_channel == 0)):
        return None
    return {"Mul": ("scale", per_channel), "Div": ("scale", 1.0 / per_channel),
            "Add": ("shift", per_channel), "Sub": ("shift", -per_channel)}[node.op_type]


def _per_channel(constant: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The constant as one value per channel, if it broadcasts as such over a tensor of ``rank``."""
    if constant.ndim > rank:
        return None  # it would widen the output
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,)).copy()


def _conv_parameters(conv: onnx.NodeProto, view: _Graph) -> tuple[np.ndarray, np.ndarray]:
    weight = view.value(conv.input[1]).astype(np.float64)
    bias = view.value(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0])
    return weight, bias


def _fold_after(graph: onnx.GraphProto, conv: onnx.NodeProto, node: onnx.NodeProto, kind: str, per_channel: np.ndarray,
                view: _Graph) -> None:
    weight, bias = _conv_parameters(conv, view)
    if kind == "scale":
        weight = weight * per_channel.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = bias * per_channel
    else:
        bias = bias + per_channel
    _set_parameters(graph, conv, weight, bias, view)
    _forget_shape(graph, conv.output[0])
    conv.output[0] = node.output[0]  # the Conv sits before every reader of the node: order holds
    graph.node.remove(node)


def _fold_before(graph: onnx.GraphProto, conv: onnx.NodeProto, node: onnx.NodeProto, x: str, kind: str,
                 per_channel: np.ndarray, view: _Graph) -> None:
    weight, bias = _conv_parameters(conv, view)
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    per_group_in, per_group_out = weight.shape[1], weight.shape[0] // group
    # the input channel each (output channel, weight column) reads, groups included
    channel = (np.arange(weight.shape[0]) // per_group_out)[:, None] * per_group_in + np.arange(per_group_in)[None, :]
    values = per_channel[channel].reshape(*channel.shape, *([1] * (weight.ndim - 2)))
    if kind == "scale":
        weight = weight * values
    else:  # unpadded: every window reads shifted inputs only
        bias = bias + (weight * values).reshape(weight.shape[0], -1).sum(axis=1)
    _set_parameters(graph, conv, weight, bias, view)
    _forget_shape(graph, node.output[0])
    conv.input[0] = x
    graph.node.remove(node)  # it came before the Conv, and the Conv was its only reader


def _set_parameters(graph: onnx.GraphProto, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, view: _Graph) -> None:
    stem = f"{conv.name or conv.output[0]}_folded"
    index = next(i for i in range(len(view.names) + 1) if not {f"{stem}{i}_W", f"{stem}{i}_B"} & view.names)
    names = (f"{stem}{index}_W", f"{stem}{index}_B")
    graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), names[0]),
                              numpy_helper.from_array(bias.astype(np.float32), names[1])])
    del conv.input[1:]
    conv.input.extend(names)


def _fuse_one_hardswish(model: onnx.ModelProto, view: _Graph, keep: frozenset[str]) -> bool:
    graph = model.graph
    for last in graph.node:
        match = _hardswish_ending_at(last, view)
        if match is not None and not any(n.name in keep for n in match[1]) and _keeps_shape_and_type(*match, view):
            x, chain = match
            fused = onnx.helper.make_node("HardSwish", [x], [last.output[0]], name=f"{last.name or last.output[0]}_hardswish")
            graph.node.insert(list(graph.node).index(last), fused)  # where the chain ended: after x, before every reader
            for node in chain:
                if node is not last:
                    _forget_shape(graph, node.output[0])
                graph.node.remove(node)
            return True
    return False


def _hardswish_ending_at(last: onnx.NodeProto, view: _Graph) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the nodes to replace) when ``last`` ends x * relu6(x + 3) / 6 or x * hardsigmoid(x)."""
    if last.op_type in ("Div", "Mul"):
        scaled = _scaled_by_sixth(last, view)
        if scaled is not None:  # (x * gate) / 6
            inner = view.producer.get(scaled)
            if inner is not None and inner.op_type == "Mul" and view.only_reader(scaled) is last:
                for x, gate in ((inner.input[0], inner.input[1]), (inner.input[1], inner.input[0])):
                    relu6 = _relu6_of_x_plus_3(gate, x, view)
                    if relu6 is not None:
                        return x, [*relu6, inner, last]
    if last.op_type == "Mul" and len(last.input) == 2:  # x * (gate / 6), x * hardsigmoid(x)
        for x, gate in ((last.input[0], last.input[1]), (last.input[1], last.input[0])):
            node = view.producer.get(gate)
            if node is None or view.only_reader(gate) is not last:
                continue
            if node.op_type == "HardSigmoid" and node.input[0] == x and _is_hardswish_sigmoid(node):
                return x, [node, last]
            scaled = _scaled_by_sixth(node, view) if node.op_type in ("Div", "Mul") else None
            relu6 = _relu6_of_x_plus_3(scaled, x, view) if scaled is not None else None
            if relu6 is not None and view.only_reader(scaled) is node:
                return x, [*relu6, node, last]
    return None


def _keeps_shape_and_type(x: str, chain: list[onnx.NodeProto], view: _Graph) -> bool:
    """HardSwish(x) has x's shape and ORT's CPU kernel takes float32: no constant of the chain may
    broadcast x to a higher rank, and x's type must be known."""
    rank = view.rank(x)
    constants = [view.value(name) for node in chain for name in node.input if name in view.constants]
    return view.is_float32(x) and rank is not None and all(c.ndim <= rank for c in constants)


def _scaled_by_sixth(node: onnx.NodeProto, view: _Graph) -> str | None:
    """The tensor ``node`` divides by 6 (or multiplies by 1/6)."""
    if len(node.input) != 2:
        return None
    if node.op_type == "Div":
        six = view.scalar(node.input[1])
        return node.input[0] if six is not None and np.isclose(six, 6.0) else None
    for value, constant in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        sixth = view.scalar(constant)
        if sixth is not None and np.isclose(sixth, 1 / 6, rtol=1e-5):
            return value
    return None


def _relu6_of_x_plus_3(gate: str, x: str, view: _Graph) -> list[onnx.NodeProto] | None:
    clip = view.producer.get(gate)
    if clip is None or clip.op_type != "Clip" or len(clip.input) < 3 or view.only_reader(gate) is None:
        return None
    low, high = view.scalar(clip.input[1]), view.scalar(clip.input[2])
    add = view.producer.get(clip.input[0])
    if low != 0.0 or high is None or not np.isclose(high, 6.0) or add is None or add.op_type != "Add":
        return None
    if x not in add.input or view.only_reader(clip.input[0]) is not clip:
        return None
    three = view.scalar(add.input[1] if add.input[0] == x else add.input[0])
    return [add, clip] if three is not None and np.isclose(three, 3.0) else None


def _is_hardswish_sigmoid(node: onnx.NodeProto) -> bool:
    attributes = {a.name: a.f for a in node.attribute}
    return np.isclose(attributes.get("alpha", 0.2), 1 / 6, rtol=1e-5) and np.isclose(attributes.get("beta", 0.5), 0.5)


def _forget_shape(graph: onnx.GraphProto, name: str) -> None:
    for index, value in enumerate(graph.value_info):
        if value.name == name:
            del graph.value_info[index]
            return


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    read = {name for node in graph.node for name in reads(node)} | {o.name for o in graph.output}
    unused = {t.name for t in graph.initializer} - read
    if unused:
        kept = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        # a model from before IR 4 also lists its initializers as inputs: without the value, one would become a required input
        inputs = [i for i in graph.input if i.name not in unused]
        del graph.input[:]
        graph.input.extend(inputs)
