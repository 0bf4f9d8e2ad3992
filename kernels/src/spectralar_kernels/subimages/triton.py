"""Triton spectral sub-images (subimages-v2): x_w = IDCT(DCT(x) * M_w) = D_w^T (D_w X D_w^T) D_w, D_w = D[:w].

Only the first w rows of the orthonormal DCT basis D [S, S] take part, so the work shrinks with the
window. Coefficients go through a scratch C [B*C, S, S] in the products' dtype (the same-precision
reference rounds them alike); the whole-plane DCT kernel (`_dct2d_fwd_kernel`, transforms/triton.py)
computes them with its window modes, at tile granularity:
  1. C = D X D^T, only the BLOCK_N-column strips below w (the rest is never written), entries with u
     or v >= w written as zeros (WINDOW=1): ~ cdiv(w, BLOCK_N) BLOCK_N / S of a full DCT;
  2. one window per sample: x_w = D^T C D with the loop over coefficient rows cut after cdiv(w, BLOCK_K)
     chunks and the columns at or past w masked (never read) (WINDOW=2): ~ w / S of a full IDCT.

All prefixes (N increasing windows w_1 < ... < w_N, output [B, N, C, S, S]): step 1 once with w_N, then
`_subimages_prefix_kernel`, one program per 64 x 64 output tile (rows m, cols n; 32 x 32 in fp32) of a
plane, walks the coefficients in shells of BLOCK_S = 16 frequencies (r0 <= max(u, v) < r0 + 16), keeping
acc = D[:r0, m]^T C[:r0, :r0] D[:r0, n] (every coefficient below the shell). For a shell it forms
    F = C[shell, :r0] D[:r0, n]    [16, 64]        G = D[:r0, m]^T C[:r0, shell]    [64, 16]
(each coefficient enters one F or G once), and with K = C[shell, shell], L_s = D[shell, m]^T,
R_s = D[shell, n], every output whose window ends in the shell (r0 < w <= r0 + 16) is
    x_w tile = acc + (L_s M) (F + K (M R_s)) + G (M R_s),      M = diag(shell index < w)
and the shell then enters acc with M = I. Cost per tile ~ 1.5 * 64 S^2 + N * 2 * 64^2 * 16
multiply-adds, independent of the windows' sizes; the N output tiles written are the floor.

Gradient: the op is the symmetric projection P_w x P_w^T (P_w = D_w^T D_w), so the gradient of one
window is the same op on the upstream gradient; for all prefixes it is
sum_n P_{w_n} g_n P_{w_n}^T = IDCT(sum_n M_{w_n} * DCT(g_n)) (step 1 per prefix, a sum, step 2 once).

Numerics as in transforms/triton.py (fp16/bf16 tensor cores with fp32 accumulation; fp32 IEEE products in
the DCT steps and 3xTF32 in the all-prefixes kernel; fp32 basis and scratch for bf16 under the interpreter).
Images larger than the DCT kernel's limit (S > 256) use the reference (warned once).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import warn_once
from ..transforms import triton as dct_triton
from . import ref

PREFIX_SHELL = 16  # shell width: the smallest tl.dot depth, so an output costs two 64 x 16 x 64 products
PREFIX_PAD = 64  # the basis is zero-padded to a multiple of every output tile


def prefix_config(dtype: torch.dtype) -> dict:
    """All-prefixes kernel: 64 x 64 output tiles (wgmma); 32 x 32 in fp32, where 3xTF32 doubles every
    operand and 64 x 64 spills on sm_80 (32 x 32 compiles without spills on sm_80 and sm_90)."""
    if dtype == torch.float32:
        return dict(BLOCK=32, num_warps=4, NUM_STAGES=3)
    return dict(BLOCK=64, num_warps=4, NUM_STAGES=3)


@triton.jit
def _subimages_prefix_kernel(
    c_ptr, y_ptr, d_ptr, win_ptr, first_ptr,
    num_shells, num_ch, num_win, stride_cp, stride_yn,
    S: tl.constexpr, D_ROW: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = d_ptr.dtype.element_ty
    PRECISION: tl.constexpr = "tf32x3" if DOT == tl.float32 else "tf32"  # the second is ignored by 16-bit dots
    EVEN_C: tl.constexpr = S % BLOCK_S == 0
    EVEN_Y: tl.constexpr = S % BLOCK == 0
    TILES: tl.constexpr = (S + BLOCK - 1) // BLOCK
    pid = tl.program_id(0)
    p = pid // (TILES * TILES)  # input plane b * num_ch + ch
    tm = (pid // TILES) % TILES
    tn = pid % TILES
    b = p // num_ch
    ch = p % num_ch
    c_base = c_ptr + p.to(tl.int64) * stride_cp
    y_base = y_ptr + ((b * num_win).to(tl.int64) * num_ch + ch) * (S * S)  # output plane (b, 0, ch)
    rows = tm * BLOCK + tl.arange(0, BLOCK)  # output rows m
    cols = tn * BLOCK + tl.arange(0, BLOCK)  # output cols n
    offs_s = tl.arange(0, BLOCK_S)
    y_offs = rows[:, None] * S + cols[None, :]
    y_mask = (rows[:, None] < S) & (cols[None, :] < S)

    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for s in range(num_shells):
        r0 = s * BLOCK_S
        ksh = r0 + offs_s
        ft = tl.zeros((BLOCK, BLOCK_S), dtype=tl.float32)  # F^T [n, u]: 64 rows, so the product is a wgmma
        g = tl.zeros((BLOCK, BLOCK_S), dtype=tl.float32)  # G [m, v]
        for k0 in tl.range(0, r0, BLOCK_S, num_stages=NUM_STAGES):
            kk = k0 + offs_s
            d_n = tl.load(d_ptr + kk[None, :] * D_ROW + cols[:, None])  # [n, k] = D[k, n]
            d_m = tl.load(d_ptr + kk[None, :] * D_ROW + rows[:, None])  # [m, k] = D[k, m]
            ct_ptrs = c_base + ksh[None, :] * S + kk[:, None]  # [k, u] = C[u, k]
            c_ptrs = c_base + kk[:, None] * S + ksh[None, :]  # [k, v] = C[k, v]
            if EVEN_C:
                ct = tl.load(ct_ptrs)
                cc = tl.load(c_ptrs)
            else:
                ct = tl.load(ct_ptrs, mask=(ksh[None, :] < S) & (kk[:, None] < S), other=0.0)
                cc = tl.load(c_ptrs, mask=(kk[:, None] < S) & (ksh[None, :] < S), other=0.0)
            ft = tl.dot(d_n, ct, ft, input_precision=PRECISION)
            g = tl.dot(d_m, cc, g, input_precision=PRECISION)
        k_ptrs = c_base + ksh[:, None] * S + ksh[None, :]
        if EVEN_C:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(ksh[:, None] < S) & (ksh[None, :] < S), other=0.0)
        f = tl.trans(ft)  # [u, n]
        gd = g.to(DOT)
        l_ptrs = d_ptr + ksh[None, :] * D_ROW + rows[:, None]  # [m, u] = D[u, m]
        r_ptrs = d_ptr + ksh[:, None] * D_ROW + cols[None, :]  # [v, n] = D[v, n]
        n_lo = tl.load(first_ptr + s)
        n_hi = tl.load(first_ptr + s + 1)
        for n in range(n_lo, n_hi):  # the outputs whose window ends inside this shell
            # The masked basis tiles are re-read (from L1) per output rather than kept: registers.
            keep = ksh < tl.load(win_ptr + n)
            rm = tl.load(r_ptrs, mask=keep[:, None], other=0.0)
            lm = tl.load(l_ptrs, mask=keep[None, :], other=0.0)
            inner = tl.dot(k, rm, f, input_precision=PRECISION)  # F + K (M R_s)
            y = tl.dot(lm, inner.to(DOT), acc, input_precision=PRECISION)
            y = tl.dot(gd, rm, y, input_precision=PRECISION)
            y_ptrs = y_base + n * stride_yn + y_offs  # n * stride_yn < N * C * S * S: int32 is enough
            if EVEN_Y:
                tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty))
            else:
                tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=y_mask)
        r_sh = tl.load(r_ptrs)
        inner = tl.dot(k, r_sh, f, input_precision=PRECISION)
        acc = tl.dot(tl.load(l_ptrs), inner.to(DOT), acc, input_precision=PRECISION)
        acc = tl.dot(gd, r_sh, acc, input_precision=PRECISION)


def _scratch_dtype(dtype: torch.dtype) -> torch.dtype:
    return dct_triton.basis_dtype(dtype)  # the products' dtype (fp32 for bf16 under the interpreter)


def _prefix_launch(coeff: torch.Tensor, y: torch.Tensor, windows: list[int], num_ch: int) -> None:
    """y [B, N, C, S, S] from coefficients coeff [B*C, S, S] (zero outside the largest window)."""
    if dct_triton._interpreter_bf16(y):
        tmp = torch.full(y.shape, float("nan"), dtype=torch.float32, device=y.device)
        _prefix_launch(coeff, tmp, windows, num_ch)
        y.copy_(tmp)
        return
    s = coeff.shape[-1]
    cfg = prefix_config(coeff.dtype)
    sp = dct_triton.padded(s, PREFIX_PAD)
    basis = dct_triton.padded_basis(s, sp, sp, coeff.dtype, coeff.device, False)  # D zero-padded [SP, SP]
    shell_of = [(w - 1) // PREFIX_SHELL for w in windows]
    num_shells = shell_of[-1] + 1
    first = [sum(1 for sh in shell_of if sh < i) for i in range(num_shells + 1)]  # outputs of shell i: first[i:i+2]
    meta = torch.tensor(list(windows) + first, dtype=torch.int32).to(coeff.device)  # one copy to the device
    n = len(windows)
    tiles = triton.cdiv(s, cfg["BLOCK"])
    grid = (coeff.shape[0] * tiles * tiles,)
    _subimages_prefix_kernel[grid](
        coeff, y, basis, meta, meta[n:],
        num_shells, num_ch, n, coeff.stride(0), num_ch * s * s,
        S=s, D_ROW=sp, NUM_STAGES=cfg["NUM_STAGES"], BLOCK=cfg["BLOCK"], BLOCK_S=PREFIX_SHELL,
        num_warps=cfg["num_warps"], num_stages=cfg["NUM_STAGES"],
    )  # fmt: skip


def spectral_subimages_fwd(x: torch.Tensor, windows, all_prefixes: bool, out: torch.Tensor | None = None):
    """Launcher. x `[B, C, S, S]`; windows int tensor `[B]` or (all_prefixes) a list of N ints.

    Returns `[B, C, S, S]` or `[B, N, C, S, S]` in x.dtype; writes into `out` when given.
    """
    b, c, s, _ = x.shape
    if dct_triton.plane_config(s, s, x.dtype) is None:
        msg = f"spectral_subimages: S={s} > {dct_triton.FUSED_MAX} has no Triton path: reference used"
        warn_once("spectral_subimages.large", msg)
        res = ref.spectral_subimages(x.to(dct_triton.ref.compute_dtype(x.device.type, x.dtype)), windows,
                                     all_prefixes).to(x.dtype)  # fmt: skip
        return res if out is None else out.copy_(res)
    n_out = len(windows) if all_prefixes else 1
    shape = (b, n_out, c, s, s) if all_prefixes else (b, c, s, s)
    y = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
    assert tuple(y.shape) == shape and y.dtype == x.dtype and y.is_contiguous()
    x3 = x.reshape(b * c, s, s).contiguous()  # [B*C, S, S]
    coeff = torch.empty((b * c, s, s), dtype=_scratch_dtype(x.dtype), device=x.device)
    if all_prefixes:
        w_max = torch.full((1,), windows[-1], dtype=torch.int32, device=x.device)
        dct_triton.plane_matmul(x3, coeff, (s, s), False, x.dtype, w_max, window_mode=1, num_ch=c)
        _prefix_launch(coeff, y, windows, c)
    else:
        w_all = windows.to(torch.int32).contiguous()  # the kernel reads win_ptr + b: no strided views
        dct_triton.plane_matmul(x3, coeff, (s, s), False, x.dtype, w_all, window_mode=1, num_ch=c)
        dct_triton.plane_matmul(coeff, y.view(-1, s, s), (s, s), True, x.dtype, w_all, window_mode=2, num_ch=c)
    return y


def _all_prefixes_bwd(grad: torch.Tensor, windows: list[int]) -> torch.Tensor:
    b, n, c, s, _ = grad.shape
    g3 = grad.reshape(-1, s, s).contiguous()  # [B*N*C, S, S]
    w_all = torch.tensor(list(windows), dtype=torch.int32, device=grad.device)
    sdt = _scratch_dtype(grad.dtype)
    coeff = torch.zeros((b, n, c, s, s), dtype=sdt, device=grad.device)  # strips past a window stay zero
    # plane (b, n, c) takes window w_all[((b * n + n_i) * c + c_i) // c % n] = w_all[n_i]
    dct_triton.plane_matmul(g3, coeff.view(-1, s, s), (s, s), False, grad.dtype, w_all, window_mode=1, num_ch=c)
    total = coeff.sum(1, dtype=torch.float32).to(sdt).view(-1, s, s)  # [B*C, S, S], zero outside w_N
    gx = torch.empty((b, c, s, s), dtype=grad.dtype, device=grad.device)
    dct_triton.plane_matmul(total, gx.view(-1, s, s), (s, s), True, grad.dtype, w_all[-1:], window_mode=2, num_ch=c)
    return gx


class SubimagesFunction(torch.autograd.Function):
    """spectral_subimages, differentiable w.r.t. x (a symmetric projection: its own transpose)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, windows, all_prefixes: bool, impl: str = "subimages-v2") -> torch.Tensor:
        assert impl == "subimages-v2", impl
        ctx.windows, ctx.all_prefixes, ctx.x_shape = windows, all_prefixes, x.shape
        return spectral_subimages_fwd(x, windows, all_prefixes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s = grad.shape[-1]
        if dct_triton.plane_config(s, s, grad.dtype) is None:  # the forward used the reference
            with torch.enable_grad():
                x0 = torch.zeros(ctx.x_shape, dtype=torch.float32, device=grad.device, requires_grad=True)
                y0 = ref.spectral_subimages(x0, ctx.windows, ctx.all_prefixes)
                (gx,) = torch.autograd.grad(y0, x0, grad.float())  # the op is linear: any point will do
            return gx.to(grad.dtype), None, None, None
        if ctx.all_prefixes:
            return _all_prefixes_bwd(grad, ctx.windows), None, None, None
        return spectral_subimages_fwd(grad.contiguous(), ctx.windows, False), None, None, None
