"""Argument checks of `dct`, `idct`, `dctn` and `idctn`, with scipy.fft's exception types and messages' gist.

scipy raises ValueError for a bad type, norm, size or repeated axes, IndexError for an axis out of range
(1-D functions), TypeError for a non-integer type, size, axis or worker count, and RuntimeError for a DCT-I of
one point; the same calls raise the same types here (tests/test_dct_scipy.py checks them against scipy).
Everything is checked before any work.
"""

from __future__ import annotations

import operator

import torch

from . import ref

__all__ = ["as_input", "check_common", "check_size", "resolve_axes", "resolve_axis"]


def _index(value, what: str) -> int:
    """`value` as an int (anything with __index__, not bool or float), else TypeError naming `what`."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


def as_input(x) -> torch.Tensor:
    """x as the tensor to transform: floating dtypes as they are, integer and bool tensors as float64 (scipy
    computes those in float64); complex input is not supported (NotImplementedError), nor non-tensors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (scipy's array-likes are not converted), got {type(x).__name__}")
    if x.is_complex():
        raise NotImplementedError(f"complex input ({x.dtype}) is not supported: transform .real and .imag separately")
    if not x.is_floating_point():
        return x.to(torch.float64)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise NotImplementedError(f"dtype {x.dtype} is not supported (float16, bfloat16, float32, float64)")
    return x


def check_common(type, norm, workers, orthogonalize) -> tuple[int, str, bool]:  # noqa: A002 (scipy's name)
    """(type, norm, orthogonalize) resolved: norm None -> "backward"; orthogonalize None -> norm == "ortho".
    `workers` is checked as scipy checks it (an int, not 0) and otherwise ignored."""
    t = _index(type, "type")
    if t not in ref.TYPES:
        raise ValueError(f"invalid DCT type {t}: must be 1, 2, 3 or 4")
    if norm is None:
        norm = "backward"
    if norm not in ref.NORMS:
        raise ValueError(f"Invalid norm value {norm!r}, should be None, 'backward', 'ortho' or 'forward'")
    if workers is not None and _index(workers, "workers") == 0:
        raise ValueError("workers must not be zero")
    if orthogonalize is None:
        orthogonalize = norm == "ortho"
    return t, norm, bool(orthogonalize)


def check_size(n, what: str = "n") -> int:
    """A transform length: an int >= 1 (ValueError otherwise, as scipy: "invalid number of data points")."""
    n = _index(n, what)
    if n < 1:
        raise ValueError(f"invalid number of data points ({n}) specified")
    return n


def resolve_axis(axis, ndim: int) -> int:
    """A 1-D transform's axis, non-negative: IndexError when out of range (as scipy), TypeError if not an int."""
    a = _index(axis, "axis")
    if not -ndim <= a < ndim:
        raise IndexError(f"axis {a} is out of range for a {ndim}-d input")
    return a % ndim


def resolve_axes(s, axes, shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """scipy's (s, axes) of dctn / idctn: (axes, sizes), both lists, axes non-negative and unique.

    axes None: the last len(s) axes when s is given, else all. s None: the input's sizes; -1 in s: the input's
    size on that axis. An int stands for a 1-tuple. Errors as scipy: ValueError for lengths that differ, repeated
    or out-of-range axes and sizes < 1 (other than -1)."""
    ndim = len(shape)
    if s is not None and not isinstance(s, (list, tuple)):
        s = [s]
    if axes is not None and not isinstance(axes, (list, tuple)):
        axes = [axes]
    if axes is None:
        axes = list(range(ndim - len(s), ndim)) if s is not None else list(range(ndim))
    axes = [_index(a, "axes entry") for a in axes]
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axes {tuple(axes)} exceeds dimensionality of input ({ndim})")
    axes = [a % ndim for a in axes]
    if len(set(axes)) != len(axes):
        raise ValueError(f"all axes must be unique, got {tuple(axes)}")
    if s is None:
        return axes, [shape[a] for a in axes]
    if len(s) != len(axes):
        raise ValueError(f"when given, axes and shape arguments have to be of the same length (s={s}, axes={axes})")
    sizes = [_index(n, "s entry") for n in s]
    sizes = [shape[a] if n == -1 else n for a, n in zip(axes, sizes)]
    if any(n < 1 for n in sizes):
        raise ValueError(f"invalid number of data points ({list(s)}) specified")
    return axes, sizes
