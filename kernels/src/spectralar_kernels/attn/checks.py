"""Argument checks and the flash-attn test shared by `attention` and `attention_with_kvcache`."""

from __future__ import annotations

import importlib.util
import math

import torch

from .._common import check_float, kernels_mode

MAX_HEAD_DIM = 256  # validation limit (flash-attn's)
TRITON_MAX_HEAD_DIM = 128  # larger heads use the reference


def flash_attn_usable(*tensors: torch.Tensor) -> bool:
    if kernels_mode() != "auto" or torch.compiler.is_compiling():
        return False
    q = tensors[0]
    if not all(t.is_cuda for t in tensors) or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if q.shape[-1] % 8 != 0:
        return False
    return importlib.util.find_spec("flash_attn") is not None


def check_scale(softmax_scale, name: str = "softmax_scale") -> None:
    """ValueError unless None or a finite number (zero and negative scales are valid: every path masks after
    scaling)."""
    if softmax_scale is None:
        return
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise ValueError(f"{name} must be a float or None, got {softmax_scale!r}")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"{name} must be finite, got {softmax_scale!r}")


def check_bthd(name: str, t, ref_name: str | None = None, ref: torch.Tensor | None = None, same: str = "BHD") -> None:
    """ValueError unless t is a `[B, T, H, D]` float tensor with ref's dtype and, of ref's B, H, D, those in `same`."""
    check_float(name, t, min_ndim=4)
    if t.dim() != 4:
        raise ValueError(f"{name} must be [B, T, H, D], got shape {tuple(t.shape)}")
    if t.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim D={t.shape[-1]} exceeds {MAX_HEAD_DIM}")
    if ref is None:
        return
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} dtype {t.dtype} differs from {ref_name} dtype {ref.dtype}")
    for axis, label in ((0, "B"), (2, "H"), (3, "D")):
        if label in same and t.shape[axis] != ref.shape[axis]:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} and {ref_name} shape {tuple(ref.shape)} differ in {label}"
            )
