"""A model copy to rewrite in place, indexed the way graph rewrites (equalization, smoothing) need."""

from __future__ import annotations

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
