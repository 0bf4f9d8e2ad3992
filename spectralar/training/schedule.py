"""The learning-rate schedule every trainer here uses: linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based): lr * (step + 1) / warmup during the warm-up, then a
    half cosine from lr down to lr * min_lr_ratio at `steps` (held there after)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
