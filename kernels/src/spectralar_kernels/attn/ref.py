"""Plain-PyTorch attention: CPU path, test oracle and benchmark baseline.

Layout is flash-attn's `[B, T, H, D]`; `scaled_dot_product_attention` wants `[B, H, T, D]`, so the
reference transposes in and out. Masks:

    attention:  key j is visible to query t  iff  not causal  or  j <= t  or  j < prefix_len
    kv cache:   flash-attn's `flash_attn_with_kvcache` rule (`kvcache_visible`): with `L` valid cache
                entries after the append, query i sits at position `L - Tq + i` (bottom-right aligned)
                and sees keys `j < min(L, T_max)`, with causal `j <= L - Tq + i`, with a window
                `L - Tq + i - left <= j <= L - Tq + i + right`. A query that sees nothing returns zeros.
                Slots at or past L are never read into the result: they are replaced by zeros with `where`
                before the product (flash-attn's contract: a `torch.empty` cache may hold NaN or inf there,
                and a masked logit or a zero weight times NaN would still be NaN).
    flash_attn_func: the same rule with L = Tk for every sample (`flash_attn_ref`), differentiable.

A scale <= 0 never goes through SDPA's `is_causal`: on CPU that multiplies the masked -inf logits by the
scale (NaN for 0, +inf for a negative scale), so those calls get the explicit boolean mask instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heads_first(q, k, v, upcast: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """`[B, T, H, D]` -> `[B, H, T, D]` views for SDPA (fp32 copies of fp16/bf16 inputs with upcast), and the
    output dtype: q's, or fp32 when upcast."""
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), q.dtype


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
    t_q, t_k = q.shape[1], k.shape[1]
    qh, kh, vh, out_dtype = heads_first(q, k, v, upcast)
    plain_causal = causal and prefix_len <= 1 and t_q == t_k and (softmax_scale is None or softmax_scale > 0)
    mask = None if plain_causal else attention_mask(t_q, t_k, causal, prefix_len, q.device)
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=plain_causal, scale=softmax_scale)
    return o.transpose(1, 2).to(out_dtype)


# ---- KV cache ------------------------------------------------------------------------------------------


def new_positions(cache_seqlens: torch.Tensor, t_new: int) -> torch.Tensor:
    """`[B, Tnew]` positions `cache_seqlens[b] + t` of the new tokens (cache_seqlens' integer dtype)."""
    pos = cache_seqlens[:, None]
    return pos if t_new == 1 else pos + torch.arange(t_new, device=pos.device, dtype=pos.dtype)


def host_readable(t: torch.Tensor) -> bool:
    """A plain CPU tensor outside tracing: its values live in host memory, so reading them is no sync (fake,
    functional and traced tensors are subclasses or run while compiling, and are never read)."""
    return type(t) is torch.Tensor and t.is_cpu and not torch.compiler.is_compiling()


def write_kvcache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
) -> None:
    """In place: `k_cache[c_b, p] = k[b, t]` (same for v) at `p = cache_seqlens[b] + t`, t in 0..Tnew-1, where
    `c_b = cache_batch_idx[b]` (default b).

    No host sync. A position outside `[0, T_max)` is not written: every token is routed to the distinct
    row `p mod T_max` (distinct because Tnew <= T_max) and an out-of-range one writes back what is there.
    Positions in host memory (`host_readable`) are checked there instead, and when all are in range the
    tokens are written directly (a third of the operations: what a small CPU decoding step spends).
    `pos`: the `[B, Tnew]` positions when the caller has them.
    """
    b, t_new = k.shape[:2]
    t_max = k_cache.shape[1]
    assert t_new <= t_max, "Tnew > T_max is rejected by the public function"
    pos = new_positions(cache_seqlens, t_new) if pos is None else pos
    batch = (torch.arange(b, device=k.device) if cache_batch_idx is None else cache_batch_idx.long())[:, None]
    if host_readable(pos):
        lo, hi = pos.aminmax()
        if int(lo) >= 0 and int(hi) < t_max:
            k_cache[batch, pos] = k
            v_cache[batch, pos] = v
            return
    row = pos.remainder(t_max)
    inside = (row == pos)[:, :, None, None]
    for cache, new in ((k_cache, k), (v_cache, v)):
        cache[batch, row] = torch.where(inside, new.to(cache.dtype), cache[batch, row])


def unread_slots_zeroed(
    k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """k_cache, v_cache `[B, T_max, H_kv, D]` with the slots outside `slots [B, T_max]` replaced by zeros (new
    tensors; `where`, so a NaN or inf left in an unwritten slot cannot reach any product)."""
    keep = slots[:, :, None, None]
    return torch.where(keep, k_cache, 0), torch.where(keep, v_cache, 0)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotary embedding of x `[B, T, H, D]` at positions pos `[B, T]` on its first `2 * cos.shape[1]` dims.

    cos, sin `[T_ro, R/2]`. interleaved: pairs (0, 1), (2, 3), ...; else (i, i + R/2) (GPT-NeoX). Positions
    are clamped to the table, so an out-of-range one (whose key is dropped anyway) reads its last row.
    """
    half = cos.shape[1]
    idx = pos.long().clamp(0, cos.shape[0] - 1)
    c, s = cos[idx][:, :, None].to(torch.float32), sin[idx][:, :, None].to(torch.float32)  # [B, T, 1, R/2]
    xr = x[..., : 2 * half].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., 2 * half:]), dim=-1)


def kvcache_slots(seqlen_k: torch.Tensor, t_max: int) -> torch.Tensor:
    """`[B, T_max]` bool: the slots `j < L` of each sample that hold valid keys. No host sync."""
    return torch.arange(t_max, device=seqlen_k.device) < seqlen_k[:, None]


def kvcache_visible(
    seqlen_k: torch.Tensor, t_q: int, t_max: int, causal: bool, window: tuple[int, int],
    slots: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """`[B, Tq, T_max]` bool: key j visible to query i of sample b (module docstring), from the `[B]` valid
    lengths `seqlen_k` after the append (`slots`: their `kvcache_slots`, when the caller has them). No host sync."""
    j = torch.arange(t_max, device=seqlen_k.device)
    visible = (kvcache_slots(seqlen_k, t_max) if slots is None else slots)[:, None]  # keys 0 .. L-1 (< T_max)
    left, right = window[0], 0 if causal else window[1]
    if t_q == 1 and right >= 0:  # the one query sits at L - 1: `j <= L - 1 + right` adds nothing
        right = -1
    if left >= 0 or right >= 0:
        qpos = new_positions(seqlen_k - t_q, t_q)[:, :, None]  # [B, Tq, 1]
        if right >= 0:
            visible = visible & (j <= qpos + right)
        if left >= 0:
            visible = visible & (j >= qpos - left)
    return visible


def kvcache_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    cache_batch_idx: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    return_softmax_lse: bool = False,
    upcast: bool = False,
):
    """flash-attn's `flash_attn_with_kvcache` in plain PyTorch (arguments validated by the caller); no host sync.

    q `[B, Tq, H, D]`; caches `[B_cache, T_max, H_kv, D]` (H % H_kv == 0); cache_seqlens int `[B]`: valid
    entries before the append (with k, v `[B, Tnew, H_kv, D]`, written in place at `cache_seqlens + t`,
    rotated first when rotary_cos/sin are given) or in all (without). Returns out `[B, Tq, H, D]` in q's
    dtype (fp32 for fp16/bf16 with upcast), and with return_softmax_lse the natural-log logsumexp of each
    row's scaled (soft-capped) logits `[B, H, Tq]` fp32 (-inf for a row that sees nothing).
    """
    b, t_q = q.shape[:2]
    seqlen_k = cache_seqlens
    if rotary_cos is not None:
        interleaved = rotary_interleaved
        k = rotate(k, rotary_cos, rotary_sin, new_positions(cache_seqlens, k.shape[1]), interleaved)
        q_pos = cache_seqlens[:, None].expand(b, t_q)
        if causal or window_size != (-1, -1):
            q_pos = new_positions(cache_seqlens, t_q)
        q = rotate(q, rotary_cos, rotary_sin, q_pos, interleaved)
    if k is not None:
        write_kvcache(k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx=cache_batch_idx)
        seqlen_k = cache_seqlens + k.shape[1]
    if cache_batch_idx is not None:
        k_cache, v_cache = k_cache[cache_batch_idx.long()], v_cache[cache_batch_idx.long()]
    elif k_cache.shape[0] != b:
        k_cache, v_cache = k_cache[:b], v_cache[:b]
    slots = kvcache_slots(seqlen_k, k_cache.shape[1])
    k_cache, v_cache = unread_slots_zeroed(k_cache, v_cache, slots)
    visible = kvcache_visible(seqlen_k, t_q, k_cache.shape[1], causal, window_size, slots)[:, None]  # [B,1,Tq,T]
    out_dtype = q.dtype
    lowp = q.dtype in (torch.float16, torch.bfloat16)
    if upcast and lowp:
        out_dtype = torch.float32
    qh, kh, vh = q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # [B, H, T, D]
    gqa = qh.shape[1] != kh.shape[1]
    if softcap > 0 or return_softmax_lse:
        o, lse = explicit_attention(qh, kh, vh, visible, softmax_scale, softcap)
        out = o.transpose(1, 2).to(out_dtype)
        return (out, lse.float()) if return_softmax_lse else out
    if upcast and lowp:
        qh, kh, vh = qh.float(), kh.float(), vh.float()
    mask = visible
    if qh.dtype == torch.float32:  # additive: SDPA would convert a boolean mask on every call (a small step's cost)
        mask = torch.where(visible, 0.0, float("-inf"))
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=softmax_scale, enable_gqa=gqa)
    if not q.is_cpu:  # torch's CPU SDPA returns zeros for a row that sees nothing; not every CUDA backend does
        o = torch.where(visible.any(-1, keepdim=True), o, 0)
    o = o.transpose(1, 2)
    return o if o.dtype == out_dtype else o.to(out_dtype)


def explicit_attention(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    visible: torch.Tensor | None,
    softmax_scale: float | None,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention through explicit logits in fp32 at least, for soft-capping and the logsumexp. qh `[B, H, Tq, D]`,
    kh, vh `[B, H_kv, Tk, D]` (GQA by repeating heads), visible bool broadcastable to `[B, H, Tq, Tk]` or None.
    Returns (out `[B, H, Tq, D]` in the working dtype, lse `[B, H, Tq]`); a row that sees no key gives zeros and
    an lse of -inf. Differentiable where every row sees a key."""
    work = torch.promote_types(qh.dtype, torch.float32)
    if qh.shape[1] != kh.shape[1]:
        kh, vh = (x.repeat_interleave(qh.shape[1] // x.shape[1], dim=1) for x in (kh, vh))
    scale = softmax_scale if softmax_scale is not None else qh.shape[-1] ** -0.5
    logits = torch.matmul(qh.to(work), kh.to(work).transpose(-1, -2)) * scale
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    p = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0))
    return torch.matmul(p, vh.to(work)), lse[..., 0]


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
    """The decode launcher's convention (tests, benchmarks): query t of sample b sits at position
    `p = cache_seqlens[b] + t` and sees cache positions `0 .. min(p, T_max - 1)`, with or without k, v
    (without, the caches already hold the new keys). `kvcache_ref` with causal=True."""
    if k is None:
        cache_seqlens = cache_seqlens + q.shape[1]
    return kvcache_ref(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale=softmax_scale, causal=True,
                       upcast=upcast)  # fmt: skip


def kvcache_step_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: int,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    softmax_scale: float | None,
    causal: bool,
) -> torch.Tensor:
    """`kvcache_ref` for one host int `cache_seqlens` shared by every sample (checked in range), no extras.

    The append is a slice copy and the attention reads the first L valid positions, with a mask only
    when causal among several queries: the fewest operations per step, which is what the CPU sampler
    spends its time on.
    """
    s, t_q = cache_seqlens, q.shape[1]
    t_k = s
    if k is not None:
        t_k = s + k.shape[1]
        k_cache[:q.shape[0], s:t_k] = k
        v_cache[:q.shape[0], s:t_k] = v
    mask = None
    if causal and t_q > 1:
        mask = torch.arange(t_k, device=q.device)[None, :] <= t_k - t_q + torch.arange(t_q, device=q.device)[:, None]
    kh, vh = k_cache[:q.shape[0], :t_k].transpose(1, 2), v_cache[:q.shape[0], :t_k].transpose(1, 2)  # [B, H, L, D]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask, scale=softmax_scale,
                                       enable_gqa=q.shape[2] != kh.shape[1])  # fmt: skip
    return o.transpose(1, 2)


# ---- flash_attn_func -----------------------------------------------------------------------------------


def flash_empty_rows(t_q: int, t_k: int, causal: bool, window: tuple[int, int]) -> int:
    """How many leading queries see no key under flash-attn's bottom-right rule: query i sits at
    `t_k - t_q + i` and sees keys up to `+ right` (0 when causal), so the first `t_q - t_k - right` see nothing.
    A left bound alone never empties a row (the key at its own position is within it)."""
    right = 0 if causal else window[1]
    return 0 if right < 0 else min(max(t_q - t_k - right, 0), t_q)


def flash_attn_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
    upcast: bool = False,
):
    """flash-attn's `flash_attn_func` in plain PyTorch, differentiable (arguments validated by the caller).

    q `[B, Tq, H, D]`, k, v `[B, Tk, H_kv, D]` (H % H_kv == 0: query head h reads head h // (H / H_kv)). Query i
    sees key j iff `j <= i + Tk - Tq` (causal, bottom-right aligned) and `i + Tk - Tq - left <= j <=
    i + Tk - Tq + right` (window, -1 unbounded). A query that sees no key returns zeros (and no gradient).
    Returns out `[B, Tq, H, D]` in q's dtype (fp32 for fp16/bf16 with upcast), and with return_lse the
    natural-log logsumexp of each row's scaled (soft-capped) logits `[B, H, Tq]` fp32, +inf for a row that sees
    nothing (flash-attn's value). dropout_p > 0 drops weights as torch's SDPA does (not with softcap/lse).
    """
    t_q, t_k = q.shape[1], k.shape[1]
    qh, kh, vh, out_dtype = heads_first(q, k, v, upcast)
    gqa = qh.shape[1] != kh.shape[1]
    explicit = softcap > 0 or return_lse
    # plain causal on a square mask: SDPA's is_causal (not for scales <= 0: torch's CPU kernel returns NaN there)
    plain_causal = (not explicit and causal and t_q == t_k and window_size == (-1, -1)
                    and (softmax_scale is None or softmax_scale > 0))  # fmt: skip
    mask = None
    if (causal or window_size != (-1, -1)) and not plain_causal:
        mask = kvcache_visible(torch.full((1,), t_k, device=q.device), t_q, t_k, causal, window_size)[0]  # [Tq, Tk]
    empty = flash_empty_rows(t_q, t_k, causal, window_size)
    if empty:  # those rows attend to every key (finite everywhere, forward and backward), then are zeroed
        mask = mask.clone()
        mask[:empty] = True
    if explicit:
        o, lse = explicit_attention(qh, kh, vh, mask, softmax_scale, softcap)
    else:
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout_p, is_causal=plain_causal,
                                           scale=softmax_scale, enable_gqa=gqa)  # fmt: skip
        lse = None
    if empty:
        seen = torch.arange(t_q, device=q.device) >= empty  # [Tq]
        o = torch.where(seen[:, None], o, 0)
        lse = torch.where(seen, lse, float("inf")) if lse is not None else None
    out = o.transpose(1, 2).to(out_dtype)
    return (out, lse.float()) if return_lse else out
