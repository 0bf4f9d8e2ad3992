"""Building a model from its config, and judging its size before anything is allocated.

Sizes come from a build on the meta device (shapes only, no memory), so they are the model's own parameter and
buffer counts whatever its variant (adaptive LayerNorm, tokenizer kinds): nothing is counted by hand.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from .classifier import SmallCNN
from .generator import SpectralGPT
from .kinds import build_tokenizer

__all__ = ["MODELS", "build_model", "check_fits", "memory_bytes", "model_bytes"]

MODELS = {"tokenizer": build_tokenizer, "generator": SpectralGPT, "classifier": SmallCNN}  # tokenizer: its kind


def build_model(kind: str, config, device=None) -> nn.Module:
    """The "tokenizer", "generator" or "classifier" for `config` (device "meta": shapes only)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {list(MODELS)}")
    if device is None:
        return MODELS[kind](config)
    with torch.device(device):
        return MODELS[kind](config)


def model_bytes(kind: str, config) -> tuple[int, int, int]:
    """(parameters, bytes of the parameters, bytes of the buffers) of the model `config` builds, from a
    meta-device build (inf when a tensor's size overflows 64 bits). Raises ValueError when the config cannot build
    a model."""
    try:
        m = build_model(kind, config, "meta")
    except RuntimeError as e:
        if "overflow" in str(e):  # a tensor of more than 2**63 bytes: an absurd size, not a bug
            return math.inf, math.inf, 0
        raise ValueError(f"cannot build the {kind}: {e}") from None
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"cannot build the {kind}: {e}") from None
    params = list(m.parameters())
    return (sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params),
            sum(b.numel() * b.element_size() for b in m.buffers()))


def memory_bytes() -> int:
    """Physical memory of this machine (the bound on a model built in fp32 on the CPU before it moves)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(kind: str, config, max_bytes: int | None = None) -> None:
    """Refuse a config whose weights do not fit in this machine's memory (`max_bytes`), so an absurd or corrupt
    size field fails with a message, not as a 480 GB allocation."""
    n, p_bytes, b_bytes = model_bytes(kind, config)
    limit = memory_bytes() if max_bytes is None else max_bytes
    if p_bytes + b_bytes > limit:
        raise ValueError(f"{kind} config: {n:.3g} weights ({(p_bytes + b_bytes) / 2**30:.3g} GiB) do not fit in "
                         f"this machine's {limit / 2**30:.3g} GiB of memory; is a size field corrupt?")
