"""Attention masks for integer NPUs: a -inf fill value (``masked_fill(mask, -inf)``, a float's
lowest value) becomes a large finite negative, which softmax still turns into 0 but a quantized
tensor can hold. QNN's HTP has no float fallback, so a node reading -inf would go to the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

MASK_FILL = -100.0  # exp(-100) is 4e-44: nothing after softmax, and within a 16-bit activation's reach
_LOWEST = -1e30  # at or below this a constant is a mask fill (-inf, or -3.4e38 from torch.finfo.min)


MASK_NOTE = (f"attention-mask fills of -inf became {MASK_FILL:g}: QNN's HTP cannot represent -inf and has no float fallback "
             "(softmax still gives those positions 0)")
MASK_READERS = ("Where", "Add", "Sub")  # masked_fill exports as Where; a precomputed mask is added


def finite_mask_fills(model: onnx.ModelProto) -> int:
    """Replace -inf and float-lowest values by MASK_FILL, in place, in the float constants
    (initializers and Constant nodes) that only mask readers take: a Clip or Max bound of -inf
    keeps its meaning. Returns how many constants changed."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    outputs = {o.name for o in model.graph.output}
    changed = 0
    tensors = [(t, t.name) for t in model.graph.initializer]
    tensors += [(a.t, n.output[0]) for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for tensor, name in tensors:
        if name in outputs or not readers.get(name) or not readers[name] <= set(MASK_READERS):
            continue
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        array = numpy_helper.to_array(tensor)
        fills = array <= _LOWEST
        if not fills.any():
            continue
        fixed = np.where(fills, np.asarray(MASK_FILL, array.dtype), array).astype(array.dtype)
        tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))
        changed += 1
    return changed
