"""Plain-PyTorch attention: CPU path, test oracle and benchmark baseline.

Layout is flash-attn's `[B, T, H, D]`; `scaled_dot_product_attention` wants `[B, H, T, D]`, so the
reference transposes in and out. Masks use the same rule everywhere:

    key j is visible to query t  iff  not causal  or  j <= t  or  j < prefix_len       (attention)
    key j is visible to query t  iff  j <= cache_seqlens[b] + t                        (kv cache)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(
    t_q: int, t_k: int, causal: bool, prefix_len: int = 0, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """Boolean `[t_q, t_k]` mask (True = visible) for `attention`, or None when every key is visible."""
    if not causal or prefix_len >= t_k:
        return None
    t = torch.arange(t_q, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return (j <= t) | (j < prefix_len)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    prefix_len: int = 0,
    softmax_scale: float | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Softmax attention via SDPA. q, k, v `[B, T, H, D]` -> `[B, T, H, D]` in q's dtype.

    `upcast=True` computes in fp32 (returns fp32 for fp16/bf16 inputs); pass float64 tensors for a
    float64 oracle. Differentiable.
    """
    out_dtype = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
        out_dtype = torch.float32
    t_q, t_k = q.shape[1], k.shape[1]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    plain_causal = causal and prefix_len <= 1 and t_q == t_k
    mask = None if plain_causal else attention_mask(t_q, t_k, causal, prefix_len, q.device)
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=plain_causal, scale=softmax_scale)
    return o.transpose(1, 2).to(out_dtype)


def write_kvcache(
    k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """In place: `k_cache[b, cache_seqlens[b] + t] = k[b, t]` (same for v), for t in 0..Tq-1."""
    b, t_q = k.shape[:2]
    pos = cache_seqlens.long()[:, None] + torch.arange(t_q, device=k.device)  # [B, Tq]
    rows = torch.arange(b, device=k.device)[:, None].expand(b, t_q)
    k_cache[rows, pos] = k
    v_cache[rows, pos] = v


def attention_with_kvcache_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Attention of q `[B, Tq, H, D]` against caches `[B, T_max, H, D]` that already hold the new keys.

    Query t of sample b sees cache positions `0 .. cache_seqlens[b] + t`. Only the first
    `max(cache_seqlens) + Tq` positions are read (all T_max, masked, while torch.compile traces, so the
    shapes stay static and no host sync breaks the graph). Returns `[B, Tq, H, D]`.
    """
    out_dtype = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k_cache, v_cache = q.float(), k_cache.float(), v_cache.float()
        out_dtype = torch.float32
    t_q = q.shape[1]
    if torch.compiler.is_compiling():
        t_k = k_cache.shape[1]
    else:
        t_k = min(int(cache_seqlens.max()) + t_q, k_cache.shape[1])
    kh = k_cache[:, :t_k].transpose(1, 2)  # [B, H, Tk, D]
    vh = v_cache[:, :t_k].transpose(1, 2)
    last = cache_seqlens.long().to(q.device)[:, None] + torch.arange(t_q, device=q.device)  # [B, Tq]
    mask = torch.arange(t_k, device=q.device)[None, None, :] <= last[:, :, None]  # [B, Tq, Tk]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask[:, None], scale=softmax_scale)
    return o.transpose(1, 2).to(out_dtype)
