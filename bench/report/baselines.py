"""The strongest plain-PyTorch ways a user would compute each op: the bar our kernels are held to.

The op's own reference (`<op>/ref.py`) is timed too (role "ref"); these are the alternatives (role "baseline")
a user of a GPU would write instead, each built once per case outside the timed call (bases, masks, compiled
functions), as a user's model would hold them:
    dct2d plane           matmul form D_H @ x @ D_W^T (cuBLAS), torch.compile of the reference, torch-dct
    dct2d blockwise       one GEMM against the kron(D_b, D_b) basis on the blocks laid out as rows
    spectral_subimages    matmul form D^T ((D x D^T) * M_w) D with the masks built per call; torch.compile
                          of the reference
    vq_nearest            matmul + argmin (l2: ||c||^2 - 2 z c^T), torch.cdist + argmin; cosine: matmul + argmax
    attention             SDPA on each backend (flash, memory-efficient, cuDNN, math; a backend that rejects
                          the case is an n/a row), SDPA with a boolean mask, FlexAttention with a block mask
                          (compiled), flash-attn when installed
    attention_with_kvcache  a hand-written step: index_put of the new k/v at cache_seqlens, then SDPA with a
                          boolean mask; flash-attn's flash_attn_with_kvcache when installed
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .common import LOWP, Ctx, optional_module
from .timing import Provider, compiled

__all__ = ["attention", "dct", "decode", "subimages", "vq"]


def _basis(n: int, x: torch.Tensor) -> torch.Tensor:
    from spectralar_kernels.transforms.ref import dct_basis

    return dct_basis(n, torch.float32, x.device).to(x.dtype)


def _blocks_as_rows(x: torch.Tensor, b: int) -> torch.Tensor:
    """[..., H, W] -> [N, b*b], one b x b block per row (row-major inside the block)."""
    h, w = x.shape[-2:]
    t = x.reshape(-1, h // b, b, w // b, b).transpose(2, 3)  # [P, H/b, W/b, b, b]
    return t.reshape(-1, b * b)


def _rows_as_blocks(y: torch.Tensor, shape, b: int) -> torch.Tensor:
    h, w = shape[-2:]
    return y.reshape(-1, h // b, w // b, b, b).transpose(2, 3).reshape(shape)


def dct(ctx: Ctx, x: torch.Tensor, block: int | None) -> list[Provider]:
    from spectralar_kernels.transforms import ref

    h, w = x.shape[-2:]
    if block is not None:
        d = _basis(block, x)
        kron = torch.kron(d, d).T.contiguous()  # y_row = x_row @ kron(D, D)^T
        return [Provider("kron GEMM", lambda: _rows_as_blocks(_blocks_as_rows(x, block) @ kron, x.shape, block))]
    dh, dwt = _basis(h, x), _basis(w, x).T.contiguous()
    fn, suffix = compiled(ctx, ref.dct2d)
    out = [Provider("matmul D x D^T", lambda: dh @ x @ dwt), Provider(f"torch.compile(ref){suffix}", lambda: fn(x))]
    if (torch_dct := optional_module("torch_dct")) is not None:
        out.append(Provider("torch-dct", lambda: torch_dct.dct_2d(x, norm="ortho")))
    return out


def subimages(ctx: Ctx, x: torch.Tensor, windows, all_prefixes: bool) -> list[Provider]:
    from spectralar_kernels.subimages import ref

    s = x.shape[-1]
    d = _basis(s, x)
    dt = d.T.contiguous()
    ar = torch.arange(s, device=x.device)
    if all_prefixes:
        w = torch.as_tensor(list(windows), device=x.device)

        def matmul():
            m = (ar < w[:, None]).to(x.dtype)  # [N, S]
            c = (d @ x @ dt)[:, None]  # [B, 1, C, S, S]
            return dt @ (c * (m[:, None, :, None] * m[:, None, None, :])) @ d  # [B, N, C, S, S]
    else:

        def matmul():
            m = (ar < windows[:, None]).to(x.dtype)  # [B, S]
            return dt @ ((d @ x @ dt) * (m[:, None, :, None] * m[:, None, None, :])) @ d

    fn, suffix = compiled(ctx, ref.spectral_subimages)
    return [Provider("matmul D^T (D x D^T * M) D", matmul),
            Provider(f"torch.compile(ref){suffix}", lambda: fn(x, windows, all_prefixes))]  # fmt: skip


def vq(ctx: Ctx, z: torch.Tensor, c: torch.Tensor, metric: str) -> list[Provider]:
    """The unfused forms: an M x K matrix in the input dtype, then a reduction (codebook norms per call: the
    codebook changes every training step)."""
    if metric == "l2":
        return [Provider("matmul+argmin", lambda: (c.pow(2).sum(1) - 2 * z @ c.T).argmin(1)),
                Provider("torch.cdist+argmin", lambda: torch.cdist(z, c).argmin(1))]  # fmt: skip
    return [Provider("matmul+argmax", lambda: (F.normalize(z, dim=1) @ F.normalize(c, dim=1).T).argmax(1))]


def _bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # [B, T, H, D] <-> [B, H, T, D], a view as the reference takes


def attention(ctx: Ctx, t: int, causal: bool, prefix: int, dtype) -> list[tuple[str, object]]:
    """(name, f(q, k, v) -> o [B, T, H, D]) for the canonical mask (causal, prefix); the caller times the forward
    and forward + backward of each."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from spectralar_kernels.attn import ref

    mask = ref.attention_mask(t, t, True, prefix, ctx.device) if causal else None

    def sdpa(backend, use_mask):
        def f(q, k, v):
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                o = F.scaled_dot_product_attention(_bhtd(q), _bhtd(k), _bhtd(v), attn_mask=mask if use_mask else None,
                                                   is_causal=causal and not use_mask)  # fmt: skip
            return _bhtd(o)

        return f

    exact = not prefix  # full or plain causal: is_causal expresses the mask, every backend may take it
    out = [(f"SDPA {name} backend", sdpa(b, not exact))
           for name, b in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                           ("cuDNN", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH))]  # fmt: skip
    if causal:
        out.append(("SDPA, boolean mask", sdpa(None, True)))
        out.append(_flex(ctx, t, prefix))
    flash = optional_module("flash_attn") if ctx.cuda else None
    if flash is not None and dtype in LOWP and exact:
        out.append(("flash-attn", lambda q, k, v: flash.flash_attn_func(q, k, v, causal=causal)))
    return out


def _flex(ctx: Ctx, t: int, prefix: int):
    """FlexAttention with a block mask for key j visible to query i iff j <= i or j < prefix (built once)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def visible(b, h, qi, kj):
        return (kj <= qi) | (kj < prefix)

    block_mask = create_block_mask(visible, None, None, t, t, device=ctx.device)
    fn, suffix = compiled(ctx, flex_attention)
    return f"FlexAttention, block mask{suffix}", lambda q, k, v: _bhtd(fn(_bhtd(q), _bhtd(k), _bhtd(v),
                                                                          block_mask=block_mask))


def decode(ctx: Ctx, q, kc, vc, k, v, sl) -> list[Provider]:
    """One decoding step as a user writes it without our op: append at cache_seqlens, mask, SDPA."""
    b, t_max = kc.shape[:2]
    rows, slots = torch.arange(b, device=q.device), torch.arange(t_max, device=q.device)
    pos = sl.long()

    def step():
        kc[rows, pos] = k[:, 0]
        vc[rows, pos] = v[:, 0]
        mask = (slots <= pos[:, None])[:, None, None]  # [B, 1, 1, T_max]
        return _bhtd(F.scaled_dot_product_attention(_bhtd(q), _bhtd(kc), _bhtd(vc), attn_mask=mask))

    out = [Provider("index_put + SDPA (hand-written step)", step)]
    flash = optional_module("flash_attn") if ctx.cuda else None
    if flash is not None and q.dtype in LOWP:
        fn = flash.flash_attn_with_kvcache
        out.append(Provider("flash-attn", lambda: fn(q, kc, vc, k=k, v=v, cache_seqlens=sl, causal=True)))
    return out
