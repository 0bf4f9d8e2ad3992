"""Pictures: image grids (Pillow), training curves and evaluation plots (matplotlib, headless)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., C, H, W] in [-1, 1] -> uint8 [..., H, W, C]."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def grid_image(images: torch.Tensor, nrow: int, scale: int = 1, pad: int = 2) -> Image.Image:
    """Images [B, C, H, W] in [-1, 1] as one Pillow image on a white canvas, `nrow` images per row, upscaled by
    `scale` (nearest neighbour)."""
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
    return im


def save_grid(images: torch.Tensor, path, nrow: int, scale: int = 1, pad: int = 2) -> Path:
    """Save images [B, C, H, W] in [-1, 1] as one PNG, `nrow` images per row, upscaled by `scale`."""
    im = grid_image(images, nrow, scale, pad)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


ANIMATION_FORMATS = {".gif": "GIF", ".png": "PNG", ".apng": "PNG", ".webp": "WEBP"}


def save_animation(frames: list[torch.Tensor], path, nrow: int, scale: int = 1, frame_ms: int = 200,
                   hold_ms: int = 1500) -> Path:
    """Save a looping animation of image grids: frames[i] is images [B, C, H, W] in [-1, 1], laid out as
    `save_grid` does. .gif or .png / .apng (animated PNG): lossless; .webp: lossy (quality 80), several times
    smaller. Each frame shows `frame_ms`, the last `hold_ms`."""
    path = Path(path)
    fmt = ANIMATION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: an animation is written as {', '.join(ANIMATION_FORMATS)}")
    ims = [grid_image(f, nrow, scale) for f in frames]
    durations = [frame_ms] * (len(ims) - 1) + [hold_ms]
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"quality": 80, "method": 6} if fmt == "WEBP" else {}
    ims[0].save(path, format=fmt, save_all=True, append_images=ims[1:], duration=durations, loop=0, **extra)
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
        if ax.lines:  # a curve with no points yet gets no (empty) legend
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def plot_panels(path, panels, title="") -> Path:
    """One PNG with a row of line plots; panels = [(title, xlabel, ylabel, {label: (xs, ys)}, logy)]. Points whose
    y is None or not finite are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (ptitle, xlabel, ylabel, series, logy) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            pts = [(a, b) for a, b in zip(xs, ys) if b is not None and math.isfinite(b)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        ax.set(title=ptitle, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_per_class(path, per_class: dict, overall: float) -> Path:
    """Bar chart of the classifier's accuracy on generated samples of each class, with the overall mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(per_class), 3.4))
    ax.bar(range(len(per_class)), list(per_class.values()))
    ax.set_xticks(range(len(per_class)), list(per_class), rotation=45, ha="right", fontsize=8)
    ax.axhline(overall, color="k", ls="--", lw=1, label=f"all classes {overall:.3f}")
    ax.set(ylim=(0, 1), ylabel="classifier accuracy", title="accuracy on generated samples, per class")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
