"""The backends of `flash_attn_with_kvcache` / `attention_with_kvcache`, one runner each, on a validated call.

`kvcache.py` validates and normalises a call into a `KVCall` and chooses the runner (`kvcache.select`); the
runners here only compute. Every runner takes `(call, impl)` and returns what the public function returns.

  run_flash   flash-attn's own `flash_attn_with_kvcache`
  run_triton  the Triton decode kernel `impl` (`decode.py`: append and attention in one launch)
  run_step    one host-int position shared by every sample: slice copies and SDPA over the valid prefix
  run_host    ragged positions read on the host (a CPU tensor, all in range): one index_put per cache and a
              mask row per sample from a cached table (the CPU sampler's step: SDPA itself is ~35 us there,
              so every further operation shows), bit for bit what `run_ref` computes
  run_ref     `ref.kvcache_ref`: every argument, any positions (out-of-range ones masked), no host sync
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import TRITON_MAX_HEAD_DIM
from .ref import kvcache_ref, kvcache_step_ref, kvcache_visible, new_positions

__all__ = ["KVCall", "run_flash", "run_host", "run_ref", "run_step", "run_triton"]

NO_WINDOW = (-1, -1)


@dataclass(slots=True)
class KVCall:
    """A validated call in one form (what every runner and the selector read).

    seqlens: int tensor `[B]` (any strides), or a host int shared by every sample and known in range.
    shared: the one position every sample shares when it is known on the host and in range, else None.
    checked: every position is known to be in range (host ints, host-read tensors, or the debug checks).
    Window and causal are flash-attn's canonical forms (`kvcache.normalise`); rotary is (cos, sin, interleaved).
    """

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    k: torch.Tensor | None
    v: torch.Tensor | None
    seqlens: torch.Tensor | int
    scale: float
    causal: bool
    shared: int | None = None
    checked: bool = False
    window: tuple[int, int] = NO_WINDOW
    softcap: float = 0.0
    batch_idx: torch.Tensor | None = None
    rotary: tuple | None = None
    lse: bool = False
    num_splits: int = 0
    empty_lse: float = float("-inf")  # a row that sees no key: flash-attn's entry reports +inf

    @property
    def t_new(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    @property
    def extras(self) -> bool:
        """Arguments only the reference (and flash-attn) implement."""
        return (self.window != NO_WINDOW or self.softcap > 0 or self.rotary is not None or self.lse
                or self.batch_idx is not None or self.k_cache.shape[0] != self.q.shape[0]
                or 0 < self.t_new != self.q.shape[1])  # fmt: skip

    def seqlens_tensor(self) -> torch.Tensor:
        """`[B]` positions as a tensor (a host int expanded on q's device)."""
        if isinstance(self.seqlens, int):
            return torch.full((self.q.shape[0],), self.seqlens, dtype=torch.int32, device=self.q.device)
        return self.seqlens


def run_flash(call: KVCall, impl: str | None = None):
    from flash_attn import flash_attn_with_kvcache

    cos, sin, interleaved = call.rotary if call.rotary is not None else (None, None, True)
    return flash_attn_with_kvcache(
        call.q, call.k_cache, call.v_cache, call.k, call.v, cos, sin, call.seqlens_tensor().to(torch.int32),
        call.batch_idx, None, None, call.scale, call.causal, call.window, float(call.softcap), interleaved, None,
        call.num_splits, call.lse,
    )  # fmt: skip


def run_triton(call: KVCall, impl: str) -> torch.Tensor:
    from .decode import attention_with_kvcache_fwd

    seqlens = call.seqlens_tensor()
    # The kernel takes the position of the first query; without k/v cache_seqlens counts the new tokens.
    first = seqlens if call.k is not None else seqlens - call.q.shape[1]
    return attention_with_kvcache_fwd(call.q, call.k_cache, call.v_cache, first, call.scale, k=call.k, v=call.v,
                                      impl=impl, causal=call.causal, num_splits=call.num_splits or None)  # fmt: skip


def triton_runs(call: KVCall) -> bool:
    """The decode kernel implements this call: no extras, head dim <= 128, caches with a unit last stride."""
    return (not call.extras and call.q.shape[-1] <= TRITON_MAX_HEAD_DIM and call.k_cache.stride(-1) == 1
            and call.v_cache.stride(-1) == 1)  # fmt: skip


def step_runs(call: KVCall) -> bool:
    """`run_step` computes this call: one shared in-range position, no extras, every query sees a key."""
    s = call.shared
    if s is None or call.extras:
        return False
    n_keys = s + call.t_new
    return n_keys > 0 and (not call.causal or n_keys >= call.q.shape[1])


def run_step(call: KVCall, impl: str | None = None) -> torch.Tensor:
    return kvcache_step_ref(call.q, call.k_cache, call.v_cache, call.shared, call.k, call.v, call.scale, call.causal)


def run_ref(call: KVCall, impl: str | None = None):
    cos, sin, interleaved = call.rotary if call.rotary is not None else (None, None, True)
    got = kvcache_ref(call.q, call.k_cache, call.v_cache, call.seqlens_tensor(), call.k, call.v,
                      softmax_scale=call.scale, causal=call.causal, window_size=call.window, softcap=call.softcap,
                      cache_batch_idx=call.batch_idx, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved,
                      return_softmax_lse=call.lse)  # fmt: skip
    if call.lse and call.empty_lse != float("-inf"):
        out, lse = got
        return out, torch.where(lse == float("-inf"), call.empty_lse, lse)
    return got


# ---- run_host: ragged positions read on the host ---------------------------------------------------------

_STEP_CACHE: dict[tuple, tuple] = {}  # (batch arange, slot table, mask table) per step shape; oldest dropped
_STEP_CACHE_SIZE = 16
_MASK_TABLE_MAX = 1 << 16  # elements; past it (long caches) no table is kept and the masks are built per call
# Unwritten slots are zeroed by a bitwise AND with all-ones / all-zeros words of the element's width: the same
# bits as `where(valid, x, 0)` (NaN and inf included), 4x faster on CPU for a small step's caches.
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _step_constants(key: tuple) -> tuple:
    """`(arange(B), slots, masks)` for key `(B, T_max, Tq, Tnew, causal, dtype)`, built and cached. Row s of
    `masks` `[T_max - Tnew + 1, 1, Tq, T_max]` is `kvcache_ref`'s SDPA mask for a sample with cache_seqlens s
    (additive for fp32, boolean otherwise, as `kvcache_ref` passes it), row s of `slots` `[.., T_max, 1, 1]` its
    valid slots as AND masks (-1: keep, 0: zero); both None when the mask table would exceed _MASK_TABLE_MAX."""
    b, t_max, t_q, t_new, causal, dtype = key
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in any mode later
        slots = masks = None
        if (t_max - t_new + 1) * t_q * t_max <= _MASK_TABLE_MAX:
            lengths = torch.arange(t_new, t_max + 1)
            valid = torch.arange(t_max) < lengths[:, None]
            masks = _sdpa_mask(kvcache_visible(lengths, t_q, t_max, causal, NO_WINDOW, valid)[:, None], dtype)
            slots = _and_mask(valid, dtype)
        entry = (torch.arange(b), slots, masks)
    if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
        _STEP_CACHE.pop(next(iter(_STEP_CACHE)), None)
    _STEP_CACHE[key] = entry
    return entry


def _sdpa_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`kvcache_ref`'s form of the mask: additive for fp32 (SDPA would convert a boolean one per call)."""
    return torch.where(visible, 0.0, float("-inf")) if dtype == torch.float32 else visible


def _and_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[.., T_max, 1, 1]` words of the dtype's width: all ones where `valid [.., T_max]`, else zero."""
    return valid.to(_SAME_WIDTH_INT[dtype]).neg_()[..., None, None]


def run_host(call: KVCall, impl: str | None = None) -> torch.Tensor:
    """`run_ref` bit for bit, for positions in host memory and in range, with the fewest operations."""
    q, k_cache, v_cache, k, v = call.q, call.k_cache, call.v_cache, call.k, call.v
    b, t_q, h, _ = q.shape
    t_max, h_kv = k_cache.shape[1:3]
    t_new, dtype = call.t_new, q.dtype
    seqlens = call.seqlens.long()  # int64 indices: int32 ones cost each index op a conversion
    if seqlens.shape != (b,):
        seqlens = seqlens.expand(b)
    key = (b, t_max, t_q, t_new, call.causal, dtype)
    batch, slots, masks = _STEP_CACHE.get(key) or _step_constants(key)
    if k is not None and t_q == 1:
        k_cache[batch, seqlens] = k.select(1, 0)
        v_cache[batch, seqlens] = v.select(1, 0)
    elif k is not None:
        pos = new_positions(seqlens, t_new)
        k_cache[batch[:, None], pos] = k
        v_cache[batch[:, None], pos] = v
    if masks is not None:
        keep, mask = slots.index_select(0, seqlens), masks.index_select(0, seqlens)
    else:
        lengths = seqlens + t_new
        valid = torch.arange(t_max) < lengths[:, None]
        keep = _and_mask(valid, dtype)
        mask = _sdpa_mask(kvcache_visible(lengths, t_q, t_max, call.causal, NO_WINDOW, valid)[:, None], dtype)
    # slots past each sample's length are replaced, not masked: they may hold NaN (as in kvcache_ref)
    bits = _SAME_WIDTH_INT[dtype]
    kc, vc = ((c.view(bits) & keep).view(dtype) for c in (k_cache, v_cache))
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=mask,
                                       scale=call.scale, enable_gqa=h != h_kv)  # fmt: skip
    return o.transpose(1, 2)
