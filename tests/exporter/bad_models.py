"""Models that tests name as module:attr because they must fail."""

import torch


class Unexportable(torch.nn.Module):
    """Riemann zeta has no ONNX lowering in either exporter."""

    def forward(self, x):
        return torch.special.zeta(x, x)


def seven_class_student():
    """A student whose classifier has 7 outputs where the digits teacher has 10."""
    from examples.digits.model import DigitsCNN

    model = DigitsCNN(width=8)
    model.classifier = torch.nn.Linear(32, 7)
    return model


class SharedWeightLoop(torch.nn.Module):
    """One Linear applied 32 times: traced, each use becomes its own node over one weight, and ORT
    gives each node its own quantized bias with per-channel scales, so int8 is larger than fp32."""

    def __init__(self):
        super().__init__()
        self.step = torch.nn.Linear(64, 64)

    def forward(self, x):
        for _ in range(32):
            x = torch.tanh(self.step(x))
        return x
