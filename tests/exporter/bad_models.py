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


class FixedWidthReshape(torch.nn.Module):
    """A pitch-tracker-style net whose forward hard-codes a width (as CREPE's reshape(-1, self.in_features)
    does): pruning conv2's channels breaks it, and the check must name conv2."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = torch.nn.Conv1d(16, 32, 5, padding=2)
        self.in_features = 32 * 8
        self.classifier = torch.nn.Linear(self.in_features, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool1d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool1d(torch.relu(self.conv2(x)), 2)
        return torch.sigmoid(self.classifier(x.reshape(-1, self.in_features)))


class TwoHeads(torch.nn.Module):
    """A trunk with a class head and a box head, flattened together as detectors do: both heads'
    widths make up the output, though neither layer's output is the model's output itself."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(16, 64)
        self.classes = torch.nn.Linear(64, 5)
        self.boxes = torch.nn.Linear(64, 4)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return torch.cat((torch.sigmoid(self.classes(h)), self.boxes(h)), dim=1)


class SparseSigmoidTeacher(torch.nn.Module):
    """Independent probabilities (a multi-label or pitch-bin head): most outputs near 0, a few near 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
        with torch.no_grad():
            self.body[2].bias.fill_(-4.0)
            self.body[2].weight.mul_(4.0)

    def forward(self, x):
        return torch.sigmoid(self.body(x))


class SigmoidStudent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 32))

    def forward(self, x):
        return torch.sigmoid(self.body(x))
