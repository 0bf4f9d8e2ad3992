"""`attention_with_kvcache`: one decoding step (or a prefill chunk) against a preallocated KV cache.

No host synchronisation: with a tensor `cache_seqlens` nothing here reads a device value on the host, so a
decoding step can be captured in a CUDA graph, traced by torch.compile (fullgraph) or run on fake tensors.
The value checks that would need a sync (`0 <= cache_seqlens`, `cache_seqlens + Tq <= T_max`) run only with
SPECTRALAR_DEBUG_CHECKS=1; otherwise out-of-range entries are masked on the device (policy below). A
Python int `cache_seqlens` is known on the host: it is always checked, and the reference path then
appends and attends by slicing, with no index arithmetic at all (how the eager sampler calls it).

Out-of-range policy (every backend, no debug switch): the new token t of sample b belongs at position
`p = cache_seqlens[b] + t`. It is written only when `0 <= p < T_max`; a position outside the cache is
dropped, nothing else is touched. Its query attends to cache positions `0 .. clamp(p, 0, T_max - 1)`:
what is in range, never an empty set, so the output stays finite.

Under torch.compile the op is traced as one opaque custom op (`spectralar::attention_with_kvcache`, with
its cache mutation declared): the graph keeps it, CUDA graphs capture it, and its implementation chooses
the backend (Triton or reference) when the graph runs, as an eager call would. Where no kernel can be
chosen (CPU tensors, SPECTRALAR_KERNELS auto or ref) the reference is traced inline instead, so Inductor
fuses its indexing and masking into the surrounding code.
"""

from __future__ import annotations

import os

import torch

from .._common import check_same_device, choose_kernel, warn_once
from .checks import TRITON_MAX_HEAD_DIM, check_bthd, check_scale, flash_attn_usable
from .ref import attention_with_kvcache_ref, kvcache_step_ref

__all__ = ["attention_with_kvcache", "debug_checks"]

DEBUG_ENV = "SPECTRALAR_DEBUG_CHECKS"
_UNDECIDED = "undecided"  # no backend chosen yet in this call


def debug_checks() -> bool:
    """True when SPECTRALAR_DEBUG_CHECKS=1: value checks that cost a host sync run on every call."""
    return os.environ.get(DEBUG_ENV, "0") == "1"


def check_seqlens_range(lo: int, hi: int, t_q: int, t_max: int) -> None:
    """ValueError unless every sample has room: `0 <= lo` and `hi + Tq <= T_max` (host ints)."""
    if lo < 0:
        raise ValueError(f"cache_seqlens must be >= 0, got min {lo}")
    if hi + t_q > t_max:
        raise ValueError(f"cache overflow: cache_seqlens max {hi} + Tq {t_q} > T_max {t_max}")


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor | int,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """One decoding step (or a prefill chunk) against a preallocated KV cache; flash-attn's contract.

    Args:
        q: `[B, Tq, H, D]` (Tq is usually 1; Tq <= T_max).
        k_cache, v_cache: `[B, T_max, H, D]`, q's dtype and device, preallocated by the caller.
        cache_seqlens: int32/int64 tensor `[B]` (or an int for every sample): valid cache entries
            before this call.
        k, v: optional `[B, Tq, H, D]`; written IN PLACE into the caches at positions
            `cache_seqlens[b] .. cache_seqlens[b] + Tq - 1`.
        softmax_scale: default `1 / sqrt(D)`.
    The query at position `p = cache_seqlens[b] + t` attends to cache positions `0 .. p` (causal
    among the new tokens). Without k/v the caller must already have written positions up to
    `cache_seqlens + Tq - 1` (unlike flash-attn, cache_seqlens never counts the new tokens).
    An int cache_seqlens out of range (`< 0`, or `+ Tq > T_max`) raises ValueError. A tensor is not read
    on the host (no sync): out-of-range entries are masked on the device (a new token outside the cache
    is not written; its query sees positions `0 .. clamp(p, 0, T_max - 1)`), and raise ValueError only
    with SPECTRALAR_DEBUG_CHECKS=1 (one host sync per call, skipped while torch.compile traces or a
    CUDA graph is captured). The caller advances cache_seqlens.
    Returns:
        `[B, Tq, H, D]` in q's dtype. No autograd.
    """
    check_bthd("q", q)
    check_bthd("k_cache", k_cache, "q", q)
    check_bthd("v_cache", v_cache, "q", q)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v, or neither")
    b, t_q = q.shape[:2]
    t_max = k_cache.shape[1]
    if k is not None:
        check_bthd("k", k, "q", q)
        check_bthd("v", v, "q", q)
        for name, t in (("k", k), ("v", v)):
            if t.shape != q.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} must equal q shape {tuple(q.shape)}")
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    if t_q > t_max:
        raise ValueError(f"cache overflow: Tq {t_q} > T_max {t_max}")
    check_scale(softmax_scale)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        check_seqlens_range(cache_seqlens, cache_seqlens, t_q, t_max)  # a host int: free to check
        impl = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache) if _kernel_possible(q) else None
        if impl is None and not (q.is_cuda and flash_attn_usable(q, k_cache, v_cache)):
            if not torch.is_grad_enabled():  # the sampler's case: skip entering no_grad per layer
                return kvcache_step_ref(q, k_cache, v_cache, cache_seqlens, k, v, scale)
            with torch.no_grad():
                return kvcache_step_ref(q, k_cache, v_cache, cache_seqlens, k, v, scale)
        cache_seqlens = torch.full((b,), cache_seqlens, dtype=torch.int32, device=q.device)
        checked = True
    else:
        impl, checked = _UNDECIDED, False
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        got = cache_seqlens.dtype if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__
        raise ValueError(f"cache_seqlens must be an int32/int64 tensor [B] or an int, got {got}")
    if cache_seqlens.shape != (b,):
        raise ValueError(f"cache_seqlens must have shape [B={b}], got {tuple(cache_seqlens.shape)}")
    check_same_device(q=q, cache_seqlens=cache_seqlens)
    if debug_checks() and not (torch.compiler.is_compiling() or q.is_cuda and torch.cuda.is_current_stream_capturing()):
        check_seqlens_range(int(cache_seqlens.min()), int(cache_seqlens.max()), t_q, t_max)
        checked = True

    if torch.compiler.is_compiling() and _kernel_possible(q):
        # One opaque node for the compiled graph; it dispatches when the graph runs ("auto").
        return torch.ops.spectralar.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, scale, "auto")
    if impl is _UNDECIDED:  # a host int position has chosen already
        impl = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache)
    with torch.no_grad():
        return _run(q, k_cache, v_cache, cache_seqlens, k, v, scale, impl, checked)


def _kernel_possible(q: torch.Tensor) -> bool:
    """Whether `choose_kernel` could pick a kernel (CUDA, or SPECTRALAR_KERNELS=triton[:ID]). When it cannot
    (CPU tensors under auto/ref: always the reference), the eager call skips asking, and a compiled graph
    traces the reference inline so Inductor fuses it."""
    return q.is_cuda or os.environ.get("SPECTRALAR_KERNELS", "auto").lower().startswith("triton")


def _run(q, k_cache, v_cache, cache_seqlens, k, v, scale: float, impl: str | None, checked: bool) -> torch.Tensor:
    """The chosen backend: flash-attn, the Triton decode kernel `impl`, or the reference (impl None).

    flash-attn only with `checked` positions (a host int, or the debug checks): its out-of-range behaviour
    is not ours to promise, while the Triton kernel and the reference mask on the device."""
    t_q = q.shape[1]
    tensors = [q, k_cache, v_cache] + ([k, v] if k is not None else [])
    if impl is None and checked and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and flash_attn_usable(*tensors):
        from flash_attn import flash_attn_with_kvcache

        # flash-attn counts the new tokens in cache_seqlens only when it writes them itself.
        seqlens = cache_seqlens.to(torch.int32)
        seqlens = seqlens if k is not None else seqlens + t_q
        return flash_attn_with_kvcache(
            q, k_cache, v_cache, k=k, v=v, cache_seqlens=seqlens, softmax_scale=scale, causal=True
        )
    if impl is not None:
        if q.shape[-1] <= TRITON_MAX_HEAD_DIM and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1:
            from .decode import attention_with_kvcache_fwd

            return attention_with_kvcache_fwd(q, k_cache, v_cache, cache_seqlens, scale, k=k, v=v, impl=impl)
        if q.is_cuda:
            warn_once("kvcache.head_dim", f"attention_with_kvcache: head dim {q.shape[-1]} > 128 uses SDPA")
    return attention_with_kvcache_ref(q, k_cache, v_cache, cache_seqlens, scale, k=k, v=v)


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
    impl: str,
) -> torch.Tensor:
    """Validated arguments only (the public function checks). impl "auto" = choose_kernel at run time."""
    if impl == "auto":
        chosen = choose_kernel("attention_with_kvcache", "decode", q, k_cache, v_cache)
    else:
        chosen = impl or None
    with torch.no_grad():
        # contiguous: the strides the fake implementation promises the compiler
        return _run(q, k_cache, v_cache, cache_seqlens, k, v, scale, chosen, False).contiguous()


@_attention_with_kvcache_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, k, v, scale, impl):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
