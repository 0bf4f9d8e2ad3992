"""Triton orthonormal 2-D DCT-II / inverse over whole planes (plane-v2).

Every [H, W] plane p:   Y = L @ X @ R^T
    dct2d:  L = D_H,   R = D_W        idct2d:  L = D_H^T,  R = D_W^T     (D_N the orthonormal DCT-II)
`_dct2d_fwd_kernel` runs one program per (plane, BLOCK_N-column strip) and keeps the whole output strip
Y[:, strip] [BLOCK_M >= H, BLOCK_N] on chip: for each BLOCK_K-row chunk i of X it forms
T = X[i, :] @ R^T[:, strip] (inner loop over BLOCK_K-column chunks, pipelined with
`tl.range(num_stages=...)`, so the tiles arrive by cp.async) and adds L[:, i] @ T to the strip. X is read
once per strip (the strips of one plane are neighbouring programs, so the re-reads hit L2) and the
intermediate never goes to memory.

Masks: the plane size is a compile-time constant and both bases are stored zero-padded to whole tiles
([BLOCK_M, K_pad] and [K_pad, N_pad], cached per size), so basis loads never need a mask and the loads
of X / stores of Y carry one only when H or W is not a multiple of the tile (a constexpr branch: no
runtime bounds on the main path).

Numerics: fp16/bf16 use tensor cores in the input dtype with fp32 accumulation (wgmma on sm_90: 64-row
tiles and >= 4 warps); T is rounded to the input dtype before the second product, as the
same-precision reference rounds its intermediate. fp32 uses 3xTF32 (`input_precision="tf32x3"`: each
operand split into a TF32 head and tail, three tensor-core products; emulated at 256 x 256 its error is
~5e-7 of the largest coefficient, as IEEE fp32's, inside the fp32 tolerance, where one TF32 product
errs ~4e-4 and fails it: tests/test_dct.py). Chosen over calling cuBLAS twice because it keeps the
one-kernel form (no fp32 intermediate through HBM) and runs on tensor cores, where cuBLAS's IEEE fp32
GEMM (torch's default) does not. The interpreter computes plain fp32 products, so only a GPU run
measures the kernel's own 3xTF32 error.

Limits: planes with H > FUSED_MAX_H (256) rows do not fit on chip and run the PyTorch reference (warned
once); W is unbounded (it is a loop). Under the interpreter bf16 products are computed wrongly, so there
bf16 uses an fp32 basis and fp32 products (UPCAST) and bf16 outputs go through an fp32 buffer.

Window modes (for spectral_subimages, see subimages/triton.py; dct2d uses WINDOW=0), with the
window w of plane q read from win[(q // num_ch) % num_win]:
  WINDOW=1  coefficients: strips at or past w are skipped (never written); in the others outputs with
            u >= w or v >= w are written as zeros, so the next step reads whole chunks without masks;
  WINDOW=2  reconstruction from such coefficients: both contractions stop after cdiv(w, BLOCK_K)
            chunks (BLOCK_K divides BLOCK_N, so every chunk read lies in a strip step 1 wrote).

Blockwise transforms live in dct/blockwise.py (which calls `dct2d_fwd` for big blocks).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec, interpreter_on, warn_once
from . import ref

FUSED_MAX_H = 256  # largest padded H whose output strip [H, BLOCK_N] (fp32) stays in registers
TILE = 64  # strip width / chunk depth of the fp16/bf16 configurations (wgmma wants >= 64-row tiles)


@triton.jit
def _dct2d_fwd_kernel(
    x_ptr, y_ptr, l_ptr, r_ptr, win_ptr,
    tiles_n, num_ch, num_win, stride_xp, stride_yp,
    K_I: tl.constexpr, K_J: tl.constexpr, X_ROW: tl.constexpr,  # input plane rows / cols / row stride
    M: tl.constexpr, N: tl.constexpr, Y_ROW: tl.constexpr,  # output plane rows / cols / row stride
    L_ROW: tl.constexpr, R_ROW: tl.constexpr,  # row strides of the padded L [BLOCK_M, K_I pad], R^T [K_J pad, N pad]
    WINDOW: tl.constexpr, UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = l_ptr.dtype.element_ty
    PRECISION: tl.constexpr = "tf32x3" if DOT == tl.float32 else "tf32"  # the second is ignored by 16-bit dots
    EVEN_X: tl.constexpr = (K_I % BLOCK_K == 0) and (K_J % BLOCK_K == 0)
    EVEN_Y: tl.constexpr = (M % BLOCK_M == 0) and (N % BLOCK_N == 0)
    I_END: tl.constexpr = (K_I + BLOCK_K - 1) // BLOCK_K * BLOCK_K
    J_END: tl.constexpr = (K_J + BLOCK_K - 1) // BLOCK_K * BLOCK_K
    pid = tl.program_id(0)
    q = (pid // tiles_n).to(tl.int64)  # plane
    n0 = (pid % tiles_n) * BLOCK_N
    i_end = I_END
    j_end = J_END
    w = 0
    if WINDOW != 0:
        w = tl.load(win_ptr + (q // num_ch) % num_win).to(tl.int32)
        if WINDOW == 1:
            if n0 >= w:
                return  # the reconstruction never reads this strip
        else:
            w_pad = tl.cdiv(w, BLOCK_K) * BLOCK_K
            i_end = tl.minimum(w_pad, I_END)
            j_end = tl.minimum(w_pad, J_END)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_base = x_ptr + q * stride_xp
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i0 in range(0, i_end, BLOCK_K):
        rows = i0 + offs_k
        # The L chunk is issued first so its latency overlaps the inner loop.
        lt = tl.load(l_ptr + offs_m[:, None] * L_ROW + rows[None, :])
        t = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for j0 in tl.range(0, j_end, BLOCK_K, num_stages=NUM_STAGES):
            cols = j0 + offs_k
            x_ptrs = x_base + rows[:, None] * X_ROW + cols[None, :]
            if EVEN_X:
                xt = tl.load(x_ptrs)
            else:
                xt = tl.load(x_ptrs, mask=(rows[:, None] < K_I) & (cols[None, :] < K_J), other=0.0)
            rt = tl.load(r_ptr + cols[:, None] * R_ROW + offs_n[None, :])
            if UPCAST:
                xt = xt.to(tl.float32)
            t = tl.dot(xt.to(DOT), rt, t, input_precision=PRECISION)
        acc = tl.dot(lt, t.to(DOT), acc, input_precision=PRECISION)
    if WINDOW == 1:
        acc = tl.where((offs_m[:, None] < w) & (offs_n[None, :] < w), acc, 0.0)
    y_ptrs = y_ptr + q * stride_yp + offs_m[:, None] * Y_ROW + offs_n[None, :]
    if EVEN_Y:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty))
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the basis (= of the dot operands) for inputs of `dtype` (see module docstring)."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreter_on()):
        return torch.float32
    return dtype


def padded(n: int, tile: int = TILE) -> int:
    return triton.cdiv(n, tile) * tile


def block_m(h: int) -> int:
    """Rows of the on-chip output strip for H = h (a power of two >= 64)."""
    return max(TILE, triton.next_power_of_2(h))


def plane_config(h: int, dtype: torch.dtype) -> dict | None:
    """Launch configuration for H = h rows, or None when the strip does not fit (use the reference).

    fp16/bf16: 64-wide strips and chunks (wgmma), 4 warps up to BLOCK_M = 128 (8 warps there are
    capped at 128 registers and spill on sm_80), 8 at 256. fp32 (3xTF32 splits every operand in two, so
    registers run out first): 32-deep chunks, and 32-wide strips at BLOCK_M = 256; sm_80 and sm_90
    compile both without spills.
    """
    bm = block_m(h)
    if bm > FUSED_MAX_H:
        return None
    if dtype == torch.float32:
        return dict(BLOCK_M=bm, BLOCK_N=32 if bm == 256 else TILE, BLOCK_K=32, num_warps=8, NUM_STAGES=3)
    return dict(BLOCK_M=bm, BLOCK_N=TILE, BLOCK_K=TILE, num_warps=8 if bm == 256 else 4, NUM_STAGES=3)


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
    cfg = plane_config(h, dtype)
    assert cfg is not None
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    bdt = basis_dtype(dtype)
    left = padded_basis(h, bm, padded(h, bk), bdt, x.device, inverse)  # L [BLOCK_M, H pad]
    right_t = padded_basis(w, padded(w, bk), padded(w, bn), bdt, x.device, not inverse)  # R^T [W pad, W pad]
    if windows is None:
        windows = torch.ones(1, dtype=torch.int32, device=x.device)
    assert windows.dtype == torch.int32
    tiles_n = triton.cdiv(w, bn)
    grid = (x.shape[0] * tiles_n,)
    _dct2d_fwd_kernel[grid](
        x, y, left, right_t, windows,
        tiles_n, num_ch, windows.numel(), x.stride(0), y.stride(0),
        h, w, x.stride(1), h, w, y.stride(1), left.stride(0), right_t.stride(0),
        WINDOW=window_mode, UPCAST=interpreter_on(), NUM_STAGES=cfg["NUM_STAGES"],
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg["num_warps"], num_stages=cfg["NUM_STAGES"],
    )  # fmt: skip


def dct2d_fwd(x: torch.Tensor, block: int | None, inverse: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: whole-plane DCT-II (inverse=False) or DCT-III of `x [..., H, W]` (block must be None).

    Writes into `out` (contiguous, x's shape and dtype) when given. H > FUSED_MAX_H runs the reference.
    """
    assert block is None, "blockwise transforms live in dct/blockwise.py"
    h, w = x.shape[-2], x.shape[-1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    if plane_config(h, x.dtype) is None:
        warn_once("dct2d.large", f"dct2d: H={h} > {FUSED_MAX_H} has no Triton path: reference used")
        fn = ref.idct2d if inverse else ref.dct2d
        return y.copy_(fn(x.float()) if x.dtype != torch.float32 else fn(x))
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




def plane_spec(
    dtype, size: int, window_mode: int, label: str, op: str, values: dict, main: bool, cfg: dict | None = None
) -> AOTSpec:
    """AOT spec of `_dct2d_fwd_kernel` for size x size planes (on a GPU x, y, scratch and basis share dtype)."""
    cfg = cfg or plane_config(size, dtype)
    bm, bk, bn = cfg["BLOCK_M"], cfg["BLOCK_K"], cfg["BLOCK_N"]
    sig = {name: PTR_SIG[dtype] for name in ("x_ptr", "y_ptr", "l_ptr", "r_ptr")}
    sig["win_ptr"] = "*i32"
    for name in ("tiles_n", "num_ch", "num_win", "stride_xp", "stride_yp"):
        sig[name] = "i32"
    consts = dict(K_I=size, K_J=size, X_ROW=size, M=size, N=size, Y_ROW=size, L_ROW=padded(size, bk),
                  R_ROW=padded(size, bn), WINDOW=window_mode, UPCAST=False, NUM_STAGES=cfg["NUM_STAGES"],
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)  # fmt: skip
    for name in consts:
        sig[name] = "constexpr"
    return AOTSpec(
        kernel=_dct2d_fwd_kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"], label=label,
        num_stages=cfg["NUM_STAGES"], expect_tensor_cores=True, op=op, dtype=DTYPE_NAME[dtype], values=values,
        main=main,
    )  # fmt: skip


def aot_specs() -> list[AOTSpec]:
    """Every block configuration `dct2d_fwd` can choose on a GPU (BLOCK_M = 64, 128, 256), per dtype.

    `values` are the integer arguments at 64x3x256x256 (192 planes, 4 strips each); the smaller
    BLOCK_M configurations are compiled at H = W = BLOCK_M.
    """
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for size in (64, 128, 256):
            tiles_n = size // plane_config(size, dt)["BLOCK_N"]
            values = dict(tiles_n=tiles_n, num_ch=1, num_win=1, stride_xp=size * size, stride_yp=size * size)
            label = f"dct2d plane-v2 {DTYPE_NAME[dt]} BLOCK_M={block_m(size)}"
            specs.append(plane_spec(dt, size, 0, label, "dct", values, main=size == 256))
    return specs
