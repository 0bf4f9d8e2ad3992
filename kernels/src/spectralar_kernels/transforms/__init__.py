"""DCT-II and its inverse with scipy.fft's conventions: 2-D (`dct2d`, `idct2d`, whole-plane or JPEG-style
blockwise) and 1-D (`dct`, `idct`), over any dims, with norm "ortho" (default), "backward" or "forward".

The kernels and the reference compute the orthonormal transform; the other norms are a per-frequency
scaling of it (`ref.norm_scale`), applied to the output (forward) or to the input (inverse) in fp32 or
float64. float64 always runs the reference (the Triton kernels are fp32/fp16/bf16 only).
"""

from __future__ import annotations

import functools

import torch

from .._common import FLOAT_DTYPES, check_float, choose_kernel
from . import ref
from .ref import BLOCKWISE_MAX

__all__ = ["dct", "dct2d", "idct", "idct2d"]

DTYPES = (*FLOAT_DTYPES, torch.float64)


def _check_norm(norm) -> None:
    if norm not in ref.NORMS:
        raise ValueError(f"norm must be one of {ref.NORMS}, got {norm!r}")


def _axis(d, ndim: int, name: str = "dim") -> int:
    """`d` as a non-negative dim of an ndim-d tensor (ValueError naming the bad value)."""
    if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}) for a {ndim}-d x, got {d!r}")
    return d % ndim


def _dims(dim, ndim: int) -> tuple[int, int]:
    """The two transformed dims, non-negative and ascending (the separable transform is symmetric in them)."""
    if not isinstance(dim, (tuple, list)) or len(dim) != 2:
        raise ValueError(f"dim must be a pair of dims, got {dim!r}")
    a, b = (_axis(d, ndim, f"dim={tuple(dim)}: each entry") for d in dim)
    if a == b:
        raise ValueError(f"dim={tuple(dim)} names the same dim twice")
    return min(a, b), max(a, b)


def _check_block(block, h: int, w: int) -> None:
    if block is None:
        return
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int or None, got {block!r}")
    if h % block or w % block:
        raise ValueError(f"block={block} must divide both H={h} and W={w}")


@functools.lru_cache(maxsize=32)
def _scale_table(sizes: tuple[int, ...], block, norm: str, inverse: bool, dtype, device) -> torch.Tensor:
    """Per-coefficient factors [*sizes] for `norm` (blockwise: the factors of one block, tiled)."""
    table = torch.ones((), dtype=torch.float64)
    for n in sizes:
        b = block or n
        table = table[..., None] * ref.norm_scale(b, norm).repeat(n // b)
    return (1 / table if inverse else table).to(dtype=dtype, device=device)


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """t * scale computed in scale's dtype (fp32 / float64), returned in t's dtype."""
    if scale is None:
        return t
    return t * scale if t.dtype == scale.dtype else (t.to(scale.dtype) * scale).to(t.dtype)


def _run(x: torch.Tensor, block: int | None, inverse: bool, scale_sizes: tuple[int, ...], norm: str) -> torch.Tensor:
    """The transform over the last two dims of x; `scale_sizes`: the dims `norm` scales (1-D: only the last)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = None if norm == "ortho" else _scale_table(scale_sizes, block, norm, inverse, compute, x.device)
    impl = None
    if x.dtype != torch.float64:  # float64 never reaches a kernel
        # Blocks above BLOCKWISE_MAX run the whole-plane kernel on gathered tiles: the plane decision applies.
        impl = choose_kernel("dct2d", "plane" if block is None or block > BLOCKWISE_MAX else "blockwise", x,
                             h=x.shape[-2], w=x.shape[-1], block=block)
    if impl is None:
        fn = ref.idct2d if inverse else ref.dct2d
        xc = x.to(compute)  # fp32 accumulation (and scaling) for fp16/bf16, one rounding to the input dtype
        if inverse:
            return fn(_scaled(xc, scale), block).to(x.dtype)
        return _scaled(fn(xc, block), scale).to(x.dtype)
    if block is not None:
        from .blockwise import BlockwiseDCTFunction as Function
    else:
        from .triton import DCT2dFunction as Function
    if inverse:
        return Function.apply(_scaled(x, scale), block, inverse, impl)
    return _scaled(Function.apply(x, block, inverse, impl), scale)


def _transform2d(x, block, norm, dim, inverse: bool) -> torch.Tensor:
    check_float("x", x, 2, DTYPES)
    _check_norm(norm)
    a, b = _dims(dim, x.dim())
    _check_block(block, x.shape[a], x.shape[b])
    last = (a, b) == (x.dim() - 2, x.dim() - 1)
    xm = x if last else x.movedim((a, b), (-2, -1))
    y = _run(xm, block, inverse, (xm.shape[-2], xm.shape[-1]), norm)
    return y if last else y.movedim((-2, -1), (a, b))


def _transform1d(x, dim, norm, inverse: bool) -> torch.Tensor:
    check_float("x", x, 1, DTYPES)
    _check_norm(norm)
    d = _axis(dim, x.dim())
    # a plane of height 1 (the orthonormal DCT of length 1 is the identity); `norm` scales only `dim`
    xm = x.unsqueeze(d).movedim((d, d + 1), (-2, -1))
    y = _run(xm, None, inverse, (xm.shape[-1],), norm)
    return y.movedim((-2, -1), (d, d + 1)).squeeze(d)


def dct2d(x: torch.Tensor, block: int | None = None, norm: str = "ortho", dim=(-2, -1)) -> torch.Tensor:
    """2-D DCT-II over two dims, as `scipy.fft.dctn(x, type=2, norm=norm, axes=dim)`.

    Args:
        x: float32/float16/bfloat16, or float64 (always the PyTorch reference), at least 2-D; any sizes >= 1.
        block: None for the whole plane, or b for independent b x b blocks (JPEG style, each block
            transformed with `norm` as its own b x b plane); b must divide both transformed sizes.
        norm: "ortho" (orthonormal, the default), "backward" (scipy's default: no scaling on the forward
            transform, y[k] = 2 sum x cos(...) per axis, DC term not orthogonalised) or "forward" (the
            1/(2n)-per-axis scaling on the forward transform). `idct2d` with the same norm inverts it.
        dim: the two dims to transform (distinct; negative or positive); the order does not matter.
    Returns:
        coefficients of x's shape and dtype (accumulated in fp32 for fp16/bf16); along each transformed
        dim, index k is frequency k. Differentiable: for norm="ortho" the gradient is `idct2d` of the
        upstream gradient.
    """
    return _transform2d(x, block, norm, dim, inverse=False)


def idct2d(x: torch.Tensor, block: int | None = None, norm: str = "ortho", dim=(-2, -1)) -> torch.Tensor:
    """Inverse of `dct2d` with the same `norm`, as `scipy.fft.idctn(x, type=2, norm=norm, axes=dim)`.

    Same arguments and shapes as `dct2d`; for norm="ortho" its gradient is `dct2d` of the upstream gradient.
    """
    return _transform2d(x, block, norm, dim, inverse=True)


def dct(x: torch.Tensor, dim: int = -1, norm: str = "ortho") -> torch.Tensor:
    """1-D DCT-II along `dim`, as `scipy.fft.dct(x, type=2, norm=norm, axis=dim)` (`norm` as in `dct2d`).

    x: float32/float16/bfloat16 or float64 (reference), at least 1-D. Runs as `dct2d` of height-1 planes,
    so it takes the same dispatch (and kernels) as `dct2d`.
    """
    return _transform1d(x, dim, norm, inverse=False)


def idct(x: torch.Tensor, dim: int = -1, norm: str = "ortho") -> torch.Tensor:
    """Inverse of `dct` with the same `norm`, as `scipy.fft.idct(x, type=2, norm=norm, axis=dim)`."""
    return _transform1d(x, dim, norm, inverse=True)
