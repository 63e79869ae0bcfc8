"""Small CNNs for the 8x8 handwritten digits: the example teacher and student."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitsCNN(nn.Module):
    """1x8x8 image -> 10 logits. ``width`` scales every layer (the student is width 8, the teacher 32)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, width),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(4 * width, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(image), 1))


def digits_student() -> DigitsCNN:
    return DigitsCNN(width=8)


def trained_digits_cnn() -> DigitsCNN:
    """The teacher with the bundled checkpoint loaded (examples/digits/digits_cnn.pt)."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(HERE / "digits_cnn.pt", map_location="cpu", weights_only=True))
    return model.eval()
