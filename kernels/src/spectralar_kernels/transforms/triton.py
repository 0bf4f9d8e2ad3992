"""Triton orthonormal 2-D DCT-II / inverse over whole planes (plane-v2).

Every [H, W] plane:   Y = L @ X @ R^T
    dct2d:  L = D_H,   R = D_W        idct2d:  L = D_H^T,  R = D_W^T     (D_N the orthonormal DCT-II)
`_dct2d_fwd_kernel` runs one program per (plane, BLOCK_N-column strip of Y). The strip's rows of R,
R_s = R[strip, :] [BLOCK_N, BLOCK_J >= W], stay on chip for the whole program, and one pipelined loop walks
the plane in BLOCK_K-row chunks i (rows of X, columns of L):
    T_i^T  = R_s @ X[i, :]^T                 [BLOCK_N, BLOCK_K]   (the whole contraction over W at once)
    acc   += T_i^T @ L[:, i]^T               [BLOCK_N, BLOCK_M]   acc = Y[:, strip]^T
Both tiles a step needs (X[i, :] and L[:, i]) are loads of the loop itself, so they arrive by cp.async,
NUM_STAGES - 1 steps ahead, and no tile waits behind an inner loop (the earlier form loaded L with plain
loads before an inner loop over W that restarted its pipeline every chunk). The second product takes T_i^T
from registers (wgmma's A operand may live there), so it is not waited for where it is issued: it runs
while the next chunk's loads are issued, and the wait comes before the next first product. That is why the
strip is accumulated transposed and stored transposed. X is read once per strip (the strips of a plane are
neighbouring programs: the re-reads hit L2), L once per strip, R_s once per program.

Masks: the plane size is a compile-time constant and both bases are stored zero-padded to whole tiles
(L [BLOCK_M, H pad], R [W pad, BLOCK_J], cached per size), so basis loads never need a mask; the loads of X
and stores of Y carry one only when H or W is not a multiple of its tile (a constexpr branch).

Numerics: fp16/bf16 run on tensor cores in the input dtype with fp32 accumulation (wgmma on sm_90); T is
rounded to the input dtype before the second product, as the same-precision reference rounds its
intermediate. fp32 runs IEEE products on the FMA units (`input_precision="ieee"`): the result is what the
interpreter computes, with no TF32 error to reason about. 3xTF32 (three tensor-core products of TF32
head/tail splits) would be faster on paper, but Triton splits the operands in registers and stages them in
shared memory: with this loop every 3xTF32 configuration with 64-wide strips compiled to 255 registers with
spills or to more shared memory than an SM has, and 32-wide strips read X eight times (docs/benchmarks.md).

Limits: planes with H or W above FUSED_MAX (256) do not fit on chip (the strip accumulator and R_s) and run
the PyTorch reference (warned once). Under the interpreter bf16 products are computed wrongly, so there bf16
uses an fp32 basis and fp32 products (UPCAST) and bf16 outputs go through an fp32 buffer.

Window modes (for spectral_subimages, see subimages/triton.py; dct2d uses WINDOW=0), with the window w of
plane q read from win[(q // num_ch) % num_win]:
  WINDOW=1  coefficients: strips at or past w are skipped (never written); in the others outputs with
            u >= w or v >= w are written as zeros;
  WINDOW=2  reconstruction from such coefficients: the loop stops after cdiv(w, BLOCK_K) chunks and the
            columns at or past w are masked (the strips there were never written).

Blockwise transforms live in transforms/blockwise.py (which calls `dct2d_fwd` for big blocks).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._common import interpreter_on, warn_once
from . import ref

FUSED_MAX = 256  # largest padded H and W: the strip accumulator [W strip, H] and R_s [strip, W] stay on chip
MIN_TILE = 16  # smallest tile side (a tl.dot dimension)


@triton.jit
def _dct2d_fwd_kernel(
    x_ptr, y_ptr, l_ptr, r_ptr, win_ptr,
    tiles_n, num_ch, num_win, i_end, stride_xp, stride_yp,
    K_I: tl.constexpr, K_J: tl.constexpr, X_ROW: tl.constexpr,  # input plane rows / cols / row stride
    M: tl.constexpr, N: tl.constexpr, Y_ROW: tl.constexpr,  # output plane rows / cols / row stride
    L_ROW: tl.constexpr, R_ROW: tl.constexpr,  # row strides of the padded L [BLOCK_M, H pad], R [W pad, BLOCK_J]
    WINDOW: tl.constexpr, UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = l_ptr.dtype.element_ty
    PRECISION: tl.constexpr = "ieee" if DOT == tl.float32 else "tf32"  # the second is ignored by 16-bit dots
    EVEN_X: tl.constexpr = (K_I % BLOCK_K == 0) and (K_J == BLOCK_J)
    EVEN_Y: tl.constexpr = (M % BLOCK_M == 0) and (N % BLOCK_N == 0)
    pid = tl.program_id(0)
    q = (pid // tiles_n).to(tl.int64)  # plane
    n0 = (pid % tiles_n) * BLOCK_N
    w = K_J
    if WINDOW != 0:
        w = tl.load(win_ptr + (q // num_ch) % num_win).to(tl.int32)
        if WINDOW == 1:
            if n0 >= w:
                return  # the reconstruction never reads this strip
        else:
            i_end = tl.minimum(tl.cdiv(w, BLOCK_K) * BLOCK_K, i_end)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_j = tl.arange(0, BLOCK_J)
    r_s = tl.load(r_ptr + offs_n[:, None] * R_ROW + offs_j[None, :])  # R_s [BLOCK_N, BLOCK_J], zero-padded
    x_base = x_ptr + q * stride_xp
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # Y[:, strip]^T
    for i0 in tl.range(0, i_end, BLOCK_K, num_stages=NUM_STAGES):
        rows = i0 + offs_k
        x_ptrs = x_base + rows[:, None] * X_ROW + offs_j[None, :]
        if WINDOW == 2:
            xt = tl.load(x_ptrs, mask=(rows[:, None] < K_I) & (offs_j[None, :] < w), other=0.0)
        elif EVEN_X:
            xt = tl.load(x_ptrs)
        else:
            xt = tl.load(x_ptrs, mask=(rows[:, None] < K_I) & (offs_j[None, :] < K_J), other=0.0)
        lt = tl.load(l_ptr + offs_m[:, None] * L_ROW + rows[None, :])  # L[:, i] [BLOCK_M, BLOCK_K]
        if UPCAST:
            xt = xt.to(tl.float32)
        tt = tl.dot(r_s, tl.trans(xt.to(DOT)), input_precision=PRECISION)  # T_i^T [BLOCK_N, BLOCK_K]
        acc = tl.dot(tt.to(DOT), tl.trans(lt), acc, input_precision=PRECISION)
    if WINDOW == 1:
        acc = tl.where((offs_n[:, None] < w) & (offs_m[None, :] < w), acc, 0.0)
    y_ptrs = y_ptr + q * stride_yp + offs_m[None, :] * Y_ROW + offs_n[:, None]
    if EVEN_Y:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty))
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[None, :] < M) & (offs_n[:, None] < N))


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the basis (= of the dot operands) for inputs of `dtype` (see module docstring)."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreter_on()):
        return torch.float32
    return dtype


def padded(n: int, tile: int) -> int:
    return triton.cdiv(n, tile) * tile


def tile(n: int) -> int:
    """A plane side n as the power-of-two tile holding it (>= MIN_TILE)."""
    return max(MIN_TILE, triton.next_power_of_2(n))


def plane_config(h: int, w: int, dtype: torch.dtype) -> dict | None:
    """Launch configuration for [h, w] planes of `dtype`, or None when they do not fit (use the reference).

    BLOCK_M / BLOCK_J: h and w as whole power-of-two tiles; strips BLOCK_N = 64 columns wide (the M of the
    first product: one wgmma row block), narrower for narrower planes. Chosen from the sm_90 compile of the
    256 x 256 case (tests/test_aot_compile.py checks it), 2 CTAs per SM for fp16/bf16:
      fp16/bf16: 4 warps (one warpgroup: the first product's N is the whole 32-row chunk, so each wgmma is
        64x32 instead of 64x16 split across two warpgroups; 184 registers, the accumulator [64, 256] in 128
        of them), BLOCK_K = 32, 2 stages (97 KB of shared memory: R_s 32 KB + 2 x (X 16 KB + L 16 KB)).
        8 warps (118 registers) or BLOCK_K = 16 with 3-4 stages also fit 2 CTAs; 3 stages at BLOCK_K = 32 or
        128-wide strips (X read twice, not 4 times) need 1 CTA.
      fp32 (IEEE): 8 warps, BLOCK_K = 16, 2 stages: 220 registers and 101 KB, so 1 CTA (8 warps) per SM. That is
        enough for FMA-bound work: each thread owns 64 independent accumulators (no latency to hide between
        them); 4 warps spill.
    """
    bm, bj = tile(h), tile(w)
    if max(bm, bj) > FUSED_MAX:
        return None
    bn = min(64, bj)
    if dtype == torch.float32:
        return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=MIN_TILE, BLOCK_J=bj, num_warps=8, NUM_STAGES=2)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=min(32, bm), BLOCK_J=bj, num_warps=4, NUM_STAGES=2)


@functools.lru_cache(maxsize=64)
def padded_basis(n: int, rows: int, cols: int, dtype: torch.dtype, device, transpose: bool) -> torch.Tensor:
    """D_n (or D_n^T) zero-padded to [rows, cols], contiguous; cached (callers must not modify it)."""
    d = ref.dct_basis(n, torch.float64, "cpu")
    out = torch.zeros(rows, cols, dtype=torch.float64)
    out[:n, :n] = d.T if transpose else d
    return out.to(dtype=dtype, device=device)


def _interpreter_bf16(y: torch.Tensor) -> bool:
    """The interpreter rounds fp32 -> bf16 wrongly (it truncates, and its round-to-nearest mode
    drops the carry), so there bf16 outputs go through an fp32 buffer and torch's rounding."""
    return y.dtype == torch.bfloat16 and interpreter_on()


def launch_args(h: int, w: int, cfg: dict) -> dict:
    """The constexpr arguments of `_dct2d_fwd_kernel` for contiguous [h, w] planes (launcher and AOT specs)."""
    return dict(K_I=h, K_J=w, X_ROW=w, M=h, N=w, Y_ROW=w, L_ROW=padded(h, cfg["BLOCK_K"]), R_ROW=cfg["BLOCK_J"],
                BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_J=cfg["BLOCK_J"],
                NUM_STAGES=cfg["NUM_STAGES"])  # fmt: skip


def plane_matmul(
    x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], inverse: bool, dtype: torch.dtype,
    windows: torch.Tensor | None = None, window_mode: int = 0, num_ch: int = 1,
) -> None:  # fmt: skip
    """y[q] = L @ x[q] @ R^T for every plane q of contiguous x, y [P, H, W] (L = D_H or D_H^T, R likewise).

    size: (H, W). dtype: the op's dtype (sets the products' precision; under the interpreter an fp32
    scratch stands for bf16 on either side). windows: int32 [num_win], read when window_mode != 0.
    """
    assert x.is_contiguous() and y.is_contiguous() and x.shape[0] == y.shape[0]
    if _interpreter_bf16(y):
        tmp = torch.full(y.shape, float("nan"), dtype=torch.float32, device=y.device)
        plane_matmul(x, tmp, size, inverse, dtype, windows, window_mode, num_ch)
        y.copy_(tmp)
        return
    h, w = size
    cfg = plane_config(h, w, dtype)
    assert cfg is not None
    bdt = basis_dtype(dtype)
    args = launch_args(h, w, cfg)
    left = padded_basis(h, cfg["BLOCK_M"], args["L_ROW"], bdt, x.device, inverse)  # L [BLOCK_M, H pad]
    right = padded_basis(w, padded(w, cfg["BLOCK_N"]), cfg["BLOCK_J"], bdt, x.device, inverse)  # R [W pad, BLOCK_J]
    if windows is None:
        windows = torch.ones(1, dtype=torch.int32, device=x.device)
    assert windows.dtype == torch.int32
    tiles_n = triton.cdiv(w, cfg["BLOCK_N"])
    grid = (x.shape[0] * tiles_n,)
    _dct2d_fwd_kernel[grid](
        x, y, left, right, windows,
        tiles_n, num_ch, windows.numel(), args["L_ROW"], x.stride(0), y.stride(0),
        WINDOW=window_mode, UPCAST=interpreter_on(), num_warps=cfg["num_warps"], num_stages=cfg["NUM_STAGES"],
        **args,
    )  # fmt: skip


def dct2d_fwd(x: torch.Tensor, block: int | None, inverse: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: whole-plane DCT-II (inverse=False) or DCT-III of `x [..., H, W]` (block must be None).

    Writes into `out` (contiguous, x's shape and dtype) when given. H or W > FUSED_MAX runs the reference.
    """
    assert block is None, "blockwise transforms live in transforms/blockwise.py"
    h, w = x.shape[-2], x.shape[-1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    if plane_config(h, w, x.dtype) is None:
        warn_once("dct2d.large", f"dct2d: [H, W] = [{h}, {w}] exceeds {FUSED_MAX} (no Triton path): reference used")
        fn = ref.idct2d if inverse else ref.dct2d
        return y.copy_(fn(x.to(ref.compute_dtype(x.device.type, x.dtype))))
    x3 = x.reshape(-1, h, w).contiguous()  # [P, H, W]
    plane_matmul(x3, y.view(-1, h, w), (h, w), inverse, x.dtype)
    return y


class DCT2dFunction(torch.autograd.Function):
    """dct2d / idct2d with the transpose as gradient: d(DCT)^T = IDCT (the basis is orthonormal)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: int | None, inverse: bool, impl: str = "plane-v2") -> torch.Tensor:
        assert impl == "plane-v2", impl
        ctx.block, ctx.inverse = block, inverse
        return dct2d_fwd(x, block, inverse)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return dct2d_fwd(grad.contiguous(), ctx.block, not ctx.inverse), None, None, None
