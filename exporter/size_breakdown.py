"""Where a model file's bytes are: each initializer counted once, under the op type that reads it
(through a DequantizeLinear, as int8 weights are read) and its stored precision."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper


def size_by_op_and_precision(path: Path) -> list[dict[str, Any]]:
    """Rows of op type, precision and bytes, largest first. Reads no external data (sizes come from shapes)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for tensor in graph.initializer:
        precision = helper.tensor_dtype_to_np_dtype(tensor.data_type).name if tensor.data_type != onnx.TensorProto.STRING else "string"
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        size = count * (np.dtype(precision).itemsize if precision != "string" else 1)
        totals[(_reader_op(tensor.name, readers), precision)] += size
    rows = [{"op_type": op, "precision": precision, "bytes": size} for (op, precision), size in totals.items()]
    return sorted(rows, key=lambda r: -r["bytes"])


def _reader_op(name: str, readers: dict[str, list[onnx.NodeProto]]) -> str:
    """The op type that uses a constant: past a DequantizeLinear to what reads its output; a scale or
    zero point counts as quantization parameters."""
    nodes = readers.get(name, [])
    if not nodes:
        return "(unused)"
    node = nodes[0]
    if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        if list(node.input).index(name) > 0:
            return "quantization parameters"
        after = readers.get(node.output[0], [])
        return after[0].op_type if after else node.op_type
    return node.op_type
