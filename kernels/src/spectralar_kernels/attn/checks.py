"""Argument checks and backend availability shared by the attention entries.

Errors: `ArgumentError` is a ValueError (this package's rule: a bad value names itself) and also a RuntimeError,
the type flash-attn's own checks raise (its C++ `TORCH_CHECK`), so code written against either library catches
it. `scaled_dot_product_attention` instead lets torch raise its own errors (sdpa.py).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import operator
import os

import torch

from .._common import _backend, check_same_device, kernels_mode

__all__ = [
    "MAX_HEAD_DIM",
    "TRITON_MAX_HEAD_DIM",
    "ArgumentError",
    "check_bool",
    "check_bthd",
    "check_scale",
    "flash_attn_installed",
    "flash_attn_usable",
    "kernels_forced",
    "same_device",
    "window_pair",
]

MAX_HEAD_DIM = 256  # validation limit (flash-attn's)
TRITON_MAX_HEAD_DIM = 128  # larger heads use the reference
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError naming the value, and the RuntimeError flash-attn raises for it."""


@functools.cache
def flash_attn_installed() -> bool:
    """Whether the `flash_attn` package can be imported (looked up once per process)."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_attn_usable(*tensors: torch.Tensor) -> bool:
    """flash-attn may run these tensors: CUDA fp16/bf16, head dim % 8 == 0, SPECTRALAR_KERNELS=auto, not tracing,
    and the package installed."""
    q = tensors[0]
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] % 8 != 0:
        return False
    if not all(t.is_cuda for t in tensors) or torch.compiler.is_compiling():
        return False
    return kernels_mode() == "auto" and flash_attn_installed()


# CPython's raw environment dict (bytes keys and values on POSIX; os.environ writes through to it), else None
_ENV = os.environ._data if os.name == "posix" and type(getattr(os.environ, "_data", None)) is dict else None
_ENV_KEY = b"SPECTRALAR_KERNELS"


def kernels_forced() -> bool:
    """`kernels_mode().startswith("triton")`: whether a Triton kernel may run on CPU tensors (the interpreter).

    The cheap form the KV-cache selector asks per call: `os.environ.get` encodes the key and decodes the value
    in Python (1.8 us per call on a loaded 2-core machine, 5% of a small CPU decoding step); the raw dict
    lookup is 0.05 us. Same answer: the `use_backend` block first, then the environment variable. torch.compile cannot
    trace a context variable: it calls this once per compilation and keeps the answer (a graph compiled under
    one mode keeps that mode's structure; `torch._dynamo.reset()` after changing it).
    """
    forced = _backend.get()
    if forced is not None:
        return forced.startswith("triton")
    if _ENV is None:
        return kernels_mode().startswith("triton")
    raw = _ENV.get(_ENV_KEY)
    return raw is not None and raw[:6].lower() == b"triton"


# What `torch.compiler.assume_constant_result(kernels_forced)` sets, without importing torch._dynamo (seconds,
# and the model stack) when this package is imported.
kernels_forced._dynamo_marked_constant = True


def same_device(**tensors) -> None:
    """ArgumentError unless every tensor among the arguments is on one device."""
    try:
        check_same_device(**tensors)
    except ValueError as e:
        raise ArgumentError(str(e)) from None


def check_bool(name: str, flag) -> None:
    if not isinstance(flag, bool):
        raise ArgumentError(f"{name} must be a bool, got {flag!r}")


def check_scale(softmax_scale, name: str = "softmax_scale") -> None:
    """ArgumentError unless None or a finite number (zero and negative scales are valid: every path masks after
    scaling)."""
    if softmax_scale is None:
        return
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise ArgumentError(f"{name} must be a float or None, got {softmax_scale!r}")
    if not math.isfinite(softmax_scale):
        raise ArgumentError(f"{name} must be finite, got {softmax_scale!r}")


def window_pair(window_size) -> tuple[int, int]:
    """`(left, right)` ints >= -1 from a tuple, a list or a 2-element integer tensor (flash-attn takes all three;
    a CUDA tensor is read on the host, as flash-attn's binding reads it)."""
    if isinstance(window_size, torch.Tensor) and not window_size.is_floating_point() and window_size.numel() == 2:
        window_size = window_size.reshape(2).tolist()
    ok = isinstance(window_size, (tuple, list)) and len(window_size) == 2
    try:
        pair = tuple(operator.index(w) for w in window_size) if ok and not any(isinstance(w, bool) for w in
                                                                                window_size) else None
    except TypeError:
        pair = None
    if pair is None or min(pair) < -1:
        raise ArgumentError(f"window_size must be (left, right), ints >= -1 (-1: unbounded), got {window_size!r}")
    return pair


def check_bthd(name: str, t, ref_name: str | None = None, ref: torch.Tensor | None = None, same: str = "BHD",
               dtypes: tuple = FLOAT_DTYPES) -> None:  # fmt: skip
    """ArgumentError unless t is a non-empty `[B, T, H, D]` tensor of `dtypes`, with ref's dtype and, of ref's
    B, H, D, those in `same`."""
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        raise ArgumentError(f"{name} must be {', '.join(names[:-1])} or {names[-1]}, got {t.dtype}")
    if t.dim() != 4:
        raise ArgumentError(f"{name} must be [B, T, H, D] (4 dims), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ArgumentError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.shape[-1] > MAX_HEAD_DIM:
        raise ArgumentError(f"{name}: head dim D={t.shape[-1]} exceeds {MAX_HEAD_DIM}")
    if ref is None:
        return
    if t.dtype != ref.dtype:
        raise ArgumentError(f"{name} dtype {t.dtype} differs from {ref_name} dtype {ref.dtype}")
    for axis, label in ((0, "B"), (2, "H"), (3, "D")):
        if label in same and t.shape[axis] != ref.shape[axis]:
            raise ArgumentError(
                f"{name} shape {tuple(t.shape)} and {ref_name} shape {tuple(ref.shape)} differ in {label}"
            )
