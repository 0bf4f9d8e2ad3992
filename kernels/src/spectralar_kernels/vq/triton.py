"""Fused nearest-codebook lookup, vq-v2: one launch over a cached padded codebook, a 64-bit atomic argmin.

Ranking (the contract of ref.py; the score loop, threshold and exact keys in vq/shared.py):
    l2:      s_mk = ||c_k - mu||^2 - 2 (z_m - mu).(c_k - mu), mu = the mean of the program's finite rows
    cosine:  s_mk = z_m.(ubar - u_k), u_k = c_k / max(|c_k|, EPS), ubar their mean
then the exact float64 key (fp32 distance bits << 32 | index) of every code under the row's threshold.
The shift by the row block's own mean keeps l2 scores at the scale of the distances between the rows and
their codes, wherever the data sit (far from the origin, clustered codebooks, outlier codes).

Codebook cache. `_prepared` builds, once per codebook version, one fp32 matrix P [K_pad, BLOCK_D]:
    l2:      the raw code in columns < d, a flag in column d (1 for a code holding inf or NaN, and for the
             padding codes up to a whole number of BLOCK_K tiles), zeros after; flagged codes are zeroed.
             The kernel shifts each tile by its row mean and computes ||c - mu||^2 itself.
    cosine:  ubar - u_k in columns < d, a_k in column d (0, or FLT_MAX for flagged codes), and `aux`
             [BLOCK_D] = ubar with max_k |ubar - u_k| in column d (the threshold's error scale).
64-byte rows (d = 12 -> BLOCK_D = 16) load as 128-bit cp.async, unmasked. The kernel puts 1.0 in column d
of its row tile, so the tensor-core product returns the whole score. The cache is keyed on the codebook's
storage (a weak reference: a freed tensor whose address is reused never hits), data pointer, offset, shape,
strides, dtype, device, version counter (`_version`, bumped by every in-place op, including optimizer
steps, not by writes through `.data`) and metric; a hit does no work. `cache=False` (or `clear_cache()`)
prepares afresh, which is how a benchmark times the miss that a codebook updated every step pays.

One kernel, `_vq_nearest_v2_kernel`, grid (row blocks, codebook splits):
  1. load the BLOCK_M rows of z once, cast to fp32, shift, keep them in registers (3xTF32 hi/lo parts);
  2. over the program's codes, scores s = [z - mu, 1] . P_tile^T, and per lane the two smallest (shared.py);
  3. the best exact key of the slice (shared._best_keys; a scan of the slice for uncertified rows);
  4. splits combine through a 64-bit `atomic_min` on the keys in a workspace the launcher keeps: the minimum
     key is the nearest code, lowest index on ties, whatever order programs finish in. Each program then
     takes a ticket (`atomic_add` on a per-row-block counter, acq_rel); the program drawing the last ticket
     swaps the keys back to KEY_NONE and the counter to 0 (the workspace is ready for the next launch with
     no memset) and writes index and distance. With one split the program writes directly, no atomics.
The workspace (int64 [M], int32 [row blocks]) is cached per device and stream: launches on one stream run
in order, so they never share it concurrently. Neither cache keeps what is built during CUDA-graph
capture (captured work only runs on replay).

Reference: the 64-bit packed (value, index) atomic min is the usual GPU argmin trick; the "last block
finishes the reduction" ticket follows the threadFenceReduction sample of the CUDA samples.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import triton_v1
from .codes import Codes
from .ref import FLT_MAX, KEY_NONE
from .shared import (
    _FLT_MAX,
    _KEY_NONE,
    EPS,
    GAMMA,
    _best_keys,
    _dot3,
    _finite_rows,
    _lane_update,
    _store_keys,
    _tf32_hi,
    _threshold,
    block_d,
    device_sms,
    launch_plan,
    programs_per_sm,
)

__all__ = ["vq_nearest_fwd", "clear_cache"]

V2_MAX_D = 63  # row tiles (d + 1 columns) live in registers: larger d runs vq-v1 (VQ code dims are small)


@dataclass(frozen=True)
class V2Config:
    block_m: int
    block_k: int
    num_warps: int
    num_stages: int
    ctas_per_sm: int  # estimate used until a compiled kernel reports its registers (shared.programs_per_sm)
    rerank: int = 4  # lanes ranked exactly per row before a row counts as uncertified
    block_e: int = 16  # codes per step of the exact scan


# One configuration per padded code width BLOCK_D, every input dtype (the products are fp32, 3xTF32). Not yet
# tuned on a GPU. 32-code tiles (16 at BLOCK_D = 64): the per-lane minima, second minima and tiles are three
# [BLOCK_M, BLOCK_K] arrays in registers, and wider tiles spilled on sm_80. ctas_per_sm is the smaller of the
# two metrics' occupancy in the sm_90 ahead-of-time compile (vq/aot.py; a test keeps them in step); on a GPU the
# launcher reads the compiled kernel's own registers instead (shared.programs_per_sm).
V2_CONFIGS = {
    16: V2Config(block_m=64, block_k=32, num_warps=4, num_stages=3, ctas_per_sm=2),
    32: V2Config(block_m=64, block_k=32, num_warps=4, num_stages=3, ctas_per_sm=2),
    64: V2Config(block_m=64, block_k=16, num_warps=8, num_stages=3, ctas_per_sm=1),
}


@triton.jit(do_not_specialize=["n_split"])
def _vq_nearest_v2_kernel(
    z_ptr, c_ptr, p_ptr, aux_ptr, ws_ptr, cnt_ptr, idx_ptr, dist_ptr,
    M, K, D, stride_zm, stride_ck, codes_per_split, k_pad, n_split, gamma, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, IS_COSINE: tl.constexpr,
    RERANK: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    in_d = (offs_d < D)[None, :]

    # the rows, fp32, shifted, resident for the whole loop (padding columns hold 0)
    zt = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_zm + offs_d[None, :], mask=row_ok[:, None] & in_d,
                 other=0.0).to(tl.float32)  # fmt: skip
    good = row_ok & _finite_rows(zt)
    if IS_COSINE:
        zs = zt
    else:
        count = tl.sum(good.to(tl.float32), axis=0)
        mu = tl.sum(tl.where(good[:, None], zt, 0.0), axis=0) / tl.maximum(count, 1.0)  # [BLOCK_D], 0 past D
        zs = tl.where(in_d, zt - mu[None, :], 0.0)
    zs = tl.where((offs_d == D)[None, :], 1.0, zs)  # column D meets a_k: the product is the whole score
    z_hi = _tf32_hi(zs)
    z_lo = zs - z_hi

    k_start = pid_s * codes_per_split
    k_end = tl.minimum(k_start + codes_per_split, k_pad)
    v1 = tl.full([BLOCK_M, BLOCK_K], float("inf"), tl.float32)
    v2 = v1
    blk = tl.zeros([BLOCK_M, BLOCK_K], tl.int32) + k_start
    for k0 in range(k_start, k_end, BLOCK_K):
        pt = tl.load(p_ptr + (k0 + offs_k)[:, None] * BLOCK_D + offs_d[None, :])  # [BLOCK_K, BLOCK_D], unmasked
        if IS_COSINE:
            wt = pt
        else:  # shift the tile by the rows' mean; flagged codes (non-finite, padding) score ~FLT_MAX
            flagged = tl.sum(tl.where((offs_d == D)[None, :], pt, 0.0), axis=1) != 0.0
            cc = tl.where(in_d, pt - mu[None, :], 0.0)
            a = tl.minimum(tl.sum(cc * cc, axis=1), _FLT_MAX)
            a = tl.where(flagged, _FLT_MAX, a)
            wt = tl.where((offs_d == D)[None, :], a[:, None], -2.0 * cc)
        s = _dot3(z_hi, z_lo, wt, tl.zeros([BLOCK_M, BLOCK_K], tl.float32))
        v1, v2, blk = _lane_update(s, k0, v1, v2, blk)

    # the rows' norms after the loop, from the exact hi + lo split (nothing row-sized stays live across it)
    zr = tl.where(in_d, z_hi + z_lo, 0.0).to(tl.float64)
    Z = tl.sum(zr * zr, axis=1)
    nz = tl.maximum(tl.sqrt(Z), eps)
    zu = Z
    w_max = 0.0
    if IS_COSINE:
        aux = tl.load(aux_ptr + offs_d)  # ubar, and max_k |ubar - u_k| in column D
        zu = tl.sum(zr * tl.where(offs_d < D, aux, 0.0).to(tl.float64)[None, :], axis=1)
        w_max = tl.sum(tl.where(offs_d == D, aux, 0.0), axis=0).to(tl.float64)
    thr, regular = _threshold(tl.min(v1, axis=1), Z, nz, zu, w_max, gamma, good, IS_COSINE)
    key = _best_keys(z_ptr, c_ptr, rows, row_ok, v1, v2, blk, thr, regular, K, k_start, k_end, D, stride_zm,
                     stride_ck, eps, IS_COSINE, RERANK, BLOCK_K, BLOCK_E)  # fmt: skip
    if n_split == 1:
        _store_keys(idx_ptr, dist_ptr, rows, row_ok, key)
    else:
        tl.atomic_min(ws_ptr + rows, key, mask=row_ok)
        # every thread's atomic_min before the one thread taking the ticket: its acq_rel fence then publishes
        # them all (barrier + cumulative release)
        tl.debug_barrier()
        ticket = tl.atomic_add(cnt_ptr + pid_m, 1)
        if ticket == n_split - 1:  # every split of this row block has posted its key
            final = tl.atomic_xchg(ws_ptr + rows, tl.full([BLOCK_M], _KEY_NONE, tl.int64), mask=row_ok)
            tl.atomic_xchg(cnt_ptr + pid_m, 0)
            _store_keys(idx_ptr, dist_ptr, rows, row_ok, final)


@dataclass
class _Prepared:
    storage: weakref.ref
    key: tuple
    p: torch.Tensor  # [k_pad, block_d] fp32 (module docstring)
    aux: torch.Tensor  # [block_d] fp32


_CACHE: list[_Prepared] = []  # most recent last; a handful of codebooks (one per quantiser) at most
_CACHE_SIZE = 8
_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_cache() -> None:
    """Forget every prepared codebook (after writes through `.data`, which the cache cannot see)."""
    _CACHE.clear()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _build(codebook: torch.Tensor, cosine: bool, cfg: V2Config) -> tuple[torch.Tensor, torch.Tensor]:
    """P [k_pad, block_d] and aux [block_d] (module docstring); code-side temporaries in chunks of 2^22 values."""
    K, d = codebook.shape
    bd = block_d(d)
    k_pad = triton.cdiv(K, cfg.block_k) * cfg.block_k
    p = torch.zeros(k_pad, bd, dtype=torch.float32, device=codebook.device)
    aux = torch.zeros(bd, dtype=torch.float32, device=codebook.device)
    chunk = max(1, (1 << 22) // d)
    if cosine:
        codes = Codes(codebook, True, chunk)
        aux[:d] = codes.ubar
        aux[d] = codes.w_max
        p[K:, d] = FLT_MAX
        for k0 in range(0, K, chunk):
            w = codes.operands(k0, 1)  # [kc, d + 1]: ubar - u_k and a_k (+inf when flagged)
            p[k0 : k0 + w.shape[0], : d + 1] = w.nan_to_num(posinf=FLT_MAX)
    else:
        p[K:, d] = 1.0
        for k0 in range(0, K, chunk):
            c = codebook[k0 : k0 + chunk].float()
            flagged = ~torch.isfinite(c).all(dim=1)
            p[k0 : k0 + c.shape[0], :d] = c.masked_fill(flagged[:, None], 0.0)
            p[k0 : k0 + c.shape[0], d] = flagged.float()
    return p, aux


def _prepared(codebook: torch.Tensor, cosine: bool, cfg: V2Config, cache: bool) -> _Prepared:
    """The padded codebook terms; rebuilt only when the codebook or its contents change (or cache=False)."""
    storage = codebook.untyped_storage()
    key = (codebook.data_ptr(), codebook.storage_offset(), tuple(codebook.shape), codebook.stride(), codebook.dtype,
           codebook.device, codebook._version, cosine, cfg.block_k)  # fmt: skip
    if cache:
        for i, entry in enumerate(_CACHE):
            if entry.storage() is storage and entry.key == key:
                _CACHE.append(_CACHE.pop(i))
                return entry
        _CACHE[:] = [e for e in _CACHE if e.storage() is not None]  # drop entries of freed codebooks
    with torch.no_grad():
        entry = _Prepared(weakref.ref(storage), key, *_build(codebook, cosine, cfg))
    if cache and not _capturing(codebook.device):  # a captured prep only runs on replay: never cache its output
        _CACHE.append(entry)
        del _CACHE[:-_CACHE_SIZE]
    return entry


def _workspace(device: torch.device, M: int, row_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (device, stream) keys [>= M] (KEY_NONE) and tickets [>= row_blocks] (0); the kernel resets both."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    ws_key = (device, stream)
    ws = _WORKSPACE.get(ws_key)
    if ws is None or ws[0].numel() < M or ws[1].numel() < row_blocks:
        cap = triton.next_power_of_2(max(M, 1024))
        keys = torch.full((cap,), KEY_NONE, dtype=torch.int64, device=device)
        tickets = torch.zeros(max(row_blocks, triton.cdiv(cap, 16)), dtype=torch.int32, device=device)
        ws = (keys, tickets)
        if not _capturing(device):
            _WORKSPACE[ws_key] = ws
    return ws


def _launch_v2(z, codebook, metric, indices, distances, split, cache) -> None:
    M, d = z.shape
    K = codebook.shape[0]
    bd = block_d(d)
    cfg = V2_CONFIGS[bd]
    cosine = metric == "cosine"
    prep = _prepared(codebook, cosine, cfg, cache)  # before any copy, so the cache sees the caller's tensor
    if z.stride(1) != 1:
        z = z.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()  # exact keys read raw codes with unit column stride
    k_pad = prep.p.shape[0]
    assert k_pad * bd < 2**31, "codebook too large for int32 offsets"
    row_blocks = triton.cdiv(M, cfg.block_m)
    keys, tickets = _workspace(z.device, M, row_blocks)
    meta = dict(BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_D=bd, IS_COSINE=cosine, RERANK=cfg.rerank,
                BLOCK_E=cfg.block_e, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                enable_fp_fusion=False)  # fmt: skip

    def args(per_split, n_split):
        return (z, codebook, prep.p, prep.aux, keys, tickets, indices, distances, M, K, d, z.stride(0),
                codebook.stride(0), per_split, k_pad, n_split, GAMMA, EPS)  # fmt: skip

    ctas = programs_per_sm(_vq_nearest_v2_kernel, args(k_pad, 2), meta, z.device,
                           (bd, cosine, z.dtype, codebook.dtype), cfg.ctas_per_sm)  # fmt: skip
    per_split, n_split = launch_plan(M, K, cfg.block_m, cfg.block_k, device_sms(z.device), ctas, split)
    _vq_nearest_v2_kernel[(row_blocks, n_split)](*args(per_split, n_split), **meta)


def vq_nearest_fwd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    impl: str = "vq-v2",
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    split: int | None = None,
    cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run implementation `impl` ("vq-v1" or "vq-v2"). z [M, d], codebook [K, d]; returns (int64 [M], fp32 [M]).

    Inputs may have different float dtypes. `out` = (indices, distances) preallocated tensors to write
    into (tests pass poisoned ones). `split` forces the number of codebook slices (default: one full wave
    of programs). `cache=False` prepares vq-v2's codebook afresh (timing a cache miss). vq-v2 takes
    d <= 63 and runs vq-v1 above that.
    """
    M = z.shape[0]
    if out is None:
        indices = torch.empty(M, dtype=torch.int64, device=z.device)
        distances = torch.empty(M, dtype=torch.float32, device=z.device)
    else:
        indices, distances = out
        assert indices.shape == (M,) and indices.dtype == torch.int64 and indices.is_contiguous()
        assert distances.shape == (M,) and distances.dtype == torch.float32 and distances.is_contiguous()
    if impl == "vq-v2" and z.shape[1] <= V2_MAX_D:
        _launch_v2(z, codebook, metric, indices, distances, split, cache)
    elif impl in ("vq-v1", "vq-v2"):
        triton_v1.launch_v1(z, codebook, metric, indices, distances, split)
    else:
        raise ValueError(f"unknown vq_nearest implementation {impl!r}")
    return indices, distances
