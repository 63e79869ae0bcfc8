"""Train the digits CNN on the bundled training split and save its state_dict (seeded, ~20 s on 2 cores)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.digits.model import DigitsCNN

HERE = Path(__file__).parent


def load_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(HERE / f"{name}.npz") as data:
        return torch.from_numpy(data["image"]), torch.from_numpy(data["labels"])


def train(model: nn.Module, epochs: int = 30, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    images, labels = load_split("train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * ((len(labels) + 63) // 64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    images, labels = load_split("test")
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "digits_cnn.pt"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    model = train(DigitsCNN(), args.epochs)
    print(f"test accuracy {accuracy(model):.4f}")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
