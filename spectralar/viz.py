"""Pictures: image grids (Pillow) and training curves (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., C, H, W] in [-1, 1] -> uint8 [..., H, W, C]."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def save_grid(images: torch.Tensor, path, nrow: int, scale: int = 1, pad: int = 2) -> Path:
    """Save images [B, C, H, W] in [-1, 1] as one PNG, `nrow` images per row, upscaled by `scale`."""
    arr = to_uint8(images)
    B, H, W, C = arr.shape
    rows = (B + nrow - 1) // nrow
    canvas = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        canvas[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = arr[i]
    im = Image.fromarray(canvas[..., 0] if C == 1 else canvas)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def plot_log(jsonl, png, keys=("loss",), title="") -> Path | None:
    """Plot `keys` against step from a JSONL metrics log (train and val rows) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for split in ("train", "val"):
            pts = [(r["step"], r[key]) for r in rows if r.get("split", "train") == split and key in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, label=split, marker="o" if split == "val" else None, ms=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
