"""vq-v1: the general fused nearest-codebook kernels (any code width, any layout, no cached state).

The ranking contract and the shared score loop, threshold and exact keys are those of vq-v2 (ref.py and
vq/shared.py). What differs: vq-v1 reads the raw codebook (any float dtype and row stride, masked), loops
over the code width in BLOCK_D chunks (so any d runs with one configuration), and combines the codebook
splits with a second small launch instead of atomics:
    l2:      s_mk = ||c_k - mu||^2 - 2 (z_m - mu).(c_k - mu), mu = the first finite row of the program
    cosine:  s_mk = -z_m.c_k / max(|c_k|, EPS)   (no centring: its error bound uses max |u_k| = 1)

Two kernels:
  _vq_nearest_v1_kernel   grid (row blocks, codebook splits): scores with tl.dot (3xTF32), per lane the two
                          smallest, then the best exact key of the program's slice into a [splits, M] buffer.
  _vq_keys_min_kernel     the smallest key per row over the splits (an int64 min: any order gives the nearest
                          code, lowest index on ties), written out as index and fp32 distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

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
    device_sms,
    launch_plan,
    programs_per_sm,
)


@dataclass(frozen=True)
class V1Config:
    block_m: int = 32
    block_k: int = 32
    block_d: int = 16  # code-width chunk: tl.dot's minimum
    num_warps: int = 4
    num_stages: int = 1  # its loads are masked and unaligned (any d, any stride): nothing to pipeline
    ctas_per_sm: int = 3  # estimate until a compiled kernel reports its registers (shared.programs_per_sm)
    rerank: int = 4
    block_e: int = 16


V1 = V1Config()
REDUCE_BLOCK_M = 256


@triton.jit
def _rows_chunk(z_ptr, rows, row_ok, d0, D, stride_zm, BLOCK_D: tl.constexpr):
    dd = d0 + tl.arange(0, BLOCK_D)
    return tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_zm + dd[None, :],
                   mask=row_ok[:, None] & (dd < D)[None, :], other=0.0).to(tl.float32)  # fmt: skip


@triton.jit
def _vq_nearest_v1_kernel(
    z_ptr, c_ptr, part_ptr,
    M, K, D, stride_zm, stride_ck, codes_per_split, gamma, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, IS_COSINE: tl.constexpr,
    RERANK: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)

    # per row: finite? (over every chunk of the code width); l2 shifts by the first finite row (none: no shift)
    good = row_ok
    for d0 in range(0, D, BLOCK_D):
        good = good & _finite_rows(_rows_chunk(z_ptr, rows, row_ok, d0, D, stride_zm, BLOCK_D))
    first = tl.min(tl.where(good, rows, M), axis=0)
    has_first = first < M

    k_start = pid_s * codes_per_split
    k_end = tl.minimum(k_start + codes_per_split, K)
    v1 = tl.full([BLOCK_M, BLOCK_K], float("inf"), tl.float32)
    v2 = v1
    blk = tl.zeros([BLOCK_M, BLOCK_K], tl.int32) + k_start
    for k0 in range(k_start, k_end, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < k_end
        acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        a = tl.zeros([BLOCK_K], tl.float32)  # l2: ||c - mu||^2; cosine: ||c||^2
        flagged = ~col_ok
        for d0 in range(0, D, BLOCK_D):  # one trip for d <= 16
            dd = d0 + offs_d
            ct = tl.load(c_ptr + cols.to(tl.int64)[:, None] * stride_ck + dd[None, :],
                         mask=col_ok[:, None] & (dd < D)[None, :], other=0.0).to(tl.float32)  # fmt: skip
            flagged = flagged | ~_finite_rows(ct)
            zt = _rows_chunk(z_ptr, rows, row_ok, d0, D, stride_zm, BLOCK_D)
            if IS_COSINE:
                a += tl.sum(ct * ct, axis=1)
                w = ct
            else:
                mu = tl.load(z_ptr + first.to(tl.int64) * stride_zm + dd, mask=has_first & (dd < D),
                             other=0.0).to(tl.float32)  # fmt: skip
                zt = tl.where((dd < D)[None, :], zt - mu[None, :], 0.0)
                cc = tl.where((dd < D)[None, :], ct - mu[None, :], 0.0)
                a += tl.sum(cc * cc, axis=1)
                w = -2.0 * cc
            z_hi = _tf32_hi(zt)
            acc = _dot3(z_hi, zt - z_hi, w, acc)
        if IS_COSINE:
            s = -acc / tl.maximum(tl.sqrt(a), eps)[None, :]
        else:
            s = acc + a[None, :]
        s = tl.where(flagged[None, :], _FLT_MAX, s)  # non-finite and out-of-slice codes: never candidates
        v1, v2, blk = _lane_update(s, k0, v1, v2, blk)

    # the rows' squared norms after the loop (nothing row-sized stays live across it): shifted for l2
    Z = tl.zeros([BLOCK_M], tl.float64)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        zt = _rows_chunk(z_ptr, rows, row_ok, d0, D, stride_zm, BLOCK_D)
        if not IS_COSINE:
            mu = tl.load(z_ptr + first.to(tl.int64) * stride_zm + dd, mask=has_first & (dd < D), other=0.0)
            zt = tl.where((dd < D)[None, :], zt - mu.to(tl.float32)[None, :], 0.0)
        Z += tl.sum(zt.to(tl.float64) * zt.to(tl.float64), axis=1)
    nz = tl.maximum(tl.sqrt(Z), eps)
    thr, regular = _threshold(tl.min(v1, axis=1), Z, nz, Z * 0.0, 1.0 + 2.0**-20, gamma, good, IS_COSINE)  # zu = 0
    key = _best_keys(z_ptr, c_ptr, rows, row_ok, v1, v2, blk, thr, regular, K, k_start, k_end, D, stride_zm,
                     stride_ck, eps, IS_COSINE, RERANK, BLOCK_K, BLOCK_E)  # fmt: skip
    tl.store(part_ptr + pid_s * M + rows, key, mask=row_ok)


@triton.jit
def _vq_keys_min_kernel(part_ptr, idx_ptr, dist_ptr, M, n_split, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    key = tl.full([BLOCK_M], _KEY_NONE, tl.int64)
    for s in range(0, n_split):
        key = tl.minimum(key, tl.load(part_ptr + s * M + rows, mask=row_ok, other=_KEY_NONE))
    _store_keys(idx_ptr, dist_ptr, rows, row_ok, key)


def launch_v1(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str,
    indices: torch.Tensor,
    distances: torch.Tensor,
    split: int | None = None,
) -> None:
    """Run vq-v1 into `indices` int64 [M] / `distances` fp32 [M]. z [M, d], codebook [K, d], any float dtypes
    and row strides (unit column stride is made if missing). The only other memory: the [splits, M] keys."""
    if z.stride(1) != 1:
        z = z.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()
    M, d = z.shape
    K = codebook.shape[0]
    cosine = metric == "cosine"
    cfg = V1
    meta = dict(BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, IS_COSINE=cosine,
                RERANK=cfg.rerank, BLOCK_E=cfg.block_e, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                enable_fp_fusion=False)  # fmt: skip
    row_blocks = triton.cdiv(M, cfg.block_m)

    def args(part, per_split):
        return (z, codebook, part, M, K, d, z.stride(0), codebook.stride(0), per_split, GAMMA, EPS)

    probe = torch.empty(1, dtype=torch.int64, device=z.device)  # compiling needs no real buffer
    tiles = triton.cdiv(K, cfg.block_k) * cfg.block_k  # codes per split are whole tiles: the JIT's specialisation
    ctas = programs_per_sm(_vq_nearest_v1_kernel, args(probe, tiles), meta, z.device,
                           ("v1", cosine, z.dtype, codebook.dtype), cfg.ctas_per_sm)  # fmt: skip
    per_split, n_split = launch_plan(M, K, cfg.block_m, cfg.block_k, device_sms(z.device), ctas, split)
    part = torch.empty(n_split, M, dtype=torch.int64, device=z.device)
    _vq_nearest_v1_kernel[(row_blocks, n_split)](*args(part, per_split), **meta)
    _vq_keys_min_kernel[(triton.cdiv(M, REDUCE_BLOCK_M),)](part, indices, distances, M, n_split,
                                                            BLOCK_M=REDUCE_BLOCK_M, num_warps=4)  # fmt: skip
