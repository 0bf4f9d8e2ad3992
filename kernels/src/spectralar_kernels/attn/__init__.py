"""Softmax attention in flash-attn's `[B, T, H, D]` layout, KV-cached decoding, and drop-ins for the two
libraries image models call: flash-attn (`flash_attn_func`, `flash_attn_with_kvcache`: its signatures) and torch
(`scaled_dot_product_attention`: its signature, `[B, H, T, D]` layout, input domain and errors).

Modules: `flash.py` (flash_attn_func), `kvcache.py` (the KV-cache entries: normalise, select a backend) with
`kvrun.py` (one runner per backend), `sdpa.py`, `ref.py` (the references: CPU path, test oracle, benchmark
baseline), `checks.py` (argument checks, backend availability), and the Triton kernels (`triton.py`,
`decode.py`).

Backends, chosen per call:
  flash-attn  when `flash_attn` imports, the tensors are CUDA fp16/bf16, D % 8 == 0, the mask is one it
              implements, and SPECTRALAR_KERNELS is `auto` (never required);
  Triton      (`triton.py`; decoding in `decode.py`) where `choose_kernel` picks an implementation for
              the mask variant ("full", "causal" or "prefix"): on CUDA under `auto` only once a GPU run
              measured it faster than the reference; always with SPECTRALAR_KERNELS=triton (CPU tensors
              then need TRITON_INTERPRET=1);
              head dims up to 128 (padded to a power of two >= 16 with masks); 128 < D <= 256 falls
              back to the reference (with a one-time warning on CUDA);
  reference   (`ref.py`) `torch.nn.functional.scaled_dot_product_attention` with an explicit mask.
Every path of `attention` and `flash_attn_func` is differentiable; the KV-cache entries are inference only.
"""

from __future__ import annotations

import torch

from .._common import choose_kernel, warn_once
from .checks import (
    TRITON_MAX_HEAD_DIM,
    ArgumentError,
    check_bool,
    check_bthd,
    check_scale,
    flash_attn_usable,
    same_device,
)
from .flash import flash_attn_func
from .kvcache import attention_with_kvcache, flash_attn_with_kvcache
from .ref import attention_ref
from .sdpa import scaled_dot_product_attention

__all__ = [
    "attention",
    "attention_with_kvcache",
    "flash_attn_func",
    "flash_attn_with_kvcache",
    "scaled_dot_product_attention",
]


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
    check_bthd("q", q)
    check_bthd("k", k, "q", q)
    check_bthd("v", v, "q", q)
    same_device(q=q, k=k, v=v)
    t = q.shape[1]
    if k.shape[1] != t or v.shape[1] != t:
        raise ArgumentError(
            f"attention needs equal sequence lengths, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    check_bool("causal", causal)
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or not 0 <= prefix_len <= t:
        raise ArgumentError(f"prefix_len must be an int in [0, T={t}], got {prefix_len!r}")
    check_scale(softmax_scale)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    # Canonical mask: prefix 1 adds nothing to causal, a prefix of T makes it full.
    if not causal or prefix_len >= t:
        causal, prefix_len = False, 0
    elif prefix_len <= 1:
        prefix_len = 0

    if prefix_len == 0 and flash_attn_usable(q, k, v):
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    variant = "prefix" if prefix_len else "causal" if causal else "full"
    impl = choose_kernel("attention", variant, q, k, v, t=t, d=q.shape[-1], bh=q.shape[0] * q.shape[2])
    if impl is not None:
        if q.shape[-1] <= TRITON_MAX_HEAD_DIM:
            from .triton import attention_triton

            return attention_triton(q, k, v, causal, prefix_len, scale, impl)
        if q.is_cuda:
            warn_once("attention.head_dim", f"attention: head dim {q.shape[-1]} > 128 uses the SDPA reference")
    return attention_ref(q, k, v, causal, prefix_len, scale)
