"""`flash_attn_func`: flash-attn's function of that name, by signature, layout and numbers.

A model written for flash-attn changes its import line and nothing else:

    from spectralar_kernels import flash_attn_func   # was: from flash_attn import flash_attn_func

Same arguments in the same order with the same defaults, `[B, T, H, D]` tensors, causal masks aligned to the
bottom right when Tq != Tk (query i sees keys `j <= i + Tk - Tq`; a query that sees none returns zeros),
sliding windows with flash-attn's conversions (a bound >= Tk is unbounded; causal sets the right bound to 0),
soft-capping, grouped/multi-query heads (query head h reads key/value head h // (H / H_kv)), dropout, and
gradients for q, k, v. Beyond flash-attn: fp32 and float64 inputs (the reference), and CPU tensors.

Backends, per call: flash-attn itself when it is installed and would run the call (`checks.flash_attn_usable`);
our Triton kernel where `choose_kernel` picks one for what it implements (Tq == Tk, full or causal, no window,
softcap or dropout, head dim <= 128; GQA by repeating the key/value heads, so their gradients sum over the
group); the reference (`ref.flash_attn_ref`, torch's SDPA) for everything else.
Not supported: `alibi_slopes` (NotImplementedError naming it), `return_attn_probs` together with dropout
(flash-attn encodes the dropout pattern in the probabilities' signs; NotImplementedError), empty sequences.
"""

from __future__ import annotations

import torch

from .._common import FLOAT_DTYPES, choose_kernel
from .checks import (
    TRITON_MAX_HEAD_DIM,
    ArgumentError,
    check_bool,
    check_bthd,
    check_scale,
    flash_attn_usable,
    same_device,
    window_pair,
)
from .ref import flash_attn_ref

__all__ = ["flash_attn_func", "flash_window"]

SUPPORTED_DTYPES = FLOAT_DTYPES + (torch.float64,)


def flash_window(window_size, causal: bool, t_q: int, t_k: int) -> tuple[bool, tuple[int, int]]:
    """flash-attn's normalisation of (causal, window): a bound >= Tk is unbounded, a single query makes causal
    a no-op, causal replaces the right bound (kept as -1: `causal` carries it). Returns (causal, (left, right))."""
    left, right = window_pair(window_size)
    causal = causal and t_q > 1
    left, right = (-1 if left >= t_k else left), (-1 if right >= t_k or causal else right)
    if right == 0 and left < 0 and t_q == t_k:  # a right bound of 0 on a square mask is plain causal
        causal, right = True, -1
    return causal, (left, right)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Softmax attention with flash-attn's `flash_attn_func` signature and semantics, differentiable.

    Args:
        q: `[B, Tq, H, D]`; k, v: `[B, Tk, H_kv, D]`, H % H_kv == 0; one float dtype (fp16/bf16 as flash-attn, also
            fp32/float64) and device; D <= 256.
        dropout_p: probability of dropping an attention weight (pass 0.0 in evaluation, as with flash-attn).
        softmax_scale: default `1 / sqrt(D)`.
        causal: bottom-right aligned: query i sees keys `j <= i + Tk - Tq`.
        window_size: `(left, right)` as a tuple, list or 2-element tensor, -1 unbounded: query i sees keys in
            `[i + Tk - Tq - left, i + Tk - Tq + right]`.
        softcap: > 0 replaces each scaled logit s by `softcap * tanh(s / softcap)` (not with dropout).
        alibi_slopes: not supported (NotImplementedError).
        deterministic: accepted; every backend here has a deterministic backward.
        return_attn_probs: also return the logsumexp `[B, H, Tq]` (fp32, natural log of the scaled, soft-capped
            logits; +inf for a row that sees no key) and flash-attn's `S_dmask`, which is an empty tensor
            without dropout (as flash-attn returns it).
    Returns:
        out `[B, Tq, H, D]` in q's dtype, or (out, softmax_lse, S_dmask) with return_attn_probs.
    Raises ArgumentError (a ValueError and a RuntimeError) for a malformed argument.
    """
    if alibi_slopes is not None:
        raise NotImplementedError("flash_attn_func: alibi_slopes is not supported (no backend here implements it)")
    check_bthd("q", q, dtypes=SUPPORTED_DTYPES)
    check_bthd("k", k, "q", q, same="BD", dtypes=SUPPORTED_DTYPES)
    check_bthd("v", v, "k", k, same="BHD", dtypes=SUPPORTED_DTYPES)
    if v.shape[1] != k.shape[1]:
        raise ArgumentError(f"k and v must have the same length, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    same_device(q=q, k=k, v=v)
    b, t_q, h, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ArgumentError(f"q has {h} heads, not a multiple of k/v's {h_kv} (k {tuple(k.shape)})")
    for name, flag in (("causal", causal), ("deterministic", deterministic), ("return_attn_probs", return_attn_probs)):
        check_bool(name, flag)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p <= 1:
        raise ArgumentError(f"dropout_p must be a float in [0, 1], got {dropout_p!r}")
    check_scale(softmax_scale)
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not 0 <= softcap < float("inf"):
        raise ArgumentError(f"softcap must be a finite float >= 0 (0: off), got {softcap!r}")
    if softcap > 0 and dropout_p > 0:
        raise ArgumentError("softcap does not support dropout (flash-attn's rule)")
    if return_attn_probs and dropout_p > 0:
        raise NotImplementedError("flash_attn_func: return_attn_probs with dropout_p > 0 is not supported "
                                  "(flash-attn encodes its dropout pattern in the probabilities)")  # fmt: skip
    causal, window = flash_window(window_size, causal, t_q, t_k)
    scale = softmax_scale if softmax_scale is not None else d**-0.5

    if flash_attn_usable(q, k, v) and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1:
        from flash_attn import flash_attn_func as peer

        return peer(q, k, v, dropout_p, scale, causal, window, softcap, None, deterministic, return_attn_probs)
    if (window == (-1, -1) and t_q == t_k and softcap == 0 and dropout_p == 0 and not return_attn_probs
            and q.dtype in FLOAT_DTYPES and d <= TRITON_MAX_HEAD_DIM):  # fmt: skip
        impl = choose_kernel("attention", "causal" if causal else "full", q, k, v, t=t_q, d=d,
                             bh=q.shape[0] * q.shape[2])
        if impl is not None:
            from .triton import attention_triton

            if h_kv != h:
                k, v = (x.repeat_interleave(h // h_kv, dim=2) for x in (k, v))
            return attention_triton(q, k, v, causal, 0, scale, impl)
    got = flash_attn_ref(q, k, v, dropout_p, scale, causal, window, float(softcap), return_lse=return_attn_probs)
    if return_attn_probs:
        out, lse = got
        return out, lse, torch.empty((0,), dtype=q.dtype, device=q.device)
    return got
