"""Plain-PyTorch attention: CPU path, test oracle and benchmark baseline.

Layout is flash-attn's `[B, T, H, D]`; `scaled_dot_product_attention` wants `[B, H, T, D]`, so the
reference transposes in and out. Masks use the same rule everywhere:

    key j is visible to query t  iff  not causal  or  j <= t  or  j < prefix_len       (attention)
    key j is visible to query t  iff  j <= cache_seqlens[b] + t                        (kv cache)

(for the cache, `cache_seqlens[b] + t` is clamped to `[0, T_max - 1]`: out-of-range entries attend to
what is in range; see kvcache.py).
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


def new_positions(cache_seqlens: torch.Tensor, t_q: int) -> torch.Tensor:
    """`[B, Tq]` positions `cache_seqlens[b] + t` of the new tokens (cache_seqlens' integer dtype)."""
    pos = cache_seqlens[:, None]
    return pos if t_q == 1 else pos + torch.arange(t_q, device=pos.device, dtype=pos.dtype)


def write_kvcache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None = None,
) -> None:
    """In place: `k_cache[b, p] = k[b, t]` (same for v) at `p = cache_seqlens[b] + t`, t in 0..Tq-1.

    No host sync. A position outside `[0, T_max)` is not written: every token is routed to the distinct
    row `p mod T_max` (distinct because Tq <= T_max) and an out-of-range one writes back what is there.
    `pos`: the `[B, Tq]` positions when the caller has them.
    """
    b, t_q = k.shape[:2]
    t_max = k_cache.shape[1]
    assert t_q <= t_max, "Tq > T_max is rejected by the public function"
    pos = new_positions(cache_seqlens, t_q) if pos is None else pos
    row = pos.remainder(t_max)
    inside = (row == pos)[:, :, None, None]
    batch = torch.arange(b, device=k.device)[:, None]
    for cache, new in ((k_cache, k), (v_cache, v)):
        cache[batch, row] = torch.where(inside, new, cache[batch, row])


def visible_mask(pos: torch.Tensor, t_k: int) -> torch.Tensor:
    """`[B, Tq, Tk]` bool from the `[B, Tq]` query positions: key j is visible iff `j <= clamp(p, 0, Tk - 1)`."""
    last = pos.clamp(0, t_k - 1)
    return torch.arange(t_k, device=pos.device, dtype=pos.dtype) <= last[:, :, None]


def attention_with_kvcache_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float | None = None,
    upcast: bool = False,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q `[B, Tq, H, D]` against caches `[B, T_max, H, D]`; no host sync.

    With k, v `[B, Tq, H, D]` they are first written into the caches in place (`write_kvcache`);
    otherwise the caches already hold the new keys. Query t of sample b sees cache positions
    `0 .. clamp(cache_seqlens[b] + t, 0, T_max - 1)`: all T_max positions are read, masked, so no
    device value decides a shape. Returns `[B, Tq, H, D]` (fp32 for fp16/bf16 inputs with upcast=True).
    """
    pos = new_positions(cache_seqlens, q.shape[1])  # [B, Tq]
    if k is not None:
        write_kvcache(k_cache, v_cache, cache_seqlens, k, v, pos)
    out_dtype = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k_cache, v_cache = q.float(), k_cache.float(), v_cache.float()
        out_dtype = torch.float32
    mask = visible_mask(pos, k_cache.shape[1])  # [B, Tq, Tk]
    kh, vh = k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # [B, H, Tk, D]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask[:, None], scale=softmax_scale)
    o = o.transpose(1, 2)
    return o if o.dtype == out_dtype else o.to(out_dtype)


def kvcache_step_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: int,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """`attention_with_kvcache_ref` for one host int position s shared by every sample (checked in range).

    The append is a slice copy and the attention reads the first `s + Tq` positions, with a mask only
    among the new tokens (none for Tq = 1): the fewest operations per step, which is what the CPU
    sampler spends its time on.
    """
    s, t_q = cache_seqlens, q.shape[1]
    if k is not None:
        k_cache[:, s:s + t_q] = k
        v_cache[:, s:s + t_q] = v
    t_k = s + t_q
    mask = None
    if t_q > 1:
        mask = torch.arange(t_k, device=q.device)[None, :] <= s + torch.arange(t_q, device=q.device)[:, None]
    kh, vh = k_cache[:, :t_k].transpose(1, 2), v_cache[:, :t_k].transpose(1, 2)  # [B, H, Tk, D]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask, scale=softmax_scale)
    return o.transpose(1, 2)
