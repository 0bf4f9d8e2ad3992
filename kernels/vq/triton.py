"""Fused nearest-codebook lookup: tl.dot scores and a running argmin, never writing the M x K matrix.

For rows z [M, d] and codes c [K, d], with per-code coefficients from `ref.code_scores_coeffs`
    s_mk = a_k + b_k * (z_m . c_k)      (l2: a = ||c||^2, b = -2;  cosine: a = 0, b = -1/max(|c|, eps))
    index_m = argmin_k s_mk             (lowest k among ties; NaN counts as -inf so it surfaces)
    distance_m = ||z_m - c_idx||^2  or  1 - z_m.c_idx / (max(|z_m|, eps) max(|c_idx|, eps))
The distance is recomputed directly from the chosen code in the epilogue (no cancellation).

One program owns BLOCK_M rows, loops over the codebook in BLOCK_K codes, computes the
[BLOCK_M, BLOCK_K] score tile with tl.dot (fp32 accumulate; fp16/bf16 on tensor cores, fp32 with
input_precision="ieee", i.e. no tf32 rounding) and folds it into a running (min, argmin) per row.
d is padded with masked zeros to a multiple of BLOCK_D = 16 (tl.dot's minimum) and reduced in
16-wide chunks, so any d works with one compiled configuration.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import AOTSpec, interpreter_on
from .ref import EPS, code_scores_coeffs

# One configuration per dtype for every shape (the interpreter cannot autotune; the AOT check covers
# each). BLOCK_D = 16 is tl.dot's minimum and the real code dim is 12; a larger d loops over 16-wide
# chunks. Registers are the limit (bench/kernel_resources.py, sm_80/sm_90): BLOCK_D = 64 spilled, and
# the fp32 "ieee" dot (operands in registers, no tensor cores) spilled at BLOCK_K = 64 on sm_90, so
# fp32 uses BLOCK_K = 32 (80-103 registers); fp16/bf16 (mma) fit BLOCK_K = 64 in 79-98.
BLOCK_M = 64
BLOCK_K = {torch.float32: 32, torch.float16: 64, torch.bfloat16: 64}
BLOCK_D = 16
NUM_WARPS = 8
NUM_STAGES = 2
_TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@triton.jit
def _vq_nearest_fwd_kernel(
    z_ptr, c_ptr, a_ptr, b_ptr, idx_ptr, dist_ptr,
    M, K, D, stride_zm, stride_ck, is_cosine, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # cast dot operands to fp32 (the interpreter computes bf16 dots wrongly)
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    z_rows = z_ptr + rows.to(tl.int64)[:, None] * stride_zm  # [BLOCK_M, 1]
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)

    best = tl.full([BLOCK_M], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_M], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        c_rows = c_ptr + cols.to(tl.int64)[:, None] * stride_ck  # [BLOCK_K, 1]
        acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        # one trip when d <= BLOCK_D (the common case: d = 12, BLOCK_D = 16); the z tile reloads hit L1
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            zt = tl.load(z_rows + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :], other=0.0)
            ct = tl.load(c_rows + dd[None, :], mask=col_ok[:, None] & (dd < D)[None, :], other=0.0)
            if UPCAST:
                zt = zt.to(tl.float32)
                ct = ct.to(tl.float32)
            acc = tl.dot(zt, tl.trans(ct), acc, input_precision="ieee")  # [BLOCK_M, BLOCK_K]
        a = tl.load(a_ptr + cols, mask=col_ok, other=0.0)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
        s = a[None, :] + b[None, :] * acc
        s = tl.where(s != s, float("-inf"), s)  # NaN -> -inf: a NaN row or code wins and shows up
        s = tl.where(col_ok[None, :], s, float("inf"))
        blk_min = tl.min(s, axis=1)
        # lowest column attaining the block minimum; K < 2^31 so K is a safe "none" sentinel
        blk_idx = tl.min(tl.where(s == blk_min[:, None], cols[None, :], K), axis=1)
        better = blk_min < best  # strict: an earlier block (lower index) keeps a tie
        best = tl.where(better, blk_min, best)
        best_idx = tl.where(better, blk_idx, best_idx)

    # Epilogue: exact distance to the chosen code, in fp32.
    zz = tl.zeros([BLOCK_M], tl.float32)
    cc = tl.zeros([BLOCK_M], tl.float32)
    zc_dot = tl.zeros([BLOCK_M], tl.float32)
    sq = tl.zeros([BLOCK_M], tl.float32)
    cbest_rows = c_ptr + best_idx.to(tl.int64)[:, None] * stride_ck
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        m2 = row_ok[:, None] & (dd < D)[None, :]
        zv = tl.load(z_rows + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        cv = tl.load(cbest_rows + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        diff = zv - cv
        sq += tl.sum(diff * diff, axis=1)
        zz += tl.sum(zv * zv, axis=1)
        cc += tl.sum(cv * cv, axis=1)
        zc_dot += tl.sum(zv * cv, axis=1)
    cos_dist = 1.0 - zc_dot / (tl.maximum(tl.sqrt(zz), eps) * tl.maximum(tl.sqrt(cc), eps))
    cos_dist = tl.where(cos_dist < 0.0, 0.0, cos_dist)  # `where`, not maximum: NaN stays NaN
    dist = tl.where(is_cosine != 0, cos_dist, sq)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, dist, mask=row_ok)


def vq_nearest_fwd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused lookup. z [M, d], codebook [K, d]; returns (int64 [M], fp32 [M]).

    Mixed input dtypes are promoted to a common one (fp16 + bf16 -> fp32). `out` = (indices,
    distances) preallocated tensors to write into (tests pass NaN/garbage-filled ones).
    """
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
    a, b = code_scores_coeffs(codebook, cosine, torch.float32)
    if out is None:
        indices = torch.empty(M, dtype=torch.int64, device=z.device)
        distances = torch.empty(M, dtype=torch.float32, device=z.device)
    else:
        indices, distances = out
        assert indices.shape == (M,) and indices.dtype == torch.int64 and indices.is_contiguous()
        assert distances.shape == (M,) and distances.dtype == torch.float32 and distances.is_contiguous()
    grid = (triton.cdiv(M, BLOCK_M),)
    _vq_nearest_fwd_kernel[grid](
        z, codebook, a, b, indices, distances,
        M, K, d, z.stride(0), codebook.stride(0), int(cosine), EPS,
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K[dtype], BLOCK_D=BLOCK_D,
        UPCAST=interpreter_on() and dtype != torch.float32,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    return indices, distances


def aot_specs() -> list[AOTSpec]:
    """Every configuration `vq_nearest_fwd` can launch on a GPU: one per input dtype."""
    specs = []
    for dtype, ty in _TL_DTYPE.items():
        signature = {
            "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "a_ptr": "*fp32", "b_ptr": "*fp32",
            "idx_ptr": "*i64", "dist_ptr": "*fp32",
            "M": "i32", "K": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32",
            "is_cosine": "i32", "eps": "fp32",
            "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr",
            "UPCAST": "constexpr",
        }  # fmt: skip
        constexprs = {"BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K[dtype], "BLOCK_D": BLOCK_D, "UPCAST": False}
        specs.append(
            AOTSpec(
                kernel=_vq_nearest_fwd_kernel,
                signature=signature,
                constexprs=constexprs,
                num_warps=NUM_WARPS,
                num_stages=NUM_STAGES,
                label=f"vq_nearest {ty} BLOCK_M={BLOCK_M} BLOCK_K={BLOCK_K[dtype]} BLOCK_D={BLOCK_D}",
                expect_tensor_cores=dtype != torch.float32,
            )
        )
    return specs
