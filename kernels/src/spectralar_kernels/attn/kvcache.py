"""KV-cached attention with flash-attn's contract: `flash_attn_with_kvcache` (its signature) and
`attention_with_kvcache` (the same function with `cache_seqlens` fourth, kept for existing callers).

A call goes through three steps: `normalise` validates it and puts it in one form (`kvrun.KVCall`; a plain CPU
call takes `_fast_call`, attribute checks only), `select` chooses the backend (the one place that reads the
kernel mode, the device, the compile state and what is installed), and one runner per backend computes it
(`kvrun.py`).

No host synchronisation: with a tensor `cache_seqlens` on a GPU nothing here reads a device value on the host, so
a decoding step can be captured in a CUDA graph, traced by torch.compile (fullgraph) or run on fake tensors.
The value checks that would need a sync (`0 <= cache_seqlens`, `cache_seqlens + Tnew <= T_max`, cache_batch_idx
in range) run only with SPECTRALAR_DEBUG_CHECKS=1. Values in host memory (an int, a plain CPU tensor) are read
there for free: cache_batch_idx is then always checked, and positions that are in range and shared by every
sample take the slicing path with no index arithmetic (how the eager sampler calls it).

Out-of-range policy (every backend, no debug switch): the new token t of sample b belongs at position
`p = cache_seqlens[b] + t`. It is written only when `0 <= p < T_max`; a position outside the cache is
dropped, nothing else is touched. Keys are read only from `[0, min(L, T_max))` (L: the valid length after the
append): slots past it are never read into the result, so a `torch.empty` cache may hold NaN there. A query
that sees no key returns zeros (flash-attn's rule for an empty row), so the output stays finite.

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

import math
import os

import torch

from .._common import FLOAT_DTYPES, choose_kernel, warn_once
from .checks import (
    MAX_HEAD_DIM,
    ArgumentError,
    check_bool,
    check_bthd,
    check_scale,
    flash_attn_usable,
    kernels_forced,
    same_device,
    window_pair,
)
from .kvrun import NO_WINDOW, KVCall, run_flash, run_host, run_ref, run_step, run_triton, step_runs, triton_runs
from .ref import host_readable

__all__ = ["attention_with_kvcache", "debug_checks", "flash_attn_with_kvcache"]

DEBUG_ENV = "SPECTRALAR_DEBUG_CHECKS"
INF = float("inf")


def debug_checks() -> bool:
    """True when SPECTRALAR_DEBUG_CHECKS=1: value checks that cost a host sync run on every call."""
    return os.environ.get(DEBUG_ENV, "0") == "1"


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Attention of new queries against a preallocated KV cache: flash-attn's `flash_attn_with_kvcache`, by
    signature (positional order and defaults), layout and results.

    Args:
        q: `[B, Tq, H, D]`, fp16/bf16 (as flash-attn) or fp32, D <= 256.
        k_cache, v_cache: `[B_cache, T_max, H_kv, D]`, q's dtype and device; H % H_kv == 0 (GQA: query head h
            reads cache head h // (H / H_kv)); B_cache >= B.
        k, v: optional `[B, Tnew, H_kv, D]` (Tnew <= T_max), written IN PLACE into the caches at positions
            `cache_seqlens[b] .. cache_seqlens[b] + Tnew - 1` (rows `cache_batch_idx[b]`), then attended.
        rotary_cos, rotary_sin: `[T_ro, R / 2]` (R <= D, needs k/v): rotate the first R dims of the new k at
            positions `cache_seqlens + t` and of q at `cache_seqlens + i` (causal or windowed) or at
            `cache_seqlens` (otherwise); rotary_interleaved pairs dims (0, 1), (2, 3)... else (i, i + R/2).
        cache_seqlens: int32/int64 tensor `[B]`, `[1]` or `[]` (broadcast), an int, or None: with k/v, the valid
            entries before this call; without, the valid entries in all (the caller wrote the new keys); None
            means the whole cache (not with k/v, flash-attn's rule). The caller advances it.
        cache_batch_idx: int tensor `[B]`: the cache row of each sample (default 0 .. B-1). Out of range: a
            ValueError where it can be read without a host sync (CPU tensors; on CUDA with
            SPECTRALAR_DEBUG_CHECKS=1), otherwise a device-side indexing error.
        cache_leftpad, block_table, alibi_slopes: not supported (NotImplementedError).
        softmax_scale: default `1 / sqrt(D)`; zero and negative scales are valid.
        causal: aligned to the bottom right: with L valid keys, query i sees keys `j <= L - Tq + i`.
        window_size: (left, right) as a tuple, list or 2-element tensor, -1 unbounded: query i sees keys
            `[L - Tq + i - left, L - Tq + i + right]`.
        softcap: > 0 replaces each logit s by `softcap * tanh(s / softcap)`.
        num_splits: split-K count for the Triton kernel (0: heuristic); does not change the result.
        return_softmax_lse: also return the logsumexp (natural log) of each row's logits, `[B, H, Tq]` fp32,
            +inf for a row that sees no key (as flash-attn).
    Positions out of range never read or write outside the cache (module docstring); a tensor cache_seqlens is
    checked only with SPECTRALAR_DEBUG_CHECKS=1 (one host sync per call), an int always.
    Returns:
        out `[B, Tq, H, D]` in q's dtype, or (out, softmax_lse) with return_softmax_lse. No autograd.
    Raises ArgumentError (a ValueError and a RuntimeError, the type flash-attn raises) for malformed arguments.
    """
    if cache_seqlens is None:  # the whole cache holds valid keys
        if k is not None or v is not None:
            raise ArgumentError("flash_attn_with_kvcache: with k and v, pass cache_seqlens (flash-attn's rule)")
        cache_seqlens = k_cache.shape[1] if isinstance(k_cache, torch.Tensor) and k_cache.dim() == 4 else 0
    return _attend(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                   block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes,
                   num_splits, return_softmax_lse, INF)  # fmt: skip


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
    """`flash_attn_with_kvcache` with `cache_seqlens` as the required fourth positional argument and
    `softmax_scale` seventh (the rest by name): this package's original entry, kept for existing callers.

    Same arguments, backends and results, except that a row that sees no key reports a softmax_lse of -inf
    (the logsumexp of nothing) where flash-attn reports +inf. New code: `flash_attn_with_kvcache`.
    """
    return _attend(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                   block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes,
                   num_splits, return_softmax_lse, -INF)  # fmt: skip


def _attend(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
            block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes, num_splits,
            return_softmax_lse, empty_lse):  # fmt: skip
    """Normalise, select, run. Inference only: the in-place cache write is not differentiable."""
    call = None
    if (cache_batch_idx is None and rotary_cos is None and rotary_sin is None and cache_leftpad is None
            and block_table is None and alibi_slopes is None and type(causal) is bool and type(window_size) is tuple
            and window_size == NO_WINDOW and softcap == 0 and rotary_interleaved is True
            and return_softmax_lse is False and num_splits == 0):  # fmt: skip
        call = _fast_call(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale, causal)
    if call is None:
        call = normalise(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                         cache_leftpad, block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved,
                         alibi_slopes, num_splits, return_softmax_lse, empty_lse)  # fmt: skip
        run, impl = select(call)
        with torch.no_grad():
            return run(call, impl)
    run, impl = select(call)
    return run(call, impl)  # _fast_call: nothing requires grad


# ---- normalise: validation and one form -----------------------------------------------------------------


def _fast_call(q, k_cache, v_cache, cache_seqlens, k, v, softmax_scale, causal: bool) -> KVCall | None:
    """The plain CPU call (no extras, autograd off or nothing requiring grad, positions in range) in its
    normal form with attribute checks only, or None (`normalise` then checks it and raises its errors): what
    a sampler on CPU calls thousands of times, where each further check shows (SDPA itself is ~35 us).
    Positions are read with one `tolist` (a plain CPU tensor's values live in host memory)."""
    tensor, new = torch.Tensor, k is not None
    kk, vv = (k, v) if new else (k_cache, v_cache)
    if not (type(q) is tensor and type(k_cache) is tensor and type(v_cache) is tensor and type(kk) is tensor
            and type(vv) is tensor and type(cache_seqlens) is tensor and q.is_cpu and k_cache.is_cpu
            and v_cache.is_cpu and kk.is_cpu and vv.is_cpu and cache_seqlens.is_cpu
            and q.dtype in FLOAT_DTYPES and q.dtype is k_cache.dtype is v_cache.dtype is kk.dtype is vv.dtype
            and cache_seqlens.dtype in (torch.int32, torch.int64)
            and not (torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad
                                                  or v_cache.requires_grad or kk.requires_grad or vv.requires_grad))
            and (softmax_scale is None or type(softmax_scale) is float and math.isfinite(softmax_scale))
            and not torch.compiler.is_compiling()):  # fmt: skip
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
    if cache_seqlens.shape != (b,):
        cache_seqlens = cache_seqlens.expand(b)
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    return KVCall(q, k_cache, v_cache, k, v, cache_seqlens, scale, causal, lo if lo == hi else None, True)


def _int_tensor(name: str, t, shapes: tuple) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.shape not in shapes:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ArgumentError(f"{name} must be an int32/int64 tensor of shape {' or '.join(map(str, shapes))}, "
                            f"got {got}")  # fmt: skip


def _debug_now(q: torch.Tensor) -> bool:
    """The debug checks are on and a host sync is possible (not while tracing or capturing a CUDA graph)."""
    if not debug_checks() or torch.compiler.is_compiling():
        return False
    return not (q.is_cuda and torch.cuda.is_current_stream_capturing())


def check_seqlens_range(lo: int, hi: int, t_new: int, t_max: int) -> None:
    """ArgumentError unless every sample fits: `0 <= lo` and `hi + Tnew <= T_max` (host ints)."""
    if lo < 0:
        raise ArgumentError(f"cache_seqlens must be >= 0, got min {lo}")
    if hi + t_new > t_max:
        raise ArgumentError(f"cache overflow: cache_seqlens max {hi} + Tnew {t_new} > T_max {t_max}")


def check_batch_idx(idx: torch.Tensor, b_cache: int) -> None:
    """ArgumentError unless every cache_batch_idx entry is a row of the cache (reads the values on the host)."""
    lo, hi = (int(x) for x in idx.aminmax())
    if lo < 0 or hi >= b_cache:
        raise ArgumentError(f"cache_batch_idx must lie in [0, {b_cache}) (the caches' rows), got {idx.tolist()}")


def _check_rotary(q, k, rotary_cos, rotary_sin) -> None:
    if (rotary_cos is None) != (rotary_sin is None):
        raise ArgumentError("pass both rotary_cos and rotary_sin, or neither")
    if rotary_cos is None:
        return
    if k is None:
        raise ArgumentError("rotary_cos/rotary_sin rotate the new k and q: they need k and v (flash-attn's rule)")
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise ArgumentError(f"{name} must be a float tensor [T_ro, rotary_dim / 2], got {t!r:.80}")
    if rotary_sin.shape != rotary_cos.shape or not 0 < 2 * rotary_cos.shape[1] <= q.shape[-1]:
        raise ArgumentError(f"rotary_cos/sin must both be [T_ro, rotary_dim / 2] with rotary_dim <= D={q.shape[-1]}, "
                            f"got {tuple(rotary_cos.shape)} and {tuple(rotary_sin.shape)}")  # fmt: skip


def normalise(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
              block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes, num_splits,
              return_softmax_lse, empty_lse=-INF) -> KVCall:  # fmt: skip
    """Validate every argument (ArgumentError naming it, before anything is written) and return the call in
    one form: the window as flash-attn canonicalises it, positions read on the host where that is free."""
    for name, arg in (("cache_leftpad", cache_leftpad), ("block_table", block_table), ("alibi_slopes", alibi_slopes)):
        if arg is not None:
            raise NotImplementedError(f"flash_attn_with_kvcache: {name} is not supported (flash-attn's argument; "
                                      "no backend here implements it)")  # fmt: skip
    check_bthd("q", q)
    check_bthd("k_cache", k_cache, "q", q, same="D")
    check_bthd("v_cache", v_cache, "q", q, same="D")
    if v_cache.shape != k_cache.shape:
        raise ArgumentError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    b, t_q, h, d = q.shape
    b_cache, t_max, h_kv = k_cache.shape[:3]
    if h % h_kv:
        raise ArgumentError(f"q has {h} heads, not a multiple of the caches' {h_kv} (k_cache {tuple(k_cache.shape)})")
    if (k is None) != (v is None):
        raise ArgumentError("pass both k and v, or neither")
    t_new = 0
    if k is not None:
        check_bthd("k", k, "k_cache", k_cache, same="HD")
        check_bthd("v", v, "k_cache", k_cache, same="HD")
        if k.shape[0] != b or v.shape != k.shape:
            raise ArgumentError(f"k, v must be [B={b}, Tnew, H_kv={h_kv}, D={d}], got {tuple(k.shape)}, "
                                f"{tuple(v.shape)}")  # fmt: skip
        t_new = k.shape[1]
        if t_new > t_max:
            raise ArgumentError(f"cache overflow: Tnew {t_new} > T_max {t_max}")
    same_device(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_batch_idx=cache_batch_idx,
                rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_seqlens=cache_seqlens)  # fmt: skip
    check_scale(softmax_scale)
    for name, flag in (("causal", causal), ("rotary_interleaved", rotary_interleaved),
                       ("return_softmax_lse", return_softmax_lse)):  # fmt: skip
        check_bool(name, flag)
    left, right = window_pair(window_size)
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not 0 <= softcap < INF:
        raise ArgumentError(f"softcap must be a finite float >= 0 (0: off), got {softcap!r}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ArgumentError(f"num_splits must be an int >= 0 (0: heuristic), got {num_splits!r}")
    _check_rotary(q, k, rotary_cos, rotary_sin)
    if cache_batch_idx is not None:
        _int_tensor("cache_batch_idx", cache_batch_idx, ((b,),))
    elif b_cache < b:
        raise ArgumentError(f"k_cache holds {b_cache} sequences, fewer than the batch {b} (pass cache_batch_idx?)")
    # flash-attn's canonical mask: a bound of T_max or more is no bound, one query makes causal a no-op, and
    # causal replaces the right bound (kept as -1 here: `causal` carries it, so a causal call has no window)
    causal = causal and t_q > 1
    window = (-1 if left >= t_max else left, -1 if right >= t_max or causal else right)

    shared, checked = None, False
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        check_seqlens_range(cache_seqlens, cache_seqlens, t_new, t_max)  # a host int: free to check
        shared, checked = cache_seqlens, True
    else:
        _int_tensor("cache_seqlens", cache_seqlens, ((b,), (1,), ()))
        if cache_seqlens.shape != (b,):
            cache_seqlens = cache_seqlens.expand(b)
        debug = _debug_now(q)
        if debug or host_readable(cache_seqlens):
            lo, hi = (int(x) for x in cache_seqlens.aminmax())
            if debug:  # errors instead of the out-of-range policy
                check_seqlens_range(lo, hi, t_new, t_max)
            checked = 0 <= lo and hi + t_new <= t_max
            shared = lo if checked and lo == hi else None
    if cache_batch_idx is not None and (host_readable(cache_batch_idx) or _debug_now(q)):
        check_batch_idx(cache_batch_idx, b_cache)
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    rotary = (rotary_cos, rotary_sin, rotary_interleaved) if rotary_cos is not None else None
    return KVCall(q, k_cache, v_cache, k, v, cache_seqlens, scale, causal, shared, checked, window, float(softcap),
                  cache_batch_idx, rotary, return_softmax_lse, num_splits, empty_lse)  # fmt: skip


# ---- select: the one place that chooses the backend -----------------------------------------------------


def select(call: KVCall):
    """(runner, implementation id) for a normalised call.

    CPU tensors under auto/ref: the reference (slices for one shared position, the host-table step for ragged
    in-range positions on the host, the general reference otherwise). Where a kernel may run (CUDA tensors, or
    SPECTRALAR_KERNELS=triton with the interpreter): while torch.compile traces, the custom op (one graph node
    that selects when it runs) or the inline reference; else the Triton kernel `choose_kernel` picks for a call it
    implements, flash-attn for CUDA fp16/bf16 calls with host-checked positions, the reference otherwise.
    """
    q = call.q
    if q.is_cuda or kernels_forced():
        if torch.compiler.is_compiling():
            if not call.extras and call.shared is None:
                return _run_op, None
            return (run_step if step_runs(call) else run_ref), None
        impl = None if call.extras else choose_kernel("attention_with_kvcache", "decode", q, call.k_cache,
                                                      call.v_cache, t=call.k_cache.shape[1], d=q.shape[-1],
                                                      bh=q.shape[0] * q.shape[2])  # fmt: skip
        if impl is not None:
            if triton_runs(call):
                return run_triton, impl
            if q.is_cuda:
                warn_once("kvcache.head_dim", f"attention_with_kvcache: head dim {q.shape[-1]} > 128 uses SDPA")
        if call.checked and _flash_runs(call):
            return run_flash, None
        if impl is None and step_runs(call):
            return run_step, None
        return run_ref, None
    if step_runs(call):
        return run_step, None
    if call.checked and not call.extras and not isinstance(call.seqlens, int) and host_readable(call.seqlens):
        return run_host, None
    return run_ref, None


def _flash_runs(call: KVCall) -> bool:
    """flash-attn takes the call: CUDA fp16/bf16 under auto, unit-stride caches, rotary dims a multiple of 8."""
    new = [call.k, call.v] if call.k is not None else []
    return (flash_attn_usable(call.q, call.k_cache, call.v_cache, *new) and call.k_cache.stride(-1) == 1
            and call.v_cache.stride(-1) == 1 and (call.rotary is None or call.rotary[0].shape[1] % 8 == 0))  # fmt: skip


# ---- custom op: what torch.compile and CUDA graphs keep ---------------------------------------------------


def _run_op(call: KVCall, impl: str | None = None) -> torch.Tensor:
    return torch.ops.spectralar.attention_with_kvcache(call.q, call.k_cache, call.v_cache, call.seqlens_tensor(),
                                                       call.k, call.v, call.scale, call.causal, "auto")  # fmt: skip


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
    """Validated arguments only (the public function checks). impl "auto": `select` when the graph runs; ""
    the reference; else that Triton implementation."""
    call = KVCall(q, k_cache, v_cache, k, v, cache_seqlens, scale, causal)
    run, chosen = select(call) if impl == "auto" else (run_triton, impl) if impl else (run_ref, None)
    with torch.no_grad():
        # contiguous: the strides the fake implementation promises the compiler
        return run(call, chosen).contiguous()


@_attention_with_kvcache_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, impl):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
