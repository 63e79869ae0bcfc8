"""Model families edgeport must serve, written out here so nothing is downloaded.

ResNet-18 and MobileNetV2 follow the torchvision layouts (random weights made numerically
trained-like, for latency, size and quantization fidelity, not accuracy); the tiny transformer takes int64 token ids with dynamic batch and
sequence; the GRU net is a small audio (log-mel frames) classifier; the LSTM net is a speech
recognizer's recurrent encoder (per-frame token logits, two layers of 256).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride) as in the paper
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class TinyTransformer(nn.Module):
    """Token ids (batch x sequence, int64) and an attention mask -> sentence embedding."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, max_len: int = 128):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.tokens(input_ids) + self.positions(positions)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.norm((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class GRUAudio(nn.Module):
    """Log-mel frames (batch x time x 40) -> per-clip class logits, keyword-spotting style."""

    def __init__(self, mels: int = 40, hidden: int = 64, classes: int = 12):
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(mels, hidden, 3, padding=1), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.frontend(frames.transpose(1, 2)).transpose(1, 2)
        out, _ = self.gru(x)
        return self.head(out.mean(1))


class LSTMSpeech(nn.Module):
    """Log-mel frames (batch x time x 40) -> per-frame token logits, as a CTC speech recognizer's
    recurrent encoder (DeepSpeech-style, smaller): two LSTM layers of 256."""

    def __init__(self, mels: int = 40, hidden: int = 256, tokens: int = 29):
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(mels, hidden, 5, padding=2), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, tokens)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.frontend(frames.transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(x)
        return self.head(out)


def _like_trained(model: nn.Module, input_size: int = 224) -> nn.Module:
    """Make a random network behave like a trained one numerically: torchvision's initialisation,
    then BatchNorm statistics gathered on smooth synthetic images. Without this, PyTorch's default
    init makes activations fade layer by layer and every input gives the same logits, which would
    make any parity figure meaningless."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the settling batches
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            coarse = torch.randn(8, 3, input_size // 16, input_size // 16, generator=generator)
            images = nn.functional.interpolate(coarse, size=input_size, mode="bilinear", align_corners=False)
            model(images + 0.3 * torch.randn(images.shape, generator=generator))
    return model.eval()


def resnet18() -> ResNet18:
    return _like_trained(ResNet18())


def mobilenet_v2() -> MobileNetV2:
    return _like_trained(MobileNetV2())


def tiny_transformer() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def gru_audio() -> GRUAudio:
    torch.manual_seed(0)
    return GRUAudio().eval()


def lstm_speech() -> LSTMSpeech:
    torch.manual_seed(0)
    return LSTMSpeech().eval()
