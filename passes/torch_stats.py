"""Size and work of a torch model: parameters and multiply-accumulates, counted with forward hooks."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeport.artifacts import TorchArtifact
from edgeport.passes.trace_sizes import traceable_sizes
from edgeport.specs import TensorSpec, example_array


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: Any, inputs: tuple[TensorSpec, ...], sizes: dict[str, int] | None = None) -> int:
    """MACs of one forward at batch 1 (Conv, Linear, recurrent layers); other dynamic dims at
    ``sizes``, by default the sizes the export traces at."""
    import torch
    from torch import nn

    total = 0

    def conv(m, args, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    def linear(m, args, out):
        nonlocal total
        total += out.numel() * m.in_features

    def recurrent(m, args, out):
        nonlocal total
        x = args[0]
        steps = x.shape[1] if m.batch_first else x.shape[0]
        batch = x.shape[0] if m.batch_first else x.shape[1]
        total += steps * batch * sum(p.numel() for n, p in m.named_parameters() if n.startswith("weight"))

    hooks = []
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            hooks.append(m.register_forward_hook(recurrent))
    rng = np.random.default_rng(0)
    if sizes is None:  # the sizes export traces at, with the batch at 1
        sizes = traceable_sizes(TorchArtifact(module, inputs, "count_macs"), rng)
        sizes.update({s.shape[0]: 1 for s in inputs if s.rank and isinstance(s.shape[0], str)})
    feed = [torch.from_numpy(example_array(s, rng, sizes)) for s in inputs]
    try:
        with torch.no_grad():
            module(*feed)
    finally:
        for h in hooks:
            h.remove()
    return int(total)
