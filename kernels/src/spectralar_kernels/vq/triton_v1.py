"""vq-v1: the first fused nearest-codebook kernels (kept because an H200 run measured them 7-26x faster
than the chunked reference and 2x torch.cdist + argmin at K = 16384); `auto` sends CUDA users here until
a GPU run measures vq-v2 (vq/triton.py). Kernel code unchanged since that measurement.

For rows z [M, d] and codes c [K, d], ranking codes with the textbook scores
    s_mk = a_k + b_k * (z_m . c_k)      (l2: a = ||c||^2, b = -2;  cosine: a = 0, b = -1/max(|c|, eps))
    index_m = argmin_k s_mk             (lowest k among ties; NaN counts as -inf so it surfaces)
    distance_m = ||z_m - c_idx||^2  or  1 - z_m.c_idx / (max(|z_m|, eps) max(|c_idx|, eps))
The distance is recomputed directly from the chosen code (no cancellation in the expanded form).
For l2 the launcher (`launch_v1`) centres z and the codebook on the codebook mean in fp32 before the
launch (torch ops), so ||c||^2 - 2 z.c carries terms of the data's spread instead of its offset: the
fp32 kernel configuration then runs for every input dtype (centred values do not fit 16 bits).

Two kernels:
  _vq_nearest_fwd_kernel     grid (row blocks, codebook splits). Each program scores BLOCK_M rows
                             against its slice of the codebook, BLOCK_K codes at a time, with tl.dot
                             (fp32 accumulate; fp16/bf16 on tensor cores; fp32 as 3xTF32, never plain
                             tf32; ||c||^2 from the same tiles) and keeps an element-wise running min
                             [BLOCK_M, BLOCK_K] plus the block it came from, so the loop has no
                             cross-thread reductions; one row reduction at the end writes a partial
                             (min, index) per split.
  _vq_nearest_reduce_kernel  folds the splits in code order (strict <: the lowest index wins ties) and
                             computes the exact distance to the chosen code.
Splitting the codebook matters because M is small (4096 rows = 64 row blocks < 132 SMs on an H200):
with one program per row block the first version ran at half the GPU and lost to torch.cdist.
d is padded with masked zeros to a multiple of BLOCK_D = 16 (tl.dot's minimum) and reduced in
16-wide chunks, so any d runs with one compiled configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import DTYPE_NAME, AOTSpec, cuda_sm_count, interpreter_on
from .ref import EPS, centre


@dataclass(frozen=True)
class _Config:
    block_m: int
    block_k: int
    num_warps: int
    dot_precision: str  # fp32 operands only; ignored for fp16/bf16
    ctas_per_sm: int  # codebook splits aim for this many programs per SM
    num_stages: int = 2


# One configuration per dtype for every shape (the interpreter cannot autotune; the AOT check covers
# each). Picked from a sweep on an H200 (M = 4096, d = 12, K = 4096 and 16384). At K = 16384:
# fp16/bf16 64 x 64 tiles, 8 warps, ~4 programs per SM: 113 us (torch.cdist + argmin: 521 us).
# fp32 ranks codes with 3xTF32 tensor-core products ("tf32x3": ~1e-6 relative error, never plain
# tf32): 171 us; the FMA "ieee" dot took 218+ us and spilled at its faster tiles. One stage for fp32
# because two spilled 8-16 bytes on sm_80/sm_90 (spectralar_kernels.testing.aot). The returned distance
# is recomputed in plain fp32 either way. BLOCK_D = 16 is tl.dot's minimum (the real d is 12).
CONFIGS = {
    torch.float32: _Config(block_m=32, block_k=64, num_warps=4, dot_precision="tf32x3", ctas_per_sm=2, num_stages=1),
    torch.float16: _Config(block_m=64, block_k=64, num_warps=8, dot_precision="ieee", ctas_per_sm=4),
    torch.bfloat16: _Config(block_m=64, block_k=64, num_warps=8, dot_precision="ieee", ctas_per_sm=4),
}
BLOCK_D = 16
MIN_BLOCKS_PER_SPLIT = 8  # a split scans at least this many code blocks (amortises its prologue)
REDUCE_BLOCK_M = 128
REDUCE_WARPS = 4


@triton.jit
def _vq_nearest_fwd_kernel(
    z_ptr, c_ptr, part_val_ptr, part_idx_ptr,
    M, K, D, stride_zm, stride_ck, codes_per_split, is_cosine, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # fp32 operands only (ignored for fp16/bf16)
    UPCAST: tl.constexpr,  # cast dot operands to fp32 (the interpreter computes bf16 dots wrongly)
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    z_rows = z_ptr + rows.to(tl.int64)[:, None] * stride_zm  # [BLOCK_M, 1]
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_s * codes_per_split
    k_end = tl.minimum(k_start + codes_per_split, K)

    run_val = tl.full([BLOCK_M, BLOCK_K], float("inf"), tl.float32)
    run_blk = tl.zeros([BLOCK_M, BLOCK_K], tl.int32) + k_start  # k0 of the block that set run_val
    for k0 in range(k_start, k_end, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < k_end
        c_rows = c_ptr + cols.to(tl.int64)[:, None] * stride_ck  # [BLOCK_K, 1]
        acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        csq = tl.zeros([BLOCK_K], tl.float32)  # ||c||^2 in fp32, computed here: no launcher pass
        # one trip when d <= BLOCK_D (the real code dim is 12); the z tile reloads hit L1
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            zt = tl.load(z_rows + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :], other=0.0)
            ct = tl.load(c_rows + dd[None, :], mask=col_ok[:, None] & (dd < D)[None, :], other=0.0)
            cf = ct.to(tl.float32)
            csq += tl.sum(cf * cf, axis=1)
            if UPCAST:
                zt = zt.to(tl.float32)
                ct = cf
            acc = tl.dot(zt, tl.trans(ct), acc, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_K]
        # s = a + b * (z.c): l2 a = ||c||^2, b = -2; cosine a = 0, b = -1 / max(|c|, eps)
        a = tl.where(is_cosine != 0, 0.0, csq)
        b = tl.where(is_cosine != 0, -1.0 / tl.maximum(tl.sqrt(csq), eps), -2.0)
        s = a[None, :] + b[None, :] * acc
        s = tl.where(s != s, float("-inf"), s)  # NaN -> -inf: a NaN row or code wins and shows up
        s = tl.where(col_ok[None, :], s, float("inf"))
        better = s < run_val  # strict: at one column position an earlier block (lower index) keeps a tie
        run_val = tl.where(better, s, run_val)
        run_blk = tl.where(better, k0, run_blk)

    row_min = tl.min(run_val, axis=1)
    # lowest global index attaining the row minimum; K <= 2^31 - 1 is a safe "none" sentinel
    cand = tl.where(run_val == row_min[:, None], run_blk + offs_k[None, :], K)
    row_idx = tl.minimum(tl.min(cand, axis=1), K - 1)  # an empty split (never launched) would give K
    out = pid_s * M + rows
    tl.store(part_val_ptr + out, row_min, mask=row_ok)
    tl.store(part_idx_ptr + out, row_idx, mask=row_ok)


@triton.jit
def _vq_nearest_reduce_kernel(
    z_ptr, c_ptr, part_val_ptr, part_idx_ptr, idx_ptr, dist_ptr,
    M, D, stride_zm, stride_ck, n_split, is_cosine, eps,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    best = tl.load(part_val_ptr + rows, mask=row_ok, other=0.0)
    best_idx = tl.load(part_idx_ptr + rows, mask=row_ok, other=0)
    for s in range(1, n_split):  # splits in code order: strict < keeps the lowest index on ties
        v = tl.load(part_val_ptr + s * M + rows, mask=row_ok, other=0.0)
        i = tl.load(part_idx_ptr + s * M + rows, mask=row_ok, other=0)
        better = v < best
        best = tl.where(better, v, best)
        best_idx = tl.where(better, i, best_idx)

    # exact distance to the chosen code, in fp32
    offs_d = tl.arange(0, BLOCK_D)
    z_rows = z_ptr + rows.to(tl.int64)[:, None] * stride_zm
    c_rows = c_ptr + best_idx.to(tl.int64)[:, None] * stride_ck
    sq = tl.zeros([BLOCK_M], tl.float32)
    zz = tl.zeros([BLOCK_M], tl.float32)
    cc = tl.zeros([BLOCK_M], tl.float32)
    zc = tl.zeros([BLOCK_M], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        m2 = row_ok[:, None] & (dd < D)[None, :]
        zv = tl.load(z_rows + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        cv = tl.load(c_rows + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        diff = zv - cv
        sq += tl.sum(diff * diff, axis=1)
        zz += tl.sum(zv * zv, axis=1)
        cc += tl.sum(cv * cv, axis=1)
        zc += tl.sum(zv * cv, axis=1)
    cos_dist = 1.0 - zc / (tl.maximum(tl.sqrt(zz), eps) * tl.maximum(tl.sqrt(cc), eps))
    cos_dist = tl.where(cos_dist < 0.0, 0.0, cos_dist)  # `where`, not maximum: NaN stays NaN
    dist = tl.where(is_cosine != 0, cos_dist, sq)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, dist, mask=row_ok)


def _codes_per_split(M: int, K: int, cfg: _Config, sms: int, split: int | None) -> int:
    """Codes per program along the codebook: enough programs to fill `sms` SMs, each >= 8 code blocks."""
    if split is None:
        want = triton.cdiv(cfg.ctas_per_sm * sms, triton.cdiv(M, cfg.block_m))
        split = min(want, triton.cdiv(K, MIN_BLOCKS_PER_SPLIT * cfg.block_k))
    split = max(1, min(split, triton.cdiv(K, cfg.block_k)))
    return triton.cdiv(triton.cdiv(K, split), cfg.block_k) * cfg.block_k  # a multiple of BLOCK_K: no empty split


def device_sms(device: torch.device) -> int:
    """SMs of a CUDA device; 4 for the interpreter (any small number does)."""
    if device.type != "cuda":
        return 4
    return cuda_sm_count(device)


def launch_v1(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str,
    indices: torch.Tensor,
    distances: torch.Tensor,
    split: int | None = None,
) -> None:
    """Run vq-v1 into `indices` int64 [M] / `distances` fp32 [M]. z [M, d], codebook [K, d], any float dtypes.

    l2 inputs are centred on the codebook mean in fp32 first (see the module docstring); cosine inputs
    go in as they are (promoted to a common dtype: fp16 + bf16 -> fp32). The only other memory is the
    [2, split, M] partial (min, index) buffer.
    """
    if metric == "l2":
        mu = centre(codebook.float())  # [d]; skips non-finite codes so a NaN code stays one code
        z, codebook = z.float() - mu, codebook.float() - mu
    dtype = torch.promote_types(z.dtype, codebook.dtype)
    z = z.to(dtype)
    codebook = codebook.to(dtype)
    if z.stride(1) != 1:
        z = z.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()
    M, d = z.shape
    K = codebook.shape[0]
    cosine = metric == "cosine"
    cfg = CONFIGS[dtype]
    per_split = _codes_per_split(M, K, cfg, device_sms(z.device), split)
    n_split = triton.cdiv(K, per_split)
    partial = torch.empty(2, n_split, M, dtype=torch.int32, device=z.device)  # one allocation
    part_val, part_idx = partial[0].view(torch.float32), partial[1]
    _vq_nearest_fwd_kernel[(triton.cdiv(M, cfg.block_m), n_split)](
        z, codebook, part_val, part_idx,
        M, K, d, z.stride(0), codebook.stride(0), per_split, int(cosine), EPS,
        BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_D=BLOCK_D, DOT_PRECISION=cfg.dot_precision,
        UPCAST=interpreter_on() and dtype != torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    _vq_nearest_reduce_kernel[(triton.cdiv(M, REDUCE_BLOCK_M),)](
        z, codebook, part_val, part_idx, indices, distances,
        M, d, z.stride(0), codebook.stride(0), n_split, int(cosine), EPS,
        BLOCK_M=REDUCE_BLOCK_M, BLOCK_D=BLOCK_D, num_warps=REDUCE_WARPS, num_stages=1,
    )  # fmt: skip


# The benchmark shape the ahead-of-time compile specialises for (M = 4096 rows, K = 16384 codes, d = 12)
# on an H200 (132 SMs); contiguous inputs, so the row strides equal d.
AOT_M, AOT_K, AOT_D, AOT_SMS = 4096, 16384, 12, 132


def aot_specs() -> list[AOTSpec]:
    """Every configuration `launch_v1` can launch on a GPU: both kernels, per kernel dtype.

    l2 always runs the fp32 configuration (centred inputs); cosine runs the input dtype's.
    """
    specs = []
    for dtype, ty in DTYPE_NAME.items():
        cfg = CONFIGS[dtype]
        is_cosine = 0 if dtype == torch.float32 else 1  # fp16/bf16 kernels only ever serve cosine
        per_split = _codes_per_split(AOT_M, AOT_K, cfg, AOT_SMS, None)
        n_split = triton.cdiv(AOT_K, per_split)
        fwd_sig = {
            "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "part_val_ptr": "*fp32", "part_idx_ptr": "*i32",
            "M": "i32", "K": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32", "codes_per_split": "i32",
            "is_cosine": "i32", "eps": "fp32",
            "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr",
            "DOT_PRECISION": "constexpr", "UPCAST": "constexpr",
        }  # fmt: skip
        fwd_const = {"BLOCK_M": cfg.block_m, "BLOCK_K": cfg.block_k, "BLOCK_D": BLOCK_D,
                     "DOT_PRECISION": cfg.dot_precision, "UPCAST": False}  # fmt: skip
        fwd_values = {"M": AOT_M, "K": AOT_K, "D": AOT_D, "stride_zm": AOT_D, "stride_ck": AOT_D,
                      "codes_per_split": per_split, "is_cosine": is_cosine}  # fmt: skip
        precision = f" {cfg.dot_precision}" if dtype == torch.float32 else ""
        specs.append(
            AOTSpec(
                kernel=_vq_nearest_fwd_kernel,
                signature=fwd_sig,
                constexprs=fwd_const,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                label=f"vq-v1 fwd {ty}{precision} BLOCK_M={cfg.block_m} BLOCK_K={cfg.block_k} BLOCK_D={BLOCK_D}",
                expect_tensor_cores=dtype != torch.float32 or cfg.dot_precision != "ieee",
                op="vq",
                dtype=ty,
                values=fwd_values,
                # not held to the main-loop rules (cp.async, 128-bit loads): this is the measured kernel kept
                # unchanged, whose 24-byte rows load scalar; vq-v2 is the op's main loop
                main=False,
            )
        )
        red_sig = {
            "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "part_val_ptr": "*fp32", "part_idx_ptr": "*i32",
            "idx_ptr": "*i64", "dist_ptr": "*fp32",
            "M": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32", "n_split": "i32",
            "is_cosine": "i32", "eps": "fp32",
            "BLOCK_M": "constexpr", "BLOCK_D": "constexpr",
        }  # fmt: skip
        red_values = {"M": AOT_M, "D": AOT_D, "stride_zm": AOT_D, "stride_ck": AOT_D, "n_split": n_split,
                      "is_cosine": is_cosine}  # fmt: skip
        specs.append(
            AOTSpec(
                kernel=_vq_nearest_reduce_kernel,
                signature=red_sig,
                constexprs={"BLOCK_M": REDUCE_BLOCK_M, "BLOCK_D": BLOCK_D},
                num_warps=REDUCE_WARPS,
                num_stages=1,
                label=f"vq-v1 reduce {ty} BLOCK_M={REDUCE_BLOCK_M} BLOCK_D={BLOCK_D}",
                op="vq",
                dtype=ty,
                values=red_values,
            )
        )
    return specs
