"""`scaled_dot_product_attention`: torch's signature and `[B, H, T, D]` layout, on our kernel where it applies.

A drop-in for `torch.nn.functional.scaled_dot_product_attention` (same arguments, same semantics: boolean
masks with True = attend, additive float masks, both broadcast to `[B, Hq, Tq, Tk]`; `is_causal` aligned to
the top left, key j visible to query t iff j <= t, as torch's `tril` does for any Tq, Tk; GQA with
`enable_gqa`; dropout), plus two keyword extensions for the masks image models use:
    prefix_len=P     prefix-LM: causal, except that the first P keys are visible to every query;
    block_sizes=[n0, n1, ...]  block-causal (VAR's scale-wise mask): the sequence is cut into blocks of
                     these lengths and key j is visible to query t iff j's block is not after t's.

Dispatch: the Triton kernel (`triton.py`) runs what it implements, full / causal / prefix-LM attention with
Tq == Tk, no attn_mask, no dropout, head dim <= 128 (GQA by repeating the key/value heads), wherever
`choose_kernel` picks it: always with SPECTRALAR_KERNELS=triton, and on CUDA under `auto` only once a GPU run
measured it faster (attention-v2 has not been timed, so `auto` runs torch's SDPA today). Everything else runs
torch's SDPA with the extensions turned into a boolean mask. Where torch's CPU `is_causal` returns NaN (a scale
of zero or below: it scales the masked logits) the explicit mask gives the finite answer instead. A row that
sees no key returns zeros, as torch's SDPA does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import FLOAT_DTYPES, check_same_device, choose_kernel
from .checks import TRITON_MAX_HEAD_DIM, check_scale

__all__ = ["scaled_dot_product_attention"]

SDPA_DTYPES = FLOAT_DTYPES + (torch.float64,)  # float64 always runs torch's SDPA


def _check_bhtd(name: str, t, ref: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty [B, H, T, D] tensor, got shape {tuple(t.shape)}")
    if t.dtype not in SDPA_DTYPES:
        raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if ref is not None and t.dtype != ref.dtype:
        raise ValueError(f"{name} dtype {t.dtype} differs from query dtype {ref.dtype}")


def block_causal_mask(block_sizes, t: int, device) -> torch.Tensor:
    """`[T, T]` bool: key j visible to query t iff block(j) <= block(t), blocks of the given lengths."""
    block = torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                    torch.tensor(block_sizes, device=device))  # fmt: skip
    return block[None, :] <= block[:, None]


def _check_block_sizes(block_sizes, t_q: int, t_k: int) -> None:
    ok = isinstance(block_sizes, (list, tuple)) and len(block_sizes) > 0
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in block_sizes)
    if not ok or sum(block_sizes) != t_q or t_q != t_k:
        raise ValueError(f"block_sizes must be positive ints summing to Tq = Tk, got {block_sizes!r} for "
                         f"Tq={t_q}, Tk={t_k}")  # fmt: skip


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    prefix_len: int | None = None,
    block_sizes: list[int] | None = None,
) -> torch.Tensor:
    """`torch.nn.functional.scaled_dot_product_attention` with the prefix-LM and block-causal extensions.

    Args:
        query: `[B, Hq, Tq, D]`; key `[B, Hkv, Tk, D]`; value `[B, Hkv, Tk, Dv]`; one float dtype and device.
            Hkv == Hq, or (enable_gqa) Hq % Hkv == 0, query head h reading key/value head h // (Hq / Hkv).
        attn_mask: bool (True = attend) or additive float of query's dtype, >= 2 dims, broadcastable to
            `[B, Hq, Tq, Tk]`.
        dropout_p: probability in [0, 1), applied whenever > 0 (as torch: pass 0 in evaluation).
        is_causal: top-left causal mask (key j visible to query t iff j <= t); not with attn_mask.
        scale: default `1 / sqrt(D)`; zero and negative scales are valid.
        prefix_len: int in [0, Tk]: prefix-LM mask (implies causal beyond the prefix).
        block_sizes: positive ints summing to Tq == Tk: block-causal mask.
        attn_mask may be combined with prefix_len or block_sizes (a key must pass both).
    Returns:
        `[B, Hq, Tq, Dv]` in query's dtype; differentiable on every path.
    """
    _check_bhtd("query", query)
    _check_bhtd("key", key, query)
    _check_bhtd("value", value, query)
    check_same_device(query=query, key=key, value=value, attn_mask=attn_mask)
    b, h_q, t_q, d = query.shape
    _, h_kv, t_k, _ = key.shape
    if key.shape[0] != b or key.shape[-1] != d or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"key must be [B={b}, Hkv, Tk, D={d}] and value [B, Hkv, Tk, Dv] with key's B, Hkv, Tk; "
                         f"got key {tuple(key.shape)}, value {tuple(value.shape)}")  # fmt: skip
    if h_kv != h_q and not (enable_gqa and h_q % h_kv == 0):
        raise ValueError(f"query has {h_q} heads and key/value {h_kv}: equal, or enable_gqa=True with a multiple")
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    check_scale(scale, "scale")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype not in (torch.bool, query.dtype):
            got = attn_mask.dtype if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
            raise ValueError(f"attn_mask must be a bool tensor or a float one of query's dtype {query.dtype}, "
                             f"got {got}")  # fmt: skip
        if attn_mask.dim() < 2:
            raise ValueError(f"attn_mask must have at least 2 dims [.., Tq, Tk], got {tuple(attn_mask.shape)}")
        try:
            shape = torch.broadcast_shapes(attn_mask.shape, (b, h_q, t_q, t_k))
        except RuntimeError:
            shape = None
        if shape != (b, h_q, t_q, t_k):
            raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to [B, Hq, Tq, Tk] = "
                             f"{[b, h_q, t_q, t_k]}")  # fmt: skip
        if is_causal:
            raise ValueError("pass attn_mask or is_causal, not both (torch's rule)")
    if prefix_len is not None and block_sizes is not None:
        raise ValueError("pass prefix_len or block_sizes, not both")
    if prefix_len is not None and (isinstance(prefix_len, bool) or not isinstance(prefix_len, int)
                                   or not 0 <= prefix_len <= t_k):  # fmt: skip
        raise ValueError(f"prefix_len must be an int in [0, Tk={t_k}], got {prefix_len!r}")
    if block_sizes is not None:
        _check_block_sizes(block_sizes, t_q, t_k)

    causal = is_causal or prefix_len is not None
    prefix = prefix_len or 0
    if not causal or prefix >= t_k:  # canonical structure, as `attention` takes it
        causal, prefix = False, 0
    elif prefix <= 1:
        prefix = 0
    structural = attn_mask is None and block_sizes is None and dropout_p == 0
    if structural and t_q == t_k and query.dtype in FLOAT_DTYPES and d <= TRITON_MAX_HEAD_DIM and value.shape[-1] == d:
        variant = "prefix" if prefix else "causal" if causal else "full"
        impl = choose_kernel("attention", variant, query, key, value, t=t_q, d=d, bh=b * h_q)
        if impl is not None:
            from .triton import attention_triton

            if h_kv != h_q:
                key, value = (x.repeat_interleave(h_q // h_kv, dim=1) for x in (key, value))
            q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, T, H, D] views
            sm_scale = scale if scale is not None else d**-0.5
            return attention_triton(q, k, v, causal, prefix, sm_scale, impl).transpose(1, 2)

    mask = None
    if block_sizes is not None:
        mask = block_causal_mask(block_sizes, t_q, query.device)
    elif causal and (prefix or (scale is not None and scale <= 0)):
        j = torch.arange(t_k, device=query.device)
        mask = (j[None, :] <= torch.arange(t_q, device=query.device)[:, None]) | (j[None, :] < prefix)
    if mask is not None:
        causal = False
        if attn_mask is None:
            attn_mask = mask
        elif attn_mask.dtype == torch.bool:
            attn_mask = mask & attn_mask
        else:
            attn_mask = torch.where(mask, attn_mask, float("-inf"))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=causal, scale=scale, enable_gqa=h_kv != h_q)  # fmt: skip
