"""Fused nearest-codebook lookup, vq-v2: one launch, a cached padded codebook, a 64-bit atomic argmin.

Scores (the same centred ranking as `ref.vq_nearest_ref`, see its docstring):
    s_mk = a_k + (z_m - mu) . w_k      l2:     mu = mean code, w = -2 (c - mu), a = ||c - mu||^2
                                       cosine: mu = 0, w = mean(u) - u with u = c / max(|c|, eps), a = 0
    index_m = argmin_k s_mk            (lowest k among ties)
    distance_m = ||z_m - c_idx||^2  or  1 - z_m.c_idx / (max(|z_m|, eps) max(|c_idx|, eps)), in fp32
Centring keeps every term at the size of the data's spread, so the argmin stays exact (to fp32
resolution of the spread) however far the data sit from the origin.

Codebook cache. `_prepared` builds, once per codebook version, one fp32 matrix [K_pad, BLOCK_D]: w_k in
columns < d, a_k in column d, zeros after; BLOCK_D = 16 for d = 12 (the next power of two >= d + 1, at
least 16). The kernel puts 1.0 in column d of its z tile, so the dot alone yields the whole score: no
separate norm vector, no add per score. Rows are padded to a whole number of BLOCK_K code tiles; padding
codes carry a = +inf and never win (their score is inf, or NaN once split for 3xTF32, and NaN never
compares below anything). A code holding NaN gets w = 0, a = -FLT_MAX: every finite row chooses the
lowest such code, and its distance, computed from the raw code, is NaN. Everything is fp32 because
centred values do not fit 16 bits. 64-byte rows make the tile loads 128-bit, unmasked (every launch is
the EVEN_K path: no column or row masks in the loop) and cp.async-pipelined. The cache is keyed on the
codebook's storage (a weak reference, so a freed tensor whose address is reused never hits), data
pointer, offset, shape, strides, dtype, `_version` (bumped by every in-place op, not by writes through `.data`) and
metric; a hit does no work.

Precision. The dot runs on tensor cores as 3xTF32, split by hand (hi = top 10 mantissa bits, lo = rest;
lo.hi + hi.lo + hi.hi accumulated in one chain, so no per-score fix-ups): ~2^-21 relative error on
products of spread-sized values, well below the gaps that matter once the data are centred. "ieee"
(exact fp32 FMA, ~3x the instructions for d = 12) is one constant away if a GPU run shows near-ties
that need it.

One kernel, `_vq_nearest_v2_kernel`, grid (row blocks, codebook splits):
  1. load the BLOCK_M rows of z once (any dtype, cast to fp32), subtract mu, keep them in registers;
  2. over its slice of codes: scores = tl.dot([z_c, 1], w_tile^T) (fp32 operands, 3xTF32), and an
     element-wise running min [BLOCK_M, BLOCK_K] with the tile it came from (no cross-thread work in the
     loop); one row reduction at the end gives (min, lowest index attaining it). A row holding NaN gets
     (-inf, 0): every score of a NaN row is NaN, which the reference counts as -inf, lowest index 0;
  3. splits combine through a 64-bit `atomic_min` on key = (orderable distance bits << 32) | index per
     row, in a workspace the launcher keeps: the minimum key is the minimum score, and on equal scores the
     lowest index, whatever order programs finish in. Each program then takes a ticket (`atomic_add` on a
     per-row-block counter, acq_rel: its atomic_min is visible before the ticket); the program drawing the
     last ticket swaps the keys back to INT64_MAX and the counter back to 0 (so the workspace is ready for
     the next launch without a memset) and finalises the rows: index, and the exact fp32 distance from the
     raw z row and the raw chosen code. With one split (enough row blocks to fill the GPU) the program
     finalises directly, no atomics.
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

from .._common import AOTSpec
from . import triton_v1
from .ref import EPS, ranking_operands

__all__ = ["vq_nearest_fwd", "aot_specs"]

INT64_MAX = 0x7FFFFFFFFFFFFFFF
_KEY_NONE = tl.constexpr(INT64_MAX)  # the workspace's idle value (kernels read globals only as constexpr)
V2_MAX_D = 63  # z tiles (d + 1 columns) live in registers: larger d runs vq-v1 (VQ code dims are small)
FLT_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class _V2Config:
    block_m: int
    block_k: int
    num_warps: int
    num_stages: int
    dot_precision: str
    ctas_per_sm: int  # codebook splits aim for this many programs per SM


# One configuration per padded code width BLOCK_D for every input dtype: the dot operands are always fp32
# (centred), 3xTF32 (module docstring). Not yet tuned on a GPU; each compiles without spills on sm_80 and
# sm_90 (64 x 64 tiles spill 24 bytes on sm_80 at BLOCK_D = 64, hence 32 rows there).
V2_CONFIGS = {
    16: _V2Config(block_m=64, block_k=64, num_warps=4, num_stages=3, dot_precision="tf32x3", ctas_per_sm=4),
    32: _V2Config(block_m=64, block_k=64, num_warps=4, num_stages=3, dot_precision="tf32x3", ctas_per_sm=4),
    64: _V2Config(block_m=32, block_k=64, num_warps=4, num_stages=3, dot_precision="tf32x3", ctas_per_sm=4),
}


@triton.jit
def _tf32_hi(x):
    """x with its mantissa cut to tf32's 10 bits (x - _tf32_hi(x) is exact in fp32)."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _vq_v2_finish(
    z_ptr, c_ptr, idx_ptr, dist_ptr, rows, row_ok, best,
    D, stride_zm, stride_ck, is_cosine, eps,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Store the index and the exact fp32 distance from the raw z row and the raw chosen code."""
    best = tl.where(row_ok, best, 0)
    offs_d = tl.arange(0, BLOCK_D)
    m2 = row_ok[:, None] & (offs_d < D)[None, :]
    zv = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_zm + offs_d[None, :], mask=m2, other=0.0)
    cv = tl.load(c_ptr + best.to(tl.int64)[:, None] * stride_ck + offs_d[None, :], mask=m2, other=0.0)
    zv = zv.to(tl.float32)
    cv = cv.to(tl.float32)
    diff = zv - cv
    sq = tl.sum(diff * diff, axis=1)
    zz = tl.sum(zv * zv, axis=1)
    cc = tl.sum(cv * cv, axis=1)
    zc = tl.sum(zv * cv, axis=1)
    cos_dist = 1.0 - zc / (tl.maximum(tl.sqrt(zz), eps) * tl.maximum(tl.sqrt(cc), eps))
    cos_dist = tl.where(cos_dist < 0.0, 0.0, cos_dist)  # `where`, not maximum: NaN stays NaN
    dist = tl.where(is_cosine != 0, cos_dist, sq)
    tl.store(idx_ptr + rows, best.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, dist, mask=row_ok)


@triton.jit
def _vq_nearest_v2_kernel(
    z_ptr, c_ptr, w_ptr, mu_ptr, ws_ptr, cnt_ptr, idx_ptr, dist_ptr,
    M, D, stride_zm, stride_ck, codes_per_split, k_pad, n_split, is_cosine, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "tf32x3" (split by hand below), "ieee" or "tf32"
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)

    # centred rows, fp32, resident for the whole loop (padded columns: z = 0 and mu = 0)
    zmask = row_ok[:, None] & (offs_d < D)[None, :]
    zt = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_zm + offs_d[None, :], mask=zmask, other=0.0)
    zc = zt.to(tl.float32) - tl.load(mu_ptr + offs_d)[None, :]
    row_sum = tl.sum(zc, axis=1)
    row_nan = row_sum != row_sum
    zc = tl.where((offs_d == D)[None, :], 1.0, zc)  # column D meets a_k: the dot returns the whole score
    if DOT_PRECISION == "tf32x3":
        z_hi = _tf32_hi(zc)
        z_lo = zc - z_hi

    k_start = pid_s * codes_per_split
    k_end = tl.minimum(k_start + codes_per_split, k_pad)
    run_val = tl.full([BLOCK_M, BLOCK_K], float("inf"), tl.float32)
    run_blk = tl.zeros([BLOCK_M, BLOCK_K], tl.int32) + k_start  # k0 of the tile that set run_val
    for k0 in range(k_start, k_end, BLOCK_K):
        cols = k0 + offs_k
        wt = tl.load(w_ptr + cols[:, None] * BLOCK_D + offs_d[None, :])  # [BLOCK_K, BLOCK_D]: padded, no mask
        if DOT_PRECISION == "tf32x3":  # small terms first; lo x lo (~2^-22 relative) dropped
            w_hi = _tf32_hi(wt)
            w_lo = wt - w_hi
            s = tl.dot(z_lo, tl.trans(w_hi), input_precision="tf32")
            s = tl.dot(z_hi, tl.trans(w_lo), s, input_precision="tf32")
            s = tl.dot(z_hi, tl.trans(w_hi), s, input_precision="tf32")  # [BLOCK_M, BLOCK_K]
        else:
            s = tl.dot(zc, tl.trans(wt), input_precision=DOT_PRECISION)
        better = s < run_val  # strict: an earlier tile (lower index) keeps a tie; NaN never enters
        run_val = tl.where(better, s, run_val)
        run_blk = tl.where(better, k0, run_blk)

    row_min = tl.min(run_val, axis=1)
    cand = tl.where(run_val == row_min[:, None], run_blk + offs_k[None, :], 2147483647)
    row_idx = tl.min(cand, axis=1)
    row_min = tl.where(row_nan, float("-inf"), row_min)
    row_idx = tl.where(row_nan, 0, row_idx)

    if n_split == 1:
        _vq_v2_finish(z_ptr, c_ptr, idx_ptr, dist_ptr, rows, row_ok, row_idx,
                      D, stride_zm, stride_ck, is_cosine, eps, BLOCK_D)  # fmt: skip
    else:
        # orderable key: the int32 bits of a float sort like the float once negatives flip their
        # magnitude bits; -0.0 becomes +0.0 first (they compare equal as floats)
        v = tl.where(row_min == 0.0, 0.0, row_min)
        bits = v.to(tl.int32, bitcast=True)
        bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = (bits.to(tl.int64) << 32) | row_idx.to(tl.int64)
        tl.atomic_min(ws_ptr + rows, key, mask=row_ok)
        # every thread's atomic_min before the one thread taking the ticket: its acq_rel fence then
        # publishes them all (barrier + cumulative release)
        tl.debug_barrier()
        ticket = tl.atomic_add(cnt_ptr + pid_m, 1)
        if ticket == n_split - 1:  # every split of this row block has posted its key
            reset = tl.full([BLOCK_M], _KEY_NONE, tl.int64)
            final = tl.atomic_xchg(ws_ptr + rows, reset, mask=row_ok)
            tl.atomic_xchg(cnt_ptr + pid_m, 0)
            best = (final & 0xFFFFFFFF).to(tl.int32)
            _vq_v2_finish(z_ptr, c_ptr, idx_ptr, dist_ptr, rows, row_ok, best,
                          D, stride_zm, stride_ck, is_cosine, eps, BLOCK_D)  # fmt: skip


@dataclass
class _Prepared:
    storage: weakref.ref
    key: tuple
    w: torch.Tensor  # [k_pad, block_d] fp32: w_k in columns < d, a_k in column d, zeros after
    mu: torch.Tensor  # [block_d] fp32


_CACHE: list[_Prepared] = []  # most recent last; a handful of codebooks (one per quantiser) at most
_CACHE_SIZE = 8
_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d + 1))  # + the a_k column


def _prepared(codebook: torch.Tensor, cosine: bool, cfg: _V2Config) -> _Prepared:
    """The padded, centred fp32 codebook terms; rebuilt only when the codebook or its contents change."""
    storage = codebook.untyped_storage()
    key = (codebook.data_ptr(), codebook.storage_offset(), tuple(codebook.shape), codebook.stride(), codebook.dtype,
           codebook.device, codebook._version, cosine, cfg.block_k)  # fmt: skip
    for i, entry in enumerate(_CACHE):
        if entry.storage() is storage and entry.key == key:
            _CACHE.append(_CACHE.pop(i))
            return entry
    _CACHE[:] = [e for e in _CACHE if e.storage() is not None]  # drop entries of freed codebooks
    K, d = codebook.shape
    block_d = _block_d(d)
    k_pad = triton.cdiv(K, cfg.block_k) * cfg.block_k
    with torch.no_grad():
        w, a, mu = ranking_operands(codebook, cosine, torch.float32)
        bad = torch.isnan(w).any(dim=1)  # NaN code: w = 0 and a = -FLT_MAX, chosen by every finite row
        w = torch.where(bad[:, None], 0.0, w)
        a = torch.where(bad, -FLT_MAX, a)
        w_pad = torch.zeros(k_pad, block_d, dtype=torch.float32, device=codebook.device)
        w_pad[:K, :d] = w
        w_pad[:K, d] = a
        w_pad[K:, d] = float("inf")  # padding codes: score inf (NaN once split for 3xTF32), never below a real one
        mu_pad = torch.zeros(block_d, dtype=torch.float32, device=codebook.device)
        mu_pad[:d] = mu
    entry = _Prepared(weakref.ref(storage), key, w_pad, mu_pad)
    if not _capturing(codebook.device):  # a captured prep only runs on replay: never cache its output
        _CACHE.append(entry)
        del _CACHE[:-_CACHE_SIZE]
    return entry


def _workspace(device: torch.device, M: int, row_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (device, stream) keys [>= M] (INT64_MAX) and tickets [>= row_blocks] (0); the kernel resets both."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    ws_key = (device, stream)
    ws = _WORKSPACE.get(ws_key)
    if ws is None or ws[0].numel() < M or ws[1].numel() < row_blocks:
        cap = triton.next_power_of_2(max(M, 1024))
        keys = torch.full((cap,), INT64_MAX, dtype=torch.int64, device=device)
        tickets = torch.zeros(max(row_blocks, triton.cdiv(cap, 16)), dtype=torch.int32, device=device)
        ws = (keys, tickets)
        if not _capturing(device):
            _WORKSPACE[ws_key] = ws
    return ws


def _v2_split(M: int, K: int, cfg: _V2Config, sms: int, split: int | None) -> tuple[int, int]:
    """(codes per split, number of splits): enough programs to fill `sms` SMs, each >= 8 code tiles."""
    tiles = triton.cdiv(K, cfg.block_k)
    if split is None:
        want = triton.cdiv(cfg.ctas_per_sm * sms, triton.cdiv(M, cfg.block_m))
        split = min(want, triton.cdiv(tiles, triton_v1.MIN_BLOCKS_PER_SPLIT))
    split = max(1, min(split, tiles))
    per_split = triton.cdiv(tiles, split) * cfg.block_k
    return per_split, triton.cdiv(tiles * cfg.block_k, per_split)


def _launch_v2(z, codebook, metric, indices, distances, split) -> None:
    cfg = V2_CONFIGS[_block_d(z.shape[1])]
    cosine = metric == "cosine"
    prep = _prepared(codebook, cosine, cfg)  # before any copy, so the cache sees the caller's tensor
    if z.stride(1) != 1:
        z = z.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()  # the finisher reads raw codes with unit column stride
    M, d = z.shape
    K = codebook.shape[0]
    k_pad, block_d = prep.w.shape
    assert k_pad * block_d < 2**31, "codebook too large for int32 offsets"
    per_split, n_split = _v2_split(M, K, cfg, triton_v1.device_sms(z.device), split)
    row_blocks = triton.cdiv(M, cfg.block_m)
    keys, tickets = _workspace(z.device, M, row_blocks)
    _vq_nearest_v2_kernel[(row_blocks, n_split)](
        z, codebook, prep.w, prep.mu, keys, tickets, indices, distances,
        M, d, z.stride(0), codebook.stride(0), per_split, k_pad, n_split, int(cosine), EPS,
        BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_D=block_d, DOT_PRECISION=cfg.dot_precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def vq_nearest_fwd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    impl: str = "vq-v2",
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run implementation `impl` ("vq-v1" or "vq-v2"). z [M, d], codebook [K, d]; returns (int64 [M], fp32 [M]).

    Inputs may have different float dtypes. `out` = (indices, distances) preallocated tensors to write
    into (tests pass poisoned ones). `split` forces the number of codebook slices (default: enough
    programs to fill the GPU). vq-v2 takes d <= 63 and runs vq-v1 above that.
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
        _launch_v2(z, codebook, metric, indices, distances, split)
    elif impl in ("vq-v1", "vq-v2"):
        triton_v1.launch_v1(z, codebook, metric, indices, distances, split)
    else:
        raise ValueError(f"unknown vq_nearest implementation {impl!r}")
    return indices, distances


def aot_specs() -> list[AOTSpec]:
    """Every configuration the launchers can run on a GPU: vq-v1's kernels, and vq-v2's per BLOCK_D and z dtype.

    vq-v2 is compiled at M = 4096, K = 16384 with d = 12 (BLOCK_D = 16, the model's code dim) and with
    d = 20 and d = 40 for the wider configurations.
    """
    specs = triton_v1.aot_specs()
    M, K = triton_v1.AOT_M, triton_v1.AOT_K
    for d in (triton_v1.AOT_D, 20, 40):
        block_d = _block_d(d)
        cfg = V2_CONFIGS[block_d]
        per_split, n_split = _v2_split(M, K, cfg, triton_v1.AOT_SMS, None)
        k_pad = triton.cdiv(K, cfg.block_k) * cfg.block_k
        for ty in ("fp32", "fp16", "bf16"):
            sig = {
                "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "w_ptr": "*fp32", "mu_ptr": "*fp32",
                "ws_ptr": "*i64", "cnt_ptr": "*i32", "idx_ptr": "*i64", "dist_ptr": "*fp32",
                "M": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32", "codes_per_split": "i32",
                "k_pad": "i32", "n_split": "i32", "is_cosine": "i32", "eps": "fp32",
                "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr", "DOT_PRECISION": "constexpr",
            }  # fmt: skip
            values = {"M": M, "D": d, "stride_zm": d, "stride_ck": d, "codes_per_split": per_split,
                      "k_pad": k_pad, "n_split": n_split, "is_cosine": 0}  # fmt: skip
            specs.append(
                AOTSpec(
                    kernel=_vq_nearest_v2_kernel,
                    signature=sig,
                    constexprs={"BLOCK_M": cfg.block_m, "BLOCK_K": cfg.block_k, "BLOCK_D": block_d,
                                "DOT_PRECISION": cfg.dot_precision},  # fmt: skip
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    label=f"vq-v2 {ty} {cfg.dot_precision} BLOCK_M={cfg.block_m} BLOCK_K={cfg.block_k} "
                    f"BLOCK_D={block_d}",
                    expect_tensor_cores=cfg.dot_precision != "ieee",
                    op="vq",
                    dtype=ty,
                    values=values,
                    main=True,
                )
            )
    return specs
