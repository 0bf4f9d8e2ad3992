"""Spectral sub-images x_w = IDCT(DCT(x) * M_w): what a prefix of spectral tokens decodes to."""

from __future__ import annotations

import torch

from .._common import check_float, choose_kernel
from ..transforms import ref as dct_ref
from . import ref

__all__ = ["spectral_subimages"]


def _check_prefix_windows(windows, size: int) -> list[int]:
    if isinstance(windows, torch.Tensor):
        if windows.dim() != 1 or windows.dtype.is_floating_point or windows.dtype.is_complex:
            raise ValueError(f"windows must be a 1-D int sequence, got tensor {windows.dtype} {tuple(windows.shape)}")
        if windows.dtype == torch.bool:
            raise ValueError("windows must hold ints, got a bool tensor")
        windows = windows.tolist()
    if not isinstance(windows, (list, tuple)):
        raise ValueError(f"windows must be a list, tuple or 1-D int tensor, got {type(windows).__name__}")
    if len(windows) == 0:
        raise ValueError("windows is empty")
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, int):
            raise ValueError(f"windows must hold ints, got {w!r}")
        if not 1 <= w <= size:
            raise ValueError(f"window {w} outside [1, {size}]")
    for a, b in zip(windows[:-1], windows[1:]):
        if b <= a:
            raise ValueError(f"windows must be strictly increasing, got {a} then {b}")
    return list(windows)


def _check_sample_windows(windows, x: torch.Tensor) -> None:
    b, size = x.shape[0], x.shape[-1]
    if not isinstance(windows, torch.Tensor):
        raise ValueError(f"windows must be an int tensor [B] (B={b}), got {type(windows).__name__}")
    if windows.dtype.is_floating_point or windows.dtype.is_complex or windows.dtype == torch.bool:
        raise ValueError(f"windows must be an integer tensor, got {windows.dtype}")
    if tuple(windows.shape) != (b,):
        raise ValueError(f"windows must have shape ({b},), got {tuple(windows.shape)}")
    if windows.device != x.device:
        raise ValueError(f"windows on {windows.device} but x on {x.device}")
    lo, hi = windows.min().item(), windows.max().item()  # one host sync, for the error message
    if lo < 1 or hi > size:
        bad = lo if lo < 1 else hi
        raise ValueError(f"window {bad} outside [1, {size}]")


def spectral_subimages(x: torch.Tensor, windows, all_prefixes: bool = False) -> torch.Tensor:
    """Low-pass sub-images of square images: x_w = IDCT(DCT(x) * M_w), M_w[u, v] = 1 iff u, v < w.

    The DCT is the orthonormal whole-image 2-D DCT-II per channel (see `dct2d`).

    Args:
        x: `[B, C, S, S]` float32/float16/bfloat16.
        windows: with `all_prefixes=False`, an int tensor `[B]` on x's device, one window per sample,
            each in [1, S]; with `all_prefixes=True`, a list/tuple/1-D int tensor of N strictly
            increasing windows in [1, S] (any device; read on the host).
        all_prefixes: return every prefix's sub-image at once.
    Returns:
        `[B, C, S, S]` (one window per sample) or `[B, N, C, S, S]` (all prefixes), in `x.dtype`.
        Differentiable w.r.t. x: the op is a symmetric projection, so its gradient is the same op
        applied to the upstream gradient.
    """
    check_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x must be square, got H={x.shape[-2]}, W={x.shape[-1]}")
    if all_prefixes:
        windows = _check_prefix_windows(windows, x.shape[-1])
    else:
        _check_sample_windows(windows, x)
    impl = choose_kernel("spectral_subimages", "all_prefixes" if all_prefixes else "one_window", x, s=x.shape[-1])
    if impl is not None:
        from .triton import SubimagesFunction

        return SubimagesFunction.apply(x, windows, all_prefixes, impl)
    # fp16/bf16: in fp32 on the CPU, in their own dtype on a GPU (cuBLAS accumulates in fp32), one rounding at the end
    xc = x.to(dct_ref.compute_dtype(x.device.type, x.dtype))
    return ref.spectral_subimages(xc, windows, all_prefixes).to(x.dtype)
