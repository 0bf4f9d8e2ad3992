"""Orthonormal 2-D DCT-II (`dct2d`) and its inverse (`idct2d`), whole-plane or JPEG-style blockwise."""

from __future__ import annotations

import torch

from .._common import check_float, choose_kernel
from . import ref

__all__ = ["dct2d", "idct2d"]

BLOCKWISE_MAX = 32  # larger blocks are gathered into planes and run the whole-plane kernel


def _check(name: str, x, block) -> None:
    check_float(name, x, min_ndim=2)
    if block is None:
        return
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int or None, got {block!r}")
    h, w = x.shape[-2], x.shape[-1]
    if h % block or w % block:
        raise ValueError(f"block={block} must divide both H={h} and W={w}")


def _dispatch(op: str, x: torch.Tensor, block: int | None, inverse: bool) -> torch.Tensor:
    _check("x", x, block)
    # Blocks above BLOCKWISE_MAX run the whole-plane kernel on gathered tiles: the plane decision applies.
    impl = choose_kernel("dct2d", "plane" if block is None or block > BLOCKWISE_MAX else "blockwise", x)
    if impl is not None and block is not None:
        from .blockwise import BlockwiseDCTFunction

        return BlockwiseDCTFunction.apply(x, block, inverse, impl)
    if impl is not None:
        from .triton import DCT2dFunction

        return DCT2dFunction.apply(x, block, inverse, impl)
    fn = ref.idct2d if inverse else ref.dct2d
    if x.dtype == torch.float32:
        return fn(x, block)
    return fn(x.float(), block).to(x.dtype)  # fp32 accumulation for fp16/bf16, output in the input dtype


def dct2d(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims, as `scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))`.

    Args:
        x: `[..., H, W]` float32/float16/bfloat16, any H and W >= 1.
        block: None for the whole plane, or b for independent b x b blocks (JPEG style); b must
            divide H and W.
    Returns:
        `[..., H, W]` coefficients in `x.dtype` (accumulated in fp32); `[..., u, v]` is vertical
        frequency u, horizontal frequency v. Differentiable: the gradient is `idct2d` of the
        upstream gradient.
    """
    return _dispatch("dct2d", x, block, inverse=False)


def idct2d(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Inverse of `dct2d` (orthonormal DCT-III), as `scipy.fft.idctn(x, type=2, norm="ortho", axes=(-2, -1))`.

    Same arguments and shapes as `dct2d`; its gradient is `dct2d` of the upstream gradient.
    """
    return _dispatch("idct2d", x, block, inverse=True)
