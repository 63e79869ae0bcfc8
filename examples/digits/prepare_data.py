"""Copy scikit-learn's handwritten digits into the .npz files the example ships (run once, needs scikit-learn).

The data: UCI ML hand-written digits (Alpaydin & Kaynak, 1998), 1,797 8x8 images, as bundled with
scikit-learn (BSD-3-Clause). Pixel values 0..16 are scaled to 0..1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # N x 1 x 8 x 8
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    train, test = slice(0, 1297), slice(1297, None)
    np.savez_compressed(HERE / "train.npz", image=images[train], labels=labels[train])
    np.savez_compressed(HERE / "test.npz", image=images[test], labels=labels[test])
    # Calibration: 128 training images, never the test images the parity is measured on.
    np.savez_compressed(HERE / "calib.npz", image=images[train][:128])


if __name__ == "__main__":
    main()
