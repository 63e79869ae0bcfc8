"""Models that tests name as module:attr because they must fail."""

import torch


class Unexportable(torch.nn.Module):
    """Riemann zeta has no ONNX lowering in either exporter."""

    def forward(self, x):
        return torch.special.zeta(x, x)
