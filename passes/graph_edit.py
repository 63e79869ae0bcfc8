"""A model copy to rewrite in place, indexed the way graph rewrites (equalization, smoothing) need,
and how often each tensor is read."""

from __future__ import annotations

from collections import Counter

import onnx


def editable_copy(source: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto], dict[str, list[onnx.NodeProto]]]:
    """A copy of ``source``, its initializers by name, and the nodes that read each tensor (a node
    reading a tensor twice is listed twice)."""
    model = onnx.ModelProto()
    model.CopyFrom(source)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return model, {t.name: t for t in model.graph.initializer}, consumers


def read_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs of ``graph`` read each tensor (0 for a tensor none reads)."""
    return Counter(name for node in graph.node for name in node.input)
