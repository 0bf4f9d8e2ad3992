"""`scaled_dot_product_attention`: torch's function, and our kernel where it applies.

A drop-in for `torch.nn.functional.scaled_dot_product_attention` on the torch this runs with: same signature
(`scale` and `enable_gqa` keyword-only), same input domain (any leading dims, empty dimensions, boolean or float
masks with torch's dtype promotion, `dropout_p` up to 1, `scale` as a float, inf or a 0-d tensor, `is_causal`
with or without a mask, GQA), same results and the same exceptions, because every call our kernel does not
implement IS torch's call: on CPU tensors (no kernel of ours applies there) the function forwards its arguments
and returns, a few hundred nanoseconds over calling torch directly.

One deliberate difference: with `is_causal` and a scale of zero or below, torch's CPU kernel multiplies the
masked -inf logits by the scale (NaN for 0, +inf before the softmax for a negative scale) and returns NaN;
here those calls get the causal mask explicitly and return the finite result the formula defines.

Two keyword extensions for the masks image models use (they build a mask, then follow the same rules):
    prefix_len=P     prefix-LM: causal, except that the first P keys are visible to every query;
    block_sizes=[n0, n1, ...]  block-causal (VAR's scale-wise mask): the sequence is cut into blocks of
                     these lengths and key j is visible to query t iff j's block is not after t's.

The Triton kernel (`triton.py`) runs what it implements, where `choose_kernel` picks it (on CUDA under `auto`
only once a GPU run measured it faster; always with SPECTRALAR_KERNELS=triton, on CPU tensors only under the
Triton interpreter, TRITON_INTERPRET=1 set before this package is imported): full, causal and prefix-LM
attention over 4-D `[B, H, T, D]` tensors with Tq == Tk, no attn_mask, no dropout, head dim <= 128, GQA by
repeating the key/value heads. Anything else, or anything malformed, is torch's call.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .._common import FLOAT_DTYPES, _backend, choose_kernel, interpreter_on
from .checks import _ENV, _ENV_KEY, TRITON_MAX_HEAD_DIM, ArgumentError, kernels_forced

__all__ = ["scaled_dot_product_attention"]

_torch_sdpa = F.scaled_dot_product_attention  # bound once: the pass-through calls it directly


def scaled_dot_product_attention(*args, scale=None, prefix_len=None, block_sizes=None, **kwargs):
    """`torch.nn.functional.scaled_dot_product_attention`, with the prefix-LM and block-causal extensions.

    scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *,
                                 scale=None, enable_gqa=False, prefix_len=None, block_sizes=None)

    Args (torch's, same meanings and domain):
        query `[..., Hq, Tq, D]`, key `[..., Hkv, Tk, D]`, value `[..., Hkv, Tk, Dv]`.
        attn_mask: bool (True = attend) or float (added to the logits), broadcastable to `[..., Hq, Tq, Tk]`.
        dropout_p: applied whenever > 0 (pass 0 in evaluation, as with torch).
        is_causal: top-left causal (key j visible to query t iff j <= t); combined with attn_mask when both are
            given, as torch does.
        scale: default `1 / sqrt(D)`. enable_gqa: Hq % Hkv == 0, query head h reading key/value head
            h // (Hq / Hkv).
    Extensions (keyword-only):
        prefix_len: int in [0, Tk]: prefix-LM mask (implies causal beyond the prefix).
        block_sizes: positive ints summing to Tq == Tk: block-causal mask.
        Either may be combined with attn_mask (a key must pass both); not with each other.
    Returns:
        `[..., Hq, Tq, Dv]`; differentiable on every path. Errors: torch's, for torch's arguments; ArgumentError
        (a ValueError) for a malformed extension.
    """
    # The signature is `_parse`'s (set below, for help() and inspect). The arguments are taken as given, so the
    # common call reaches torch exactly as the caller wrote it (binding them to names and passing the defaults on
    # costs torch's argument parser ~0.5 us, 6% of a tiny call on a loaded 2-core machine), after the fewest
    # checks that tell a call no kernel of ours can take: no `scale` (torch's NaN case) or extension, and a
    # torch without CUDA, or a CPU query, without the Triton interpreter.
    if scale is None and prefix_len is None and block_sizes is None:
        if _NO_KERNELS:
            return _torch_sdpa(*args, **kwargs)
        try:
            cpu = not args[0].is_cuda
        except (IndexError, AttributeError):  # all by name, or not a tensor (then torch raises its own error)
            cpu = False
        if cpu:
            if not _INTERPRETER:
                return _torch_sdpa(*args, **kwargs)
            # kernels_forced(), inlined: under the interpreter (the tests, `pytest bench/`) every call asks
            mode = _backend.get()
            if mode is None and _ENV is not None:
                mode = _ENV.get(_ENV_KEY)
                if mode is None:
                    return _torch_sdpa(*args, **kwargs)
            if mode in _NO_KERNEL_MODES:
                return _torch_sdpa(*args, **kwargs)
    if len(args) > 6:  # torch's TypeError for it, not Python's for _parse
        return _torch_sdpa(*args, **kwargs)
    return _parse(*args, scale=scale, prefix_len=prefix_len, block_sizes=block_sizes, **kwargs)


# Our kernels run on CUDA tensors, and on CPU tensors only under the Triton interpreter, which triton reads when
# the kernels are defined: both known at import, so that calls in a CPU-only torch need not check anything.
_INTERPRETER = interpreter_on()
_NO_KERNELS = not torch.backends.cuda.is_built() and not _INTERPRETER
_NO_KERNEL_MODES = frozenset(("auto", "ref", b"auto", b"ref"))  # use_backend's (str) or the environment's (bytes)


def _parse(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False,
           prefix_len=None, block_sizes=None):  # fmt: skip
    """The named form of `scaled_dot_product_attention`: calls with a scale or an extension, or where a kernel
    may run (CUDA tensors, SPECTRALAR_KERNELS=triton)."""
    cpu = not (type(query) is torch.Tensor and query.is_cuda)
    if prefix_len is None and block_sizes is None and cpu and not (_INTERPRETER and kernels_forced()):
        if is_causal is True and scale is not None and _nonpositive(scale):
            return _explicit_causal(query, key, value, attn_mask, dropout_p, scale, enable_gqa)
        return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    return _dispatch(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, prefix_len, block_sizes)


scaled_dot_product_attention.__signature__ = inspect.signature(_parse)


def _nonpositive(scale) -> bool:
    """scale <= 0 for a number or a one-element tensor (anything else: torch rejects it)."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return scale <= 0
    return isinstance(scale, torch.Tensor) and scale.numel() == 1 and bool(scale <= 0)


def _causal_mask(t_q: int, t_k: int, prefix: int, device) -> torch.Tensor:
    """`[Tq, Tk]` bool, top-left aligned: key j visible to query t iff `j <= t or j < prefix`."""
    j = torch.arange(t_k, device=device)
    return (j[None, :] <= torch.arange(t_q, device=device)[:, None]) | (j[None, :] < prefix)


def _with_mask(attn_mask, mask: torch.Tensor):
    """attn_mask combined with a structural boolean mask: a key must pass both (torch's rule for is_causal)."""
    if attn_mask is None:
        return mask
    if attn_mask.dtype == torch.bool:
        return mask & attn_mask
    return torch.where(mask, attn_mask, float("-inf"))


def _explicit_causal(query, key, value, attn_mask, dropout_p, scale, enable_gqa, prefix: int = 0):
    """torch's call with the causal (prefix-LM) mask made explicit."""
    if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and query.dim() >= 2
            and key.dim() >= 2 and (attn_mask is None or isinstance(attn_mask, torch.Tensor))):  # fmt: skip
        return _torch_sdpa(query, key, value, attn_mask, dropout_p, True, scale=scale, enable_gqa=enable_gqa)
    mask = _with_mask(attn_mask, _causal_mask(query.shape[-2], key.shape[-2], prefix, query.device))
    return _torch_sdpa(query, key, value, mask, dropout_p, False, scale=scale, enable_gqa=enable_gqa)


def _check_extensions(query, key, prefix_len, block_sizes) -> None:
    if prefix_len is not None and block_sizes is not None:
        raise ArgumentError("pass prefix_len or block_sizes, not both")
    t_q, t_k = query.shape[-2], key.shape[-2]
    if prefix_len is not None and (isinstance(prefix_len, bool) or not isinstance(prefix_len, int)
                                   or not 0 <= prefix_len <= t_k):  # fmt: skip
        raise ArgumentError(f"prefix_len must be an int in [0, Tk={t_k}], got {prefix_len!r}")
    if block_sizes is None:
        return
    ok = isinstance(block_sizes, (list, tuple)) and len(block_sizes) > 0
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in block_sizes)
    if not ok or sum(block_sizes) != t_q or t_q != t_k:
        raise ArgumentError(f"block_sizes must be positive ints summing to Tq = Tk, got {block_sizes!r} for "
                            f"Tq={t_q}, Tk={t_k}")  # fmt: skip


def block_causal_mask(block_sizes, t: int, device) -> torch.Tensor:
    """`[T, T]` bool: key j visible to query t iff block(j) <= block(t), blocks of the given lengths."""
    block = torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                    torch.tensor(block_sizes, device=device))  # fmt: skip
    return block[None, :] <= block[:, None]


def _kernel_shapes(query, key, value, enable_gqa) -> bool:
    """4-D `[B, H, T, D]` tensors our kernel takes as torch would: one float dtype and device, Tq == Tk, no empty
    dimension, D == Dv <= 128, heads equal or (GQA) a multiple."""
    if not (type(query) is torch.Tensor and type(key) is torch.Tensor and type(value) is torch.Tensor):
        return False
    if query.dim() != 4 or key.shape != value.shape or key.dim() != 4 or query.dtype not in FLOAT_DTYPES:
        return False
    b, h_q, t, d = query.shape
    _, h_kv, t_k, d_k = key.shape
    return (key.dtype == value.dtype == query.dtype and key.device == value.device == query.device
            and key.shape[0] == b and t_k == t and d_k == d and 0 < d <= TRITON_MAX_HEAD_DIM and b * t * h_q > 0
            and (h_kv == h_q or enable_gqa is True and h_kv > 0 and h_q % h_kv == 0))  # fmt: skip


def _dispatch(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, prefix_len, block_sizes):
    """Calls on CUDA tensors, with an extension, or with SPECTRALAR_KERNELS=triton: our kernel for what it
    implements, torch's SDPA (with the extension's mask) for the rest."""
    prefix = None
    if prefix_len is not None or block_sizes is not None:
        if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and query.dim() >= 2
                and key.dim() >= 2):  # fmt: skip
            raise ArgumentError("prefix_len / block_sizes need query and key tensors [..., T, D]")
        _check_extensions(query, key, prefix_len, block_sizes)
        prefix = prefix_len
    causal = is_causal is True or prefix is not None
    finite_scale = scale is None or type(scale) in (int, float) and abs(scale) < float("inf")  # not NaN either
    structural = (attn_mask is None and block_sizes is None and type(dropout_p) in (int, float) and dropout_p == 0
                  and type(is_causal) is bool and type(enable_gqa) is bool and finite_scale)  # fmt: skip
    if structural and _kernel_shapes(query, key, value, enable_gqa):
        t = query.shape[-2]
        p = prefix or 0
        if causal and p >= t:  # canonical structure, as `attention` takes it
            causal, p = False, 0
        elif p <= 1:
            p = 0
        impl = choose_kernel("attention", "prefix" if p else "causal" if causal else "full", query, key, value,
                             t=t, d=query.shape[-1], bh=query.shape[0] * query.shape[1])
        if impl is not None:
            from .triton import attention_triton

            h_q, h_kv = query.shape[1], key.shape[1]
            if h_kv != h_q:
                key, value = (x.repeat_interleave(h_q // h_kv, dim=1) for x in (key, value))
            q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, T, H, D] views
            sm_scale = scale if scale is not None else query.shape[-1] ** -0.5
            return attention_triton(q, k, v, causal, p, sm_scale, impl).transpose(1, 2)

    if block_sizes is not None:
        mask = block_causal_mask(block_sizes, query.shape[-2], query.device)
        return _torch_sdpa(query, key, value, _with_mask(attn_mask, mask), dropout_p, is_causal, scale=scale,
                           enable_gqa=enable_gqa)  # fmt: skip
    if prefix is not None and prefix > 1:
        return _explicit_causal(query, key, value, attn_mask, dropout_p, scale, enable_gqa, prefix)
    if causal and scale is not None and _nonpositive(scale):
        return _explicit_causal(query, key, value, attn_mask, dropout_p, scale, enable_gqa)
    if prefix is not None:  # prefix 0 or 1: plain causal
        is_causal = True
    return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
