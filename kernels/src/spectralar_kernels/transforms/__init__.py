"""DCTs with scipy.fft's conventions on torch tensors.

`dct`, `idct`, `dctn`, `idctn`: scipy.fft's functions, same signatures and defaults (type 2, norm None =
"backward", every axis for dctn), DCT types 1 to 4, `orthogonalize`; docs/kernels.md lists the differences.
`dct2d`, `idct2d`: our 2-D form (norm "ortho" by default, `block=b` for JPEG-style b x b blocks, `dim`).
`LinearDCT`: torch-dct's `nn.Linear` that applies a 1-D transform as a matrix.

Every transform is post * core(pre * x) per axis (`ref.axis_factors`): types 2 and 3 with any norm run the
orthonormal 2-D DCT-II or its inverse over pairs of axes (one axis: a plane of height 1), so they take the
Triton kernels where the dispatch allows; the factors are applied in fp32 or float64. Types 1 and 4 and float64
always run the PyTorch reference.
"""

from __future__ import annotations

import functools

import torch

from .._common import FLOAT_DTYPES, check_float, choose_kernel
from . import _scipy_args as args
from . import ref
from .linear import LinearDCT
from .ref import BLOCKWISE_MAX

__all__ = ["LinearDCT", "dct", "dct2d", "dctn", "idct", "idct2d", "idctn"]

DTYPES = (*FLOAT_DTYPES, torch.float64)


def _dims(dim, ndim: int) -> tuple[int, int]:
    """The two transformed dims of dct2d, non-negative and ascending (the transform is symmetric in them)."""
    if not isinstance(dim, (tuple, list)) or len(dim) != 2:
        raise ValueError(f"dim must be a pair of dims, got {dim!r}")
    out = []
    for d in dim:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(f"dim={tuple(dim)}: each entry must be an int in [{-ndim}, {ndim}) for a {ndim}-d x")
        out.append(d % ndim)
    if out[0] == out[1]:
        raise ValueError(f"dim={tuple(dim)} names the same dim twice")
    return min(out), max(out)


def _check_block(block, h: int, w: int) -> None:
    if block is None:
        return
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int or None, got {block!r}")
    if h % block or w % block:
        raise ValueError(f"block={block} must divide both H={h} and W={w}")


@functools.lru_cache(maxsize=64)
def _tables(t: int, sizes: tuple[int, ...], block, norm: str, orth: bool, inverse: bool, dtype, device):
    """(core_inverse, pre, post) for the transform over the last len(sizes) (1 or 2) dims: pre / post the
    per-coefficient factors [.., W] (None when all 1), each b x b block with its own when `block` is given."""
    pre, post, core = torch.ones(()), torch.ones(()), None
    pre_used = post_used = False
    for n in sizes:
        b = block or n
        core, p, q = ref.axis_factors(t, b, norm, orth, inverse)
        pre = pre[..., None] * (torch.ones(n, dtype=torch.float64) if p is None else p.repeat(n // b))
        post = post[..., None] * (torch.ones(n, dtype=torch.float64) if q is None else q.repeat(n // b))
        pre_used, post_used = pre_used or p is not None, post_used or q is not None
    put = dict(dtype=dtype, device=device)
    return core == "dct3", pre.to(**put) if pre_used else None, post.to(**put) if post_used else None


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """t * scale computed in scale's dtype (fp32 / float64), returned in t's dtype."""
    if scale is None:
        return t
    return t * scale if t.dtype == scale.dtype else (t.to(scale.dtype) * scale).to(t.dtype)


def _run(x: torch.Tensor, block, t: int, sizes: tuple[int, ...], norm: str, orth: bool, inverse: bool):
    """Type t (2 or 3) over the last two dims of x, scipy's scalings for the last len(sizes) of them."""
    scale_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    core_inverse, pre, post = _tables(t, sizes, block, norm, orth, inverse, scale_dtype, x.device)
    impl = None
    if x.dtype != torch.float64:  # float64 never reaches a kernel
        # Blocks above BLOCKWISE_MAX run the whole-plane kernel on gathered tiles: the plane decision applies.
        impl = choose_kernel("dct2d", "plane" if block is None or block > BLOCKWISE_MAX else "blockwise", x,
                             h=x.shape[-2], w=x.shape[-1], block=block)
    if impl is None:
        fn = ref.idct2d if core_inverse else ref.dct2d
        xc = x.to(ref.compute_dtype(x.device.type, x.dtype))  # one rounding to x's dtype at the end
        return _scaled(fn(_scaled(xc, pre), block), post).to(x.dtype)
    if block is not None:
        from .blockwise import BlockwiseDCTFunction as Function
    else:
        from .triton import DCT2dFunction as Function
    return _scaled(Function.apply(_scaled(x, pre), block, core_inverse, impl), post)


def _transform2d(x, block, norm, dim, inverse: bool) -> torch.Tensor:
    check_float("x", x, 2, DTYPES)
    _, norm, _ = args.check_common(2, norm, None, None)
    a, b = _dims(dim, x.dim())
    _check_block(block, x.shape[a], x.shape[b])
    last = (a, b) == (x.dim() - 2, x.dim() - 1)
    xm = x if last else x.movedim((a, b), (-2, -1))
    y = _run(xm, block, 2, (xm.shape[-2], xm.shape[-1]), norm, norm == "ortho", inverse)
    return y if last else y.movedim((-2, -1), (a, b))


def dct2d(x: torch.Tensor, block: int | None = None, norm: str | None = "ortho", dim=(-2, -1)) -> torch.Tensor:
    """2-D DCT-II over two dims, as `scipy.fft.dctn(x, type=2, norm=norm, axes=dim)`.

    Args:
        x: float32/float16/bfloat16, or float64 (always the PyTorch reference), at least 2-D; any sizes >= 1.
        block: None for the whole plane, or b for independent b x b blocks (JPEG style, each block
            transformed with `norm` as its own b x b plane); b must divide both transformed sizes.
        norm: "ortho" (orthonormal, the default here), "backward" or None (scipy's default: no scaling on the
            forward transform, y[k] = 2 sum x cos(...) per axis, DC term not orthogonalised) or "forward" (the
            1/(2n)-per-axis scaling on the forward transform). `idct2d` with the same norm inverts it.
        dim: the two dims to transform (distinct; negative or positive); the order does not matter.
    Returns:
        coefficients of x's shape and dtype (accumulated in fp32 for fp16/bf16); along each transformed
        dim, index k is frequency k. Differentiable: for norm="ortho" the gradient is `idct2d` of the
        upstream gradient.
    """
    return _transform2d(x, block, norm, dim, inverse=False)


def idct2d(x: torch.Tensor, block: int | None = None, norm: str | None = "ortho", dim=(-2, -1)) -> torch.Tensor:
    """Inverse of `dct2d` with the same `norm`, as `scipy.fft.idctn(x, type=2, norm=norm, axes=dim)`.

    Same arguments and shapes as `dct2d`; for norm="ortho" its gradient is `dct2d` of the upstream gradient.
    """
    return _transform2d(x, block, norm, dim, inverse=True)


def _resize(x: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """x cropped or zero-padded at the end to length n along `axis` (scipy's n / s)."""
    size = x.shape[axis]
    if n < size:
        return x.narrow(axis, 0, n)
    if n > size:
        pad = list(x.shape)
        pad[axis] = n - size
        return torch.cat([x, x.new_zeros(pad)], dim=axis)
    return x


def _fft_type(x: torch.Tensor, axis: int, t: int, norm: str, orth: bool, inverse: bool) -> torch.Tensor:
    """Types 1 and 4 along one axis: the reference's FFT forms, in fp32 (fp16/bf16) or float64."""
    n = x.shape[axis]
    core, pre, post = ref.axis_factors(t, n, norm, orth, inverse)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xm = x.movedim(axis, -1).to(compute)
    if pre is not None:
        xm = xm * pre.to(dtype=compute, device=x.device)
    y = (ref.dct1_fft if core == "t1" else ref.dct4_fft)(xm)
    if post is not None:
        y = y * post.to(dtype=compute, device=x.device)
    return y.to(x.dtype).movedim(-1, axis)


def _transform_axes(x: torch.Tensor, t: int, axes: list[int], norm: str, orth: bool, inverse: bool):
    """Type t over each of `axes` (distinct, non-negative): types 2 and 3 two axes at a time (one pass of the
    2-D transform), a last single axis as planes of height 1; types 1 and 4 one axis at a time."""
    if t in (1, 4):
        for a in axes:
            x = _fft_type(x, a, t, norm, orth, inverse)
        return x
    for i in range(0, len(axes) - 1, 2):
        a, b = axes[i], axes[i + 1]
        xm = x.movedim((a, b), (-2, -1))
        x = _run(xm, None, t, (xm.shape[-2], xm.shape[-1]), norm, orth, inverse).movedim((-2, -1), (a, b))
    if len(axes) % 2:
        a = axes[-1]
        xm = x.unsqueeze(a).movedim((a, a + 1), (-2, -1))  # [..., 1, n]: the length-1 DCT is the identity
        x = _run(xm, None, t, (xm.shape[-1],), norm, orth, inverse).movedim((-2, -1), (a, a + 1)).squeeze(a)
    return x


def _check_type1(t: int, sizes) -> None:
    if t == 1 and min(sizes, default=2) < 2:
        raise RuntimeError(f"the DCT-I needs at least 2 points along each axis, got sizes {list(sizes)}")


def _dct(x, type, n, axis, norm, workers, orthogonalize, inverse: bool) -> torch.Tensor:  # noqa: A002
    x = args.as_input(x)
    t, norm, orth = args.check_common(type, norm, workers, orthogonalize)
    if x.dim() == 0:
        raise IndexError("x is 0-d: a 1-D DCT needs an axis")
    a = args.resolve_axis(axis, x.dim())
    size = args.check_size(x.shape[a] if n is None else n)
    _check_type1(t, [size])
    return _transform_axes(_resize(x, a, size), t, [a], norm, orth, inverse)


def _dctn(x, type, s, axes, norm, workers, orthogonalize, inverse: bool) -> torch.Tensor:  # noqa: A002
    x = args.as_input(x)
    t, norm, orth = args.check_common(type, norm, workers, orthogonalize)
    axes, sizes = args.resolve_axes(s, axes, tuple(x.shape))
    sizes = [args.check_size(size) for size in sizes]
    _check_type1(t, sizes)
    for a, size in zip(axes, sizes):
        x = _resize(x, a, size)
    return _transform_axes(x, t, axes, norm, orth, inverse) if axes else x.clone()


def dct(x, type=2, n=None, axis=-1, norm=None, overwrite_x=False, workers=None, orthogonalize=None):  # noqa: A002
    """DCT along one axis, as `scipy.fft.dct` (same signature, defaults and results) on a torch tensor.

    Args:
        x: a tensor, float16/bfloat16/float32/float64 (results in its dtype; integer and bool inputs are
            computed in float64, as scipy does). Complex input is not supported.
        type: 1, 2 (default), 3 or 4. n: transform length (crop or zero-pad x along `axis`); None: x's size.
        axis: the axis (default the last). norm: None or "backward" (default: unscaled forward transform),
            "ortho" or "forward". orthogonalize: None (True exactly for norm="ortho"), True or False.
        overwrite_x: accepted, ignored (x is never modified). workers: checked as scipy does, then ignored
            (torch's intra-op threads apply: torch.set_num_threads).
    Returns:
        The coefficients, differentiable. Types 2 and 3 may run the Triton kernels (module docstring).
    Raises:
        As scipy: ValueError (type, norm, n < 1, an empty axis), IndexError (axis), TypeError (non-int type,
        n, axis, workers), RuntimeError (type 1 with one point); NotImplementedError for complex input.
    """
    return _dct(x, type, n, axis, norm, workers, orthogonalize, inverse=False)


def idct(x, type=2, n=None, axis=-1, norm=None, overwrite_x=False, workers=None, orthogonalize=None):  # noqa: A002
    """Inverse of `dct` with the same type, norm and orthogonalize, as `scipy.fft.idct` (arguments as `dct`)."""
    return _dct(x, type, n, axis, norm, workers, orthogonalize, inverse=True)


def dctn(x, type=2, s=None, axes=None, norm=None, overwrite_x=False, workers=None, *, orthogonalize=None):  # noqa: A002
    """N-D DCT, as `scipy.fft.dctn` (same signature, defaults and results) on a torch tensor.

    Args:
        s: transform sizes per axis (crop or zero-pad; -1 keeps x's size; an int means one axis);
        axes: the axes (an int or a sequence; default the last len(s) axes when s is given, else all).
        The rest as `dct`. axes=() returns a copy of x.
    Returns:
        The coefficients, differentiable. Type 2 / 3 pairs of axes run as one 2-D transform (kernels allowed).
    Raises:
        As scipy: ValueError (type, norm, sizes, repeated or out-of-range axes, s and axes of different lengths),
        TypeError (non-int entries), RuntimeError (type 1 with one point); NotImplementedError for complex input.
    """
    return _dctn(x, type, s, axes, norm, workers, orthogonalize, inverse=False)


def idctn(x, type=2, s=None, axes=None, norm=None, overwrite_x=False, workers=None, orthogonalize=None):  # noqa: A002
    """Inverse of `dctn` with the same type, norm and orthogonalize, as `scipy.fft.idctn` (arguments as `dctn`;
    orthogonalize may be passed by position here, as scipy's signature allows)."""
    return _dctn(x, type, s, axes, norm, workers, orthogonalize, inverse=True)
