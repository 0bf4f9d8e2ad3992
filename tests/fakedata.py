"""Small fake datasets written in the real formats (tests make their own data; nothing is downloaded)."""

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path, arr: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def fake_fmnist(root, n_train=256, n_test=64, classes=3, seed=0) -> Path:
    """Fashion-MNIST-format files whose classes are easy to tell apart (a bright block in a class-specific place)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 4 + 6 * c:12 + 6 * c, 6:22] = 200 + rng.integers(0, 55)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root
