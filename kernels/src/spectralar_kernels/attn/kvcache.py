"""`attention_with_kvcache`: flash-attn's `flash_attn_with_kvcache` contract against a preallocated KV cache.

No host synchronisation: with a tensor `cache_seqlens` nothing here reads a device value on the host, so a
decoding step can be captured in a CUDA graph, traced by torch.compile (fullgraph) or run on fake tensors.
The value checks that would need a sync (`0 <= cache_seqlens`, `cache_seqlens + Tnew <= T_max`, cache_batch_idx
in range) run only with SPECTRALAR_DEBUG_CHECKS=1; otherwise out-of-range entries are masked on the device
(policy below). A Python int `cache_seqlens` is known on the host: it is always checked, and the reference path
then appends and attends by slicing, with no index arithmetic at all (how the eager sampler calls it).
Positions in a plain CPU tensor are in host memory too: a call without extras takes `_host_step`, which reads
them with one `tolist` and gives the general path's result with the fewest operations (small decoding steps).

Out-of-range policy (every backend, no debug switch): the new token t of sample b belongs at position
`p = cache_seqlens[b] + t`. It is written only when `0 <= p < T_max`; a position outside the cache is
dropped, nothing else is touched. Keys are read only from `[0, T_max)`, and a query that sees no key
returns zeros (flash-attn's rule for an empty row), so the output stays finite.

Backends: flash-attn (CUDA fp16/bf16 under `auto`, host-checked positions); the Triton decode kernel
(`decode.py`) for what it implements: causal or not, GQA, with or without new k/v (Tnew == Tq), no window,
softcap, rotary, cache_batch_idx or softmax_lse; the reference (`ref.kvcache_ref`) for everything.

Under torch.compile the Triton-capable calls are traced as one opaque custom op
(`spectralar::attention_with_kvcache`, with its cache mutation declared): the graph keeps it, CUDA graphs
capture it, and its implementation chooses the backend (Triton or reference) when the graph runs, as an
eager call would. Where no kernel can be chosen (CPU tensors, SPECTRALAR_KERNELS auto or ref) the reference
is traced inline instead, so Inductor fuses its indexing and masking into the surrounding code.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F

from .._common import FLOAT_DTYPES, check_same_device, choose_kernel, kernels_mode, warn_once
from .checks import MAX_HEAD_DIM, TRITON_MAX_HEAD_DIM, check_bthd, check_scale, flash_attn_usable
from .ref import host_readable, kvcache_ref, kvcache_step_ref, kvcache_visible, new_positions

__all__ = ["attention_with_kvcache", "debug_checks"]

DEBUG_ENV = "SPECTRALAR_DEBUG_CHECKS"
NO_WINDOW = (-1, -1)


def debug_checks() -> bool:
    """True when SPECTRALAR_DEBUG_CHECKS=1: value checks that cost a host sync run on every call."""
    return os.environ.get(DEBUG_ENV, "0") == "1"


def check_seqlens_range(lo: int, hi: int, t_new: int, t_max: int) -> None:
    """ValueError unless every sample fits: `0 <= lo` and `hi + Tnew <= T_max` (host ints)."""
    if lo < 0:
        raise ValueError(f"cache_seqlens must be >= 0, got min {lo}")
    if hi + t_new > t_max:
        raise ValueError(f"cache overflow: cache_seqlens max {hi} + Tnew {t_new} > T_max {t_max}")


def _int_tensor(name: str, t, shapes: tuple) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.shape not in shapes:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be an int32/int64 tensor of shape {' or '.join(map(str, shapes))}, got {got}")


def _check_extras(q, k, causal, window_size, softcap, rotary_cos, rotary_sin, rotary_interleaved,
                  return_softmax_lse, num_splits):  # fmt: skip
    """ValueError for a malformed flash-attn argument (everything but the tensors' shapes)."""
    for name, flag in (("causal", causal), ("rotary_interleaved", rotary_interleaved),
                       ("return_softmax_lse", return_softmax_lse)):  # fmt: skip
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2
            and all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window_size)):  # fmt: skip
        raise ValueError(f"window_size must be (left, right), ints >= -1 (-1: unbounded), got {window_size!r}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not 0 <= softcap < float("inf"):
        raise ValueError(f"softcap must be a finite float >= 0 (0: off), got {softcap!r}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: heuristic), got {num_splits!r}")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("pass both rotary_cos and rotary_sin, or neither")
    if rotary_cos is None:
        return
    if k is None:
        raise ValueError("rotary_cos/rotary_sin rotate the new k and q: they need k and v (flash-attn's rule)")
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise ValueError(f"{name} must be a float tensor [T_ro, rotary_dim / 2], got {t!r:.80}")
    if rotary_sin.shape != rotary_cos.shape or not 0 < 2 * rotary_cos.shape[1] <= q.shape[-1]:
        raise ValueError(f"rotary_cos/sin must both be [T_ro, rotary_dim / 2] with rotary_dim <= D={q.shape[-1]}, "
                         f"got {tuple(rotary_cos.shape)} and {tuple(rotary_sin.shape)}")  # fmt: skip


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor | int,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    *,
    causal: bool = False,
    window_size: tuple[int, int] = NO_WINDOW,
    softcap: float = 0.0,
    cache_batch_idx: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    return_softmax_lse: bool = False,
    num_splits: int = 0,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
):
    """Attention of new queries against a preallocated KV cache, flash-attn's `flash_attn_with_kvcache`.

    Args (flash-attn's meanings; only the order of the first seven differs, see the README):
        q: `[B, Tq, H, D]`, fp32/fp16/bf16, D <= 256.
        k_cache, v_cache: `[B_cache, T_max, H_kv, D]`, q's dtype and device; H % H_kv == 0 (GQA: query
            head h reads cache head h // (H / H_kv)); B_cache >= B.
        cache_seqlens: int32/int64 tensor `[B]`, `[1]` or `[]` (broadcast), or an int: with k/v, the valid
            entries before this call (the new ones are appended there and attended too); without, the valid
            entries in all (the caller has written the new keys). The caller advances it.
        k, v: optional `[B, Tnew, H_kv, D]` (Tnew <= T_max), written IN PLACE into the caches at positions
            `cache_seqlens[b] .. cache_seqlens[b] + Tnew - 1` (rows `cache_batch_idx[b]`).
        softmax_scale: default `1 / sqrt(D)`; zero and negative scales are valid.
        causal: the mask is aligned to the bottom right: with L valid keys, query i sees keys
            `j <= L - Tq + i`. With Tq = 1 causal changes nothing.
        window_size: (left, right), -1 unbounded: query i sees keys `[L - Tq + i - left, L - Tq + i + right]`.
        softcap: > 0 replaces each logit s by `softcap * tanh(s / softcap)`.
        cache_batch_idx: int tensor `[B]`: the cache row of each sample (default 0 .. B-1).
        rotary_cos, rotary_sin: `[T_ro, R / 2]` (R <= D, needs k/v): rotate the first R dims of the new k at
            positions `cache_seqlens + t` and of q at `cache_seqlens + i` (causal or windowed) or at
            `cache_seqlens` (otherwise); rotary_interleaved pairs dims (0, 1), (2, 3)... else (i, i + R/2).
        return_softmax_lse: also return the logsumexp (natural log) of each row's logits, `[B, H, Tq]` fp32,
            -inf for a row that sees no key (flash-attn returns +inf there).
        num_splits: split-K count for the Triton kernel (0: heuristic); does not change the result.
        cache_leftpad, block_table, alibi_slopes: not supported (NotImplementedError).
    An int cache_seqlens out of range (`< 0`, or `+ Tnew > T_max`) raises ValueError. A tensor is not read
    on the host (no sync): out-of-range entries are masked on the device (module docstring) and raise
    ValueError only with SPECTRALAR_DEBUG_CHECKS=1 (one host sync per call, skipped while torch.compile traces
    or a CUDA graph is captured).
    Returns:
        out `[B, Tq, H, D]` in q's dtype, or (out, softmax_lse) with return_softmax_lse. No autograd.
    """
    if (cache_batch_idx is None and rotary_cos is None and rotary_sin is None and cache_leftpad is None
            and block_table is None and alibi_slopes is None and type(causal) is bool and type(window_size) is tuple
            and window_size == NO_WINDOW and softcap == 0 and rotary_interleaved is True
            and return_softmax_lse is False and num_splits == 0):  # fmt: skip
        out = _host_step(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale, causal)  # None: not one
        if out is not None:
            return out
    for name, arg in (("cache_leftpad", cache_leftpad), ("block_table", block_table), ("alibi_slopes", alibi_slopes)):
        if arg is not None:
            raise NotImplementedError(f"attention_with_kvcache: {name} is not supported (flash-attn's argument; "
                                      "no backend here implements it)")  # fmt: skip
    check_bthd("q", q)
    check_bthd("k_cache", k_cache, "q", q, same="D")
    check_bthd("v_cache", v_cache, "q", q, same="D")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    b, t_q, h, d = q.shape
    b_cache, t_max, h_kv = k_cache.shape[:3]
    if h % h_kv:
        raise ValueError(f"q has {h} heads, not a multiple of the caches' {h_kv} (k_cache {tuple(k_cache.shape)})")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v, or neither")
    t_new = 0
    if k is not None:
        check_bthd("k", k, "k_cache", k_cache, same="HD")
        check_bthd("v", v, "k_cache", k_cache, same="HD")
        if k.shape[0] != b or v.shape != k.shape:
            raise ValueError(f"k, v must be [B={b}, Tnew, H_kv={h_kv}, D={d}], got {tuple(k.shape)}, {tuple(v.shape)}")
        t_new = k.shape[1]
        if t_new > t_max:
            raise ValueError(f"cache overflow: Tnew {t_new} > T_max {t_max}")
    others = (k_cache, v_cache, k, v, cache_batch_idx, rotary_cos, rotary_sin, cache_seqlens)
    if not all(t.device == q.device for t in others if isinstance(t, torch.Tensor)):  # the common case, fast
        check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_batch_idx=cache_batch_idx,
                          rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_seqlens=cache_seqlens)  # fmt: skip
    check_scale(softmax_scale)
    defaults = (isinstance(causal, bool) and type(window_size) is tuple and window_size == NO_WINDOW and softcap == 0
                and rotary_cos is None and rotary_sin is None and rotary_interleaved is True
                and return_softmax_lse is False and num_splits == 0)  # fmt: skip
    if not defaults:
        _check_extras(q, k, causal, window_size, softcap, rotary_cos, rotary_sin, rotary_interleaved,
                      return_softmax_lse, num_splits)  # fmt: skip
    if cache_batch_idx is not None:
        _int_tensor("cache_batch_idx", cache_batch_idx, ((b,),))
    elif b_cache < b:
        raise ValueError(f"k_cache holds {b_cache} sequences, fewer than the batch {b} (pass cache_batch_idx?)")
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    # What only the reference implements (flash-attn implements it all).
    extras = not defaults and (tuple(window_size) != NO_WINDOW or softcap > 0 or rotary_cos is not None
                               or return_softmax_lse)  # fmt: skip
    extras = extras or cache_batch_idx is not None or b_cache != b or 0 < t_new != t_q
    kernel = not extras and _kernel_possible(q)

    checked = isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool)
    if not checked:
        _int_tensor("cache_seqlens", cache_seqlens, ((b,), (1,), ()))
        if cache_seqlens.shape != (b,):
            cache_seqlens = cache_seqlens.expand(b)
        if not kernel and not extras and host_readable(cache_seqlens):
            # CPU positions in host memory: one shared in-range position takes the host int's slicing path
            lo, hi = cache_seqlens.aminmax()
            if int(lo) == int(hi) and 0 <= int(lo) <= t_max - t_new:
                cache_seqlens, checked = int(lo), True
    grad = torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()
    if checked:
        check_seqlens_range(cache_seqlens, cache_seqlens, t_new, t_max)  # a host int: free to check
        impl = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache, t=t_max, d=d,
                             bh=b * h) if kernel else None
        simple = not extras and cache_seqlens + t_new > 0 and (not causal or cache_seqlens + t_new >= t_q)
        if impl is None and simple and not (q.is_cuda and flash_attn_usable(q, k_cache, v_cache)):
            with grad:  # the eager sampler's case: slices, no index arithmetic
                return kvcache_step_ref(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal)
        cache_seqlens = torch.full((b,), cache_seqlens, dtype=torch.int32, device=q.device)
    else:
        capturing = torch.compiler.is_compiling() or q.is_cuda and torch.cuda.is_current_stream_capturing()
        if debug_checks() and not capturing:
            check_seqlens_range(int(cache_seqlens.min()), int(cache_seqlens.max()), t_new, t_max)
            idx = cache_batch_idx
            if idx is not None and not 0 <= int(idx.min()) <= int(idx.max()) < b_cache:
                raise ValueError(f"cache_batch_idx must lie in [0, {b_cache}), got {cache_batch_idx.tolist()}")
            checked = True
        impl = None
        if kernel:
            if torch.compiler.is_compiling():  # one opaque node for the compiled graph; it dispatches when run
                return torch.ops.spectralar.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, scale,
                                                                   causal, "auto")  # fmt: skip
            impl = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache, t=t_max, d=d, bh=b * h)

    if impl is None and checked and q.is_cuda and _flash_kvcache_usable(q, k_cache, v_cache, k, v, rotary_cos):
        from flash_attn import flash_attn_with_kvcache

        return flash_attn_with_kvcache(
            q, k_cache, v_cache, k=k, v=v, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
            cache_seqlens=cache_seqlens.to(torch.int32), cache_batch_idx=cache_batch_idx, softmax_scale=scale,
            causal=causal, window_size=tuple(window_size), softcap=float(softcap),
            rotary_interleaved=rotary_interleaved, num_splits=num_splits, return_softmax_lse=return_softmax_lse,
        )  # fmt: skip
    with grad:
        if extras:
            return kvcache_ref(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale=scale, causal=causal,
                               window_size=tuple(window_size), softcap=softcap, cache_batch_idx=cache_batch_idx,
                               rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_interleaved=rotary_interleaved,
                               return_softmax_lse=return_softmax_lse)  # fmt: skip
        return _run(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, impl, num_splits)


# ---- the small CPU step: what a sampler on CPU calls thousands of times -----------------------------------

_STEP_CACHE: dict[tuple, tuple] = {}  # (batch arange, mask table) per step shape; oldest dropped past the size
_STEP_CACHE_SIZE = 16
_MASK_TABLE_MAX = 1 << 16  # elements; past it (long caches) no table is kept and the mask is built per call


def _step_constants(key: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(arange(B), table)` for key `(B, T_max, Tq, Tnew, causal, additive)`, built and cached. Row s of the
    table `[T_max - Tnew + 1, 1, Tq, T_max]` is `kvcache_ref`'s SDPA mask for a sample with cache_seqlens s
    (additive fp32 or boolean, as `kvcache_ref` passes it); None when it would exceed _MASK_TABLE_MAX."""
    b, t_max, t_q, t_new, causal, additive = key
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in any mode later
        table = None
        if (t_max - t_new + 1) * t_q * t_max <= _MASK_TABLE_MAX:
            table = kvcache_visible(torch.arange(t_new, t_max + 1), t_q, t_max, causal, NO_WINDOW)[:, None]
            table = torch.where(table, 0.0, float("-inf")) if additive else table
        entry = (torch.arange(b), table)
    if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
        _STEP_CACHE.pop(next(iter(_STEP_CACHE)), None)
    _STEP_CACHE[key] = entry
    return entry


def _host_step(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale, causal: bool) -> torch.Tensor | None:
    """A plain CPU call without extras, autograd or out-of-range positions, or None (the general path then
    checks and runs it): what the general path computes, bitwise, with the fewest operations, because on
    a small step (B=8, H=8, D=32, 24 slots) SDPA itself is ~35 us and each further op or check shows.

    Validation is attribute comparisons only: anything unusual (a malformed argument included) returns
    None and gets the general path's checks and errors. Positions are read with one `tolist` (host
    memory: `host_readable`); a shared one takes the host-int path (`kvcache_step_ref`, slices), ragged
    ones are written with one index_put per cache and masked by a row lookup in a cached table.
    """
    tensor, new = torch.Tensor, k is not None
    kk, vv = (k, v) if new else (k_cache, v_cache)
    # host_readable(cache_seqlens) and not _kernel_possible(q), written out: every Python call shows here
    if not (type(q) is tensor and type(k_cache) is tensor and type(v_cache) is tensor and type(kk) is tensor
            and type(vv) is tensor and type(cache_seqlens) is tensor and q.is_cpu and k_cache.is_cpu
            and v_cache.is_cpu and kk.is_cpu and vv.is_cpu and cache_seqlens.is_cpu
            and q.dtype in FLOAT_DTYPES and q.dtype is k_cache.dtype is v_cache.dtype is kk.dtype is vv.dtype
            and cache_seqlens.dtype in (torch.int32, torch.int64)
            and not (torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad
                                                  or v_cache.requires_grad or kk.requires_grad or vv.requires_grad))
            and (softmax_scale is None or type(softmax_scale) is float and math.isfinite(softmax_scale))
            and not torch.compiler.is_compiling()
            and not kernels_mode().startswith("triton")):  # fmt: skip
        return None
    qs, cs = q.shape, k_cache.shape
    if len(qs) != 4 or len(cs) != 4 or v_cache.shape != cs or 0 in qs or 0 in cs:
        return None
    b, t_q, h, d = qs
    t_max, h_kv = cs[1], cs[2]
    t_new = t_q if new else 0
    if (cs[0] != b or cs[3] != d or d > MAX_HEAD_DIM or h % h_kv or t_new > t_max
            or new and (k.shape != (b, t_q, h_kv, d) or v.shape != k.shape)
            or cache_seqlens.shape not in ((b,), (1,), ())):  # fmt: skip
        return None
    s = cache_seqlens.tolist()
    lo, hi = (s, s) if type(s) is int else (min(s), max(s))
    if lo < 0 or hi > t_max - t_new:
        return None  # out of range: the general path's policy (and, with SPECTRALAR_DEBUG_CHECKS=1, its error)
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    if lo == hi and lo + t_new > 0 and (not causal or lo + t_new >= t_q):
        return kvcache_step_ref(q, k_cache, v_cache, lo, k, v, scale, causal)
    cache_seqlens = cache_seqlens.long()  # int64 indices: int32 ones cost each index op a conversion
    if cache_seqlens.shape != (b,):
        cache_seqlens = cache_seqlens.expand(b)
    additive = q.dtype == torch.float32
    key = (b, t_max, t_q, t_new, causal, additive)
    batch, table = _STEP_CACHE.get(key) or _step_constants(key)
    if new and t_q == 1:
        k_cache[batch, cache_seqlens] = k.select(1, 0)
        v_cache[batch, cache_seqlens] = v.select(1, 0)
    elif new:
        pos = new_positions(cache_seqlens, t_q)
        k_cache[batch[:, None], pos] = k
        v_cache[batch[:, None], pos] = v
    if table is not None:
        mask = table.index_select(0, cache_seqlens)
    else:
        mask = kvcache_visible(cache_seqlens + t_new, t_q, t_max, causal, NO_WINDOW)[:, None]
        mask = torch.where(mask, 0.0, float("-inf")) if additive else mask
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                       attn_mask=mask, scale=scale, enable_gqa=h != h_kv)  # fmt: skip
    return o.transpose(1, 2)


def _flash_kvcache_usable(q, k_cache, v_cache, k, v, rotary_cos) -> bool:
    """flash-attn takes the call: CUDA fp16/bf16 under auto, unit-stride caches, rotary dims a multiple of 16."""
    new = [k, v] if k is not None else []
    return (flash_attn_usable(q, k_cache, v_cache, *new) and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
            and (rotary_cos is None or rotary_cos.shape[1] % 8 == 0))  # fmt: skip


def _kernel_possible(q: torch.Tensor) -> bool:
    """Whether `choose_kernel` could pick a kernel (CUDA, or SPECTRALAR_KERNELS=triton[:ID]). When it cannot
    (CPU tensors under auto/ref: always the reference), the eager call skips asking, and a compiled graph
    traces the reference inline so Inductor fuses it."""
    return q.is_cuda or kernels_mode().startswith("triton")


def _run(q, k_cache, v_cache, cache_seqlens, k, v, scale: float, causal: bool, impl: str | None,
         num_splits: int = 0) -> torch.Tensor:  # fmt: skip
    """A call without the reference-only arguments: the Triton decode kernel `impl`, or the reference (None)."""
    if impl is not None:
        if q.shape[-1] <= TRITON_MAX_HEAD_DIM and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1:
            from .decode import attention_with_kvcache_fwd

            # The kernel takes the position of the first query; without k/v cache_seqlens counts the new tokens.
            first = cache_seqlens if k is not None else cache_seqlens - q.shape[1]
            return attention_with_kvcache_fwd(q, k_cache, v_cache, first, scale, k=k, v=v, impl=impl, causal=causal,
                                              num_splits=num_splits or None)  # fmt: skip
        if q.is_cuda:
            warn_once("kvcache.head_dim", f"attention_with_kvcache: head dim {q.shape[-1]} > 128 uses SDPA")
    return kvcache_ref(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale=scale, causal=causal)


# ---- custom op: what torch.compile and CUDA graphs keep ---------------------------------------------------


@torch.library.custom_op("spectralar::attention_with_kvcache", mutates_args=("k_cache", "v_cache"))
def _attention_with_kvcache_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    scale: float,
    causal: bool,
    impl: str,
) -> torch.Tensor:
    """Validated arguments only (the public function checks). impl "auto" = choose_kernel at run time."""
    if impl == "auto":
        chosen = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache, t=k_cache.shape[1],
                               d=q.shape[-1], bh=q.shape[0] * q.shape[2])
    else:
        chosen = impl or None
    with torch.no_grad():
        # contiguous: the strides the fake implementation promises the compiler
        return _run(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, chosen).contiguous()


@_attention_with_kvcache_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, impl):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
