"""Softmax attention in flash-attn's `[B, T, H, D]` layout, plus KV-cached decoding.

Backends, chosen per call:
  flash-attn  when `flash_attn` imports, the tensors are CUDA fp16/bf16, D % 8 == 0, the mask is
              full or plain causal, and SPECTRALAR_KERNELS is `auto` (never required);
  Triton      (`triton.py`; decoding in `decode.py`) on CUDA, or on CPU when SPECTRALAR_KERNELS=triton
              under TRITON_INTERPRET=1;
              head dims up to 128 (padded to a power of two >= 16 with masks); 128 < D <= 256 falls
              back to the reference (with a one-time warning on CUDA);
  reference   (`ref.py`) `torch.nn.functional.scaled_dot_product_attention` with an explicit mask.
Every path of `attention` is differentiable; `attention_with_kvcache` is inference only.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from .._common import check_float, check_same_device, choose_backend, warn_once
from .ref import attention_ref, attention_with_kvcache_ref, write_kvcache

__all__ = ["attention", "attention_with_kvcache"]

MAX_HEAD_DIM = 256  # validation limit (flash-attn's)
TRITON_MAX_HEAD_DIM = 128  # larger heads use the reference


def _flash_attn_usable(*tensors: torch.Tensor) -> bool:
    if os.environ.get("SPECTRALAR_KERNELS", "auto").lower() != "auto" or torch.compiler.is_compiling():
        return False
    q = tensors[0]
    if not all(t.is_cuda for t in tensors) or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if q.shape[-1] % 8 != 0:
        return False
    return importlib.util.find_spec("flash_attn") is not None


def _check_scale(softmax_scale) -> None:
    if softmax_scale is None:
        return
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise ValueError(f"softmax_scale must be a float or None, got {softmax_scale!r}")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale!r}")


def _check_bthd(name: str, t, ref_name: str | None = None, ref: torch.Tensor | None = None) -> None:
    check_float(name, t, min_ndim=4)
    if t.dim() != 4:
        raise ValueError(f"{name} must be [B, T, H, D], got shape {tuple(t.shape)}")
    if t.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim D={t.shape[-1]} exceeds {MAX_HEAD_DIM}")
    if ref is None:
        return
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} dtype {t.dtype} differs from {ref_name} dtype {ref.dtype}")
    for axis, label in ((0, "B"), (2, "H"), (3, "D")):
        if t.shape[axis] != ref.shape[axis]:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} and {ref_name} shape {tuple(ref.shape)} differ in {label}"
            )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    prefix_len: int = 0,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention `softmax(q k^T * scale + mask) v`, differentiable on every backend.

    Args:
        q, k, v: `[B, T, H, D]`, one float dtype (fp32/fp16/bf16), one device, D <= 256.
        causal: with True, key j is visible to query t iff `j <= t or j < prefix_len`
            (plain causal for prefix_len 0 or 1, prefix-LM above, full at prefix_len == T).
            Ignored (full attention) when False.
        prefix_len: int in [0, T].
        softmax_scale: default `1 / sqrt(D)`.
    Returns:
        `[B, T, H, D]` in q's dtype. Accumulation is fp32 on every Triton path.
    """
    _check_bthd("q", q)
    _check_bthd("k", k, "q", q)
    _check_bthd("v", v, "q", q)
    check_same_device(q=q, k=k, v=v)
    t = q.shape[1]
    if k.shape[1] != t or v.shape[1] != t:
        raise ValueError(
            f"attention needs equal sequence lengths, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or not 0 <= prefix_len <= t:
        raise ValueError(f"prefix_len must be an int in [0, T={t}], got {prefix_len!r}")
    _check_scale(softmax_scale)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    # Canonical mask: prefix 1 adds nothing to causal, a prefix of T makes it full.
    if not causal or prefix_len >= t:
        causal, prefix_len = False, 0
    elif prefix_len <= 1:
        prefix_len = 0

    if prefix_len == 0 and _flash_attn_usable(q, k, v):
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    if choose_backend("attention", q, k, v) == "triton":
        if q.shape[-1] <= TRITON_MAX_HEAD_DIM:
            from .triton import attention_triton

            return attention_triton(q, k, v, causal, prefix_len, scale)
        if q.is_cuda:
            warn_once("attention.head_dim", f"attention: head dim {q.shape[-1]} > 128 uses the SDPA reference")
    return attention_ref(q, k, v, causal, prefix_len, scale)


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
        q: `[B, Tq, H, D]` (Tq is usually 1).
        k_cache, v_cache: `[B, T_max, H, D]`, q's dtype and device, preallocated by the caller.
        cache_seqlens: int32/int64 tensor `[B]` (or an int for every sample): valid cache entries
            before this call.
        k, v: optional `[B, Tq, H, D]`; written IN PLACE into the caches at positions
            `cache_seqlens[b] .. cache_seqlens[b] + Tq - 1`.
        softmax_scale: default `1 / sqrt(D)`.
    The query at position `p = cache_seqlens[b] + t` attends to cache positions `0 .. p` (causal
    among the new tokens). Without k/v the caller must already have written positions up to
    `cache_seqlens + Tq - 1` (unlike flash-attn, cache_seqlens never counts the new tokens).
    `cache_seqlens + Tq > T_max` raises ValueError (checked with one host sync, skipped while a CUDA
    graph is being captured or torch.compile traces). The caller advances cache_seqlens.
    Returns:
        `[B, Tq, H, D]` in q's dtype. No autograd.
    """
    _check_bthd("q", q)
    _check_bthd("k_cache", k_cache, "q", q)
    _check_bthd("v_cache", v_cache, "q", q)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v, or neither")
    b, t_q = q.shape[:2]
    if k is not None:
        _check_bthd("k", k, "q", q)
        _check_bthd("v", v, "q", q)
        for name, t in (("k", k), ("v", v)):
            if t.shape != q.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} must equal q shape {tuple(q.shape)}")
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        cache_seqlens = torch.full((b,), cache_seqlens, dtype=torch.int32, device=q.device)
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        got = cache_seqlens.dtype if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__
        raise ValueError(f"cache_seqlens must be an int32/int64 tensor [B] or an int, got {got}")
    if cache_seqlens.shape != (b,):
        raise ValueError(f"cache_seqlens must have shape [B={b}], got {tuple(cache_seqlens.shape)}")
    check_same_device(q=q, cache_seqlens=cache_seqlens)
    _check_scale(softmax_scale)
    t_max = k_cache.shape[1]
    if not (torch.compiler.is_compiling() or q.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < 0:
            raise ValueError(f"cache_seqlens must be >= 0, got min {lo}")
        if hi + t_q > t_max:
            raise ValueError(f"cache overflow: cache_seqlens max {hi} + Tq {t_q} > T_max {t_max}")
    cache_seqlens = cache_seqlens.to(torch.int32)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5

    tensors = [q, k_cache, v_cache] + ([k, v] if k is not None else [])
    if k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and _flash_attn_usable(*tensors):
        from flash_attn import flash_attn_with_kvcache

        # flash-attn counts the new tokens in cache_seqlens only when it writes them itself.
        seqlens = cache_seqlens if k is not None else cache_seqlens + t_q
        return flash_attn_with_kvcache(
            q, k_cache, v_cache, k=k, v=v, cache_seqlens=seqlens, softmax_scale=scale, causal=True
        )
    if k is not None:
        write_kvcache(k_cache, v_cache, cache_seqlens, k, v)
    with torch.no_grad():
        if choose_backend("attention_with_kvcache", q, k_cache, v_cache) == "triton":
            if q.shape[-1] <= TRITON_MAX_HEAD_DIM:
                from .decode import attention_with_kvcache_fwd

                return attention_with_kvcache_fwd(q, k_cache, v_cache, cache_seqlens, scale)
            if q.is_cuda:
                warn_once("kvcache.head_dim", f"attention_with_kvcache: head dim {q.shape[-1]} > 128 uses SDPA")
        return attention_with_kvcache_ref(q, k_cache, v_cache, cache_seqlens, scale)

