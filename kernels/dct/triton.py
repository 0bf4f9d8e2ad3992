"""Triton orthonormal 2-D DCT-II / inverse: whole-plane (fused) and JPEG-style blockwise.

Whole plane, every [H, W] plane p:   Y = L @ X @ R^T
    dct2d:  L = D_H,   R = D_W        idct2d:  L = D_H^T,  R = D_W^T     (D_N the orthonormal DCT-II)
`_dct2d_fwd_kernel` (FUSE_L=True) computes one column tile Y[:, n0:n0+BLOCK_N] per program: for each
row chunk i it forms T = X[i, :] @ R^T[:, n-tile] on chip and accumulates L[:, i] @ T, so both 1-D
passes run in one kernel and X is read once per column tile (from L2), the intermediate never goes
to memory. The accumulator holds a whole column [BLOCK_M >= H, BLOCK_N], so this path is used up to
H = FUSED_MAX_H (256). Taller planes run the separable two-pass form with the same kernel
(FUSE_L=False: Y[m-tile, n-tile] = X[m-tile, :] @ R^T), first along W into an fp32 scratch, then
along H on transposed views. tl.dot needs every dim >= 16: small planes are zero-padded by masked
loads (the padding costs compute, not memory traffic).

Blockwise (b x b blocks), `_dct2d_block_fwd_kernel`: one [BT, BT] tile (BT = 16/32/64, a power of
two >= b) covers k = BT // b blocks per axis (R = k b <= BT rows/cols used), and with the
block-diagonal K = diag(D_b, ..., D_b, 0) [BT, BT] the tile's transform is K @ X @ K^T: two small
tensor-core dots, one read and one write of the tensor. Blocks larger than 32 run the whole-plane
kernel on a [.., b, b] copy.

Numerics: loads are cast to fp32 (the interpreter mishandles bf16 otherwise); fp32 inputs use
tl.dot with input_precision="ieee" (TF32 would cost ~1e-3 relative error); fp16/bf16 inputs cast
both dot operands to the input dtype (tensor cores, fp32 accumulation) and the basis is stored in
that dtype, as the same-precision reference does. Under the interpreter bf16 dots are computed
wrongly, so there the bf16 path uses an fp32 basis and fp32 dots.

The window arguments (`win_ptr`, `window_mode`) serve spectral_subimages, which reuses this kernel
with truncated bases (see kernels/subimages/triton.py); dct2d passes window_mode=0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import AOTSpec, interpreter_on
from . import ref

FUSED_MAX_H = 256  # largest padded H whose whole output column [H, BLOCK_N] stays on chip
BLOCKWISE_MAX = 32  # largest block handled by the one-pass blockwise kernel (BT=64 in fp32 spills)
TWO_PASS_BLOCK_M = 64


@triton.jit
def _dct2d_fwd_kernel(
    x_ptr, y_ptr, l_ptr, r_ptr, win_ptr,
    M, N, K_I, K_J,  # output rows / cols; contraction lengths over rows / cols of x
    tiles_m, tiles_n, num_ch, num_groups, num_win, window_mode,
    stride_xp, stride_xh, stride_xw, stride_yp, stride_yh, stride_yw,
    stride_lm, stride_lk, stride_rn, stride_rk,
    FUSE_L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = r_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    q = pid // (tiles_m * tiles_n)  # output plane
    tm = (pid // tiles_n) % tiles_m
    tn = pid % tiles_n
    # Output plane q = ((b * num_groups + g) * num_ch + c) reads input plane b * num_ch + c, window
    # win[(q // num_ch) % num_win] (spectral_subimages). dct2d: num_groups = 1, window_mode = 0.
    ch = q % num_ch
    grp = q // num_ch
    in_plane = (grp // num_groups) * num_ch + ch
    w = tl.load(win_ptr + grp % num_win).to(tl.int32)
    # window_mode 1: only outputs u, v < w are needed; 2: only inputs i, j < w are non-zero.
    m_hi = tl.where(window_mode == 1, tl.minimum(w, M), M)
    n_hi = tl.where(window_mode == 1, tl.minimum(w, N), N)
    i_hi = tl.where(window_mode == 2, tl.minimum(w, K_I), K_I)
    j_hi = tl.where(window_mode == 2, tl.minimum(w, K_J), K_J)

    offs_m = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    active = (tm * BLOCK_M < m_hi) & (tn * BLOCK_N < n_hi)
    j_end = tl.where(active, j_hi, 0)  # tiles outside the window do no work and write nothing
    x_base = x_ptr + in_plane * stride_xp
    # R^T[:, n-tile] chunks [BLOCK_K, BLOCK_N] are loaded through R's strides.
    r_cols = r_ptr + offs_n[None, :] * stride_rn
    n_ok = offs_n[None, :] < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FUSE_L:
        i_end = tl.where(active, i_hi, 0)
        for i0 in range(0, i_end, BLOCK_K):
            offs_i = i0 + offs_k
            t = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
            for j0 in range(0, j_end, BLOCK_K):
                offs_j = j0 + offs_k
                x_mask = (offs_i[:, None] < i_hi) & (offs_j[None, :] < j_hi)
                xt = tl.load(x_base + offs_i[:, None] * stride_xh + offs_j[None, :] * stride_xw, mask=x_mask, other=0.0)
                rt = tl.load(r_cols + offs_j[:, None] * stride_rk, mask=(offs_j[:, None] < K_J) & n_ok, other=0.0)
                if DOT == tl.float32:
                    t = tl.dot(xt.to(tl.float32), rt.to(tl.float32), t, input_precision="ieee")
                else:
                    t = tl.dot(xt.to(tl.float32).to(DOT), rt.to(tl.float32).to(DOT), t)
            l_mask = (offs_m[:, None] < m_hi) & (offs_i[None, :] < i_hi)
            lt = tl.load(l_ptr + offs_m[:, None] * stride_lm + offs_i[None, :] * stride_lk, mask=l_mask, other=0.0)
            if DOT == tl.float32:
                acc = tl.dot(lt.to(tl.float32), t, acc, input_precision="ieee")
            else:
                acc = tl.dot(lt.to(tl.float32).to(DOT), t.to(DOT), acc)  # T rounded like the reference's
    else:
        for j0 in range(0, j_end, BLOCK_K):
            offs_j = j0 + offs_k
            x_mask = (offs_m[:, None] < M) & (offs_j[None, :] < j_hi)
            xt = tl.load(x_base + offs_m[:, None] * stride_xh + offs_j[None, :] * stride_xw, mask=x_mask, other=0.0)
            rt = tl.load(r_cols + offs_j[:, None] * stride_rk, mask=(offs_j[:, None] < K_J) & n_ok, other=0.0)
            if DOT == tl.float32:
                acc = tl.dot(xt.to(tl.float32), rt.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt.to(tl.float32).to(DOT), rt.to(tl.float32).to(DOT), acc)
    y_mask = (offs_m[:, None] < m_hi) & (offs_n[None, :] < n_hi) & active
    y_ptrs = y_ptr + q * stride_yp + offs_m[:, None] * stride_yh + offs_n[None, :] * stride_yw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def _dct2d_block_fwd_kernel(
    x_ptr, y_ptr, k_ptr,
    H, W, R, tiles_h, tiles_w,
    stride_xp, stride_xh, stride_yp, stride_yh,
    BT: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = k_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    p = pid // (tiles_h * tiles_w)
    th = (pid // tiles_w) % tiles_h
    tw = pid % tiles_w
    offs = tl.arange(0, BT)
    rows = th * R + offs
    cols = tw * R + offs
    # A tile covers R = k * b rows and cols (whole blocks), so masking at R never splits a block.
    mask = (offs[:, None] < R) & (rows[:, None] < H) & (offs[None, :] < R) & (cols[None, :] < W)
    xt = tl.load(x_ptr + p * stride_xp + rows[:, None] * stride_xh + cols[None, :], mask=mask, other=0.0)
    k = tl.load(k_ptr + offs[:, None] * BT + offs[None, :]).to(tl.float32)  # K [BT, BT], zero-padded
    kt = tl.load(k_ptr + offs[None, :] * BT + offs[:, None]).to(tl.float32)  # K^T
    if DOT == tl.float32:
        t = tl.dot(k, xt.to(tl.float32), input_precision="ieee")
        y = tl.dot(t, kt, input_precision="ieee")
    else:
        t = tl.dot(k.to(DOT), xt.to(tl.float32).to(DOT))
        y = tl.dot(t.to(DOT), kt.to(DOT))
    tl.store(y_ptr + p * stride_yp + rows[:, None] * stride_yh + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the basis (= of the dot operands) for inputs of `dtype` (see module docstring)."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreter_on()):
        return torch.float32
    return dtype


def fused_config(m: int) -> dict:
    """Block sizes of the fused whole-plane kernel for H = m rows (None: too tall, use two passes)."""
    block_m = max(16, triton.next_power_of_2(m))
    if block_m > FUSED_MAX_H:
        return None
    return dict(BLOCK_M=block_m, BLOCK_N=16, BLOCK_K=32 if block_m <= 32 else 16, num_warps=4 if block_m <= 64 else 8)


TWO_PASS_CONFIG = dict(BLOCK_M=TWO_PASS_BLOCK_M, BLOCK_N=32, BLOCK_K=32, num_warps=4)


def _interpreter_bf16(y: torch.Tensor) -> bool:
    """The interpreter rounds fp32 -> bf16 wrongly (it truncates, and its round-to-nearest mode
    drops the carry), so there bf16 outputs go through an fp32 buffer and torch's rounding."""
    return y.dtype == torch.bfloat16 and interpreter_on()


def plane_matmul(
    x: torch.Tensor, y: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor,
    windows: torch.Tensor | None = None, window_mode: int = 0, num_ch: int = 1, num_groups: int = 1,
) -> None:  # fmt: skip
    """y[q] = left @ x[p(q)] @ right^T for 3-D views x [P, K_I, K_J], y [Q, M, N] (any strides).

    left None: y[q] = x[p(q)] @ right^T (one separable pass, tiled over rows). Plane mapping and
    windows as in `_dct2d_fwd_kernel`.
    """
    if _interpreter_bf16(y):
        tmp = torch.full(y.shape, float("nan"), dtype=torch.float32, device=y.device)
        plane_matmul(x, tmp, left, right, windows, window_mode, num_ch, num_groups)
        y.copy_(tmp)
        return
    m, n = y.shape[1], y.shape[2]
    k_i, k_j = x.shape[1], x.shape[2]
    if windows is None:
        windows = torch.ones(1, dtype=torch.int64, device=x.device)
    assert windows.dtype == torch.int64
    fuse = left is not None
    if not fuse:
        cfg = TWO_PASS_CONFIG
        tiles_m = triton.cdiv(m, cfg["BLOCK_M"])
        left, stride_l = right, (0, 0)  # not read
    else:
        cfg = fused_config(m)
        assert cfg is not None and m == left.shape[0] and k_i == left.shape[1]
        tiles_m = 1
        stride_l = left.stride()
    assert right.shape == (n, k_j)
    tiles_n = triton.cdiv(n, cfg["BLOCK_N"])
    grid = (y.shape[0] * tiles_m * tiles_n,)
    _dct2d_fwd_kernel[grid](
        x, y, left, right, windows,
        m, n, k_i, k_j,
        tiles_m, tiles_n, num_ch, num_groups, windows.numel(), window_mode,
        *x.stride(), *y.stride(), *stride_l, *right.stride(),
        FUSE_L=fuse, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
    )  # fmt: skip


_KRON_CACHE: dict = {}


def block_config(b: int) -> dict:
    bt = max(16, triton.next_power_of_2(b))
    return dict(BT=bt, num_warps=max(1, bt // 8))


def _kron_basis(b: int, bt: int, dtype: torch.dtype, device, inverse: bool) -> torch.Tensor:
    """K = diag(D_b, ..., D_b, 0) [BT, BT] with BT // b copies (D_b^T for the inverse); cached."""
    key = (b, bt, dtype, device, inverse)
    if key not in _KRON_CACHE:
        d = ref.dct_basis(b, torch.float64, "cpu")
        d = d.T if inverse else d
        kron = torch.zeros(bt, bt, dtype=torch.float64)
        for s in range(0, (bt // b) * b, b):
            kron[s : s + b, s : s + b] = d
        _KRON_CACHE[key] = kron.to(dtype=dtype, device=device).contiguous()
    return _KRON_CACHE[key]


def _basis(n: int, dtype: torch.dtype, device, inverse: bool) -> torch.Tensor:
    d = ref.dct_basis(n, basis_dtype(dtype), device)
    return d.T if inverse else d  # a strided view, no copy


def dct2d_fwd(x: torch.Tensor, block: int | None, inverse: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: DCT-II (inverse=False) or DCT-III of `x [..., H, W]`; writes into `out` when given."""
    h, w = x.shape[-2], x.shape[-1]
    x3 = x.reshape(-1, h, w)  # [P, H, W]
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    y3 = y.view(-1, h, w)
    if block is not None and block <= BLOCKWISE_MAX:
        if _interpreter_bf16(y):
            y3 = torch.full(y3.shape, float("nan"), dtype=torch.float32, device=y.device)
        cfg = block_config(block)
        bt = cfg["BT"]
        rows = (bt // block) * block
        kron = _kron_basis(block, bt, basis_dtype(x.dtype), x.device, inverse)
        tiles_h, tiles_w = triton.cdiv(h, rows), triton.cdiv(w, rows)
        grid = (x3.shape[0] * tiles_h * tiles_w,)
        _dct2d_block_fwd_kernel[grid](
            x3, y3, kron, h, w, rows, tiles_h, tiles_w, x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1),
            BT=bt, num_warps=cfg["num_warps"],
        )  # fmt: skip
        if y3.dtype != y.dtype:
            y.view(-1, h, w).copy_(y3)
        return y
    if block is not None:
        # Big blocks: gather them into planes [P, H/b, W/b, b, b], transform, scatter back.
        b = block
        tiles = x3.reshape(-1, h // b, b, w // b, b).transpose(2, 3).contiguous()
        res = dct2d_fwd(tiles, None, inverse)
        y3.copy_(res.transpose(2, 3).reshape(-1, h, w))
        return y
    left = _basis(h, x.dtype, x.device, inverse)
    right = _basis(w, x.dtype, x.device, inverse)
    if fused_config(h) is not None:
        plane_matmul(x3, y3, left, right)
        return y
    # Separable two passes through an fp32 scratch: T = X @ R^T, then Y^T = T^T @ L^T.
    t = torch.empty(x3.shape, dtype=torch.float32, device=x.device)
    plane_matmul(x3, t, None, right)
    plane_matmul(t.transpose(1, 2), y3.transpose(1, 2), None, left)
    return y


class DCT2dFunction(torch.autograd.Function):
    """dct2d / idct2d with the transpose as gradient: d(DCT)^T = IDCT (the basis is orthonormal)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: int | None, inverse: bool) -> torch.Tensor:
        ctx.block, ctx.inverse = block, inverse
        return dct2d_fwd(x, block, inverse)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return dct2d_fwd(grad.contiguous(), ctx.block, not ctx.inverse), None, None


_DTYPE_SIG = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _fwd_spec(x_dt, y_dt, basis_dt, fuse: bool, cfg: dict, label: str) -> AOTSpec:
    sig = {"x_ptr": _DTYPE_SIG[x_dt], "y_ptr": _DTYPE_SIG[y_dt], "l_ptr": _DTYPE_SIG[basis_dt],
           "r_ptr": _DTYPE_SIG[basis_dt], "win_ptr": "*i64"}  # fmt: skip
    for name in ("M", "N", "K_I", "K_J", "tiles_m", "tiles_n", "num_ch", "num_groups", "num_win", "window_mode",
                 "stride_xp", "stride_xh", "stride_xw", "stride_yp", "stride_yh", "stride_yw",
                 "stride_lm", "stride_lk", "stride_rn", "stride_rk"):  # fmt: skip
        sig[name] = "i32"
    consts = dict(FUSE_L=fuse, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
    for name in consts:
        sig[name] = "constexpr"
    return AOTSpec(
        kernel=_dct2d_fwd_kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"], label=label,
        expect_tensor_cores=basis_dt != torch.float32,
    )  # fmt: skip


def aot_specs() -> list[AOTSpec]:
    """Every launch configuration the launchers here (and spectral_subimages') can choose, per dtype."""
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        bdt = dt  # on a GPU the basis has the input dtype (fp32 basis only under the interpreter)
        name = _SHORT[dt]
        # (x, y) dtype pairs: plain transform; into / out of the fp32 scratch (two-pass, sub-images).
        pairs = [(dt, dt)] if dt == torch.float32 else [(dt, dt), (dt, torch.float32), (torch.float32, dt)]
        for bm in (16, 32, 64, 128, 256):
            cfg = fused_config(bm)
            for x_dt, y_dt in pairs:
                label = f"dct2d fused {name} x={_SHORT[x_dt]} y={_SHORT[y_dt]} M={bm}"
                specs.append(_fwd_spec(x_dt, y_dt, bdt, True, cfg, label))
        for x_dt, y_dt in pairs[1:] if dt != torch.float32 else pairs:
            label = f"dct2d two-pass {name} x={_SHORT[x_dt]} y={_SHORT[y_dt]}"
            specs.append(_fwd_spec(x_dt, y_dt, bdt, False, TWO_PASS_CONFIG, label))
        for b in (8, 32):
            cfg = block_config(b)
            sig = {"x_ptr": _DTYPE_SIG[dt], "y_ptr": _DTYPE_SIG[dt], "k_ptr": _DTYPE_SIG[bdt]}
            for arg in ("H", "W", "R", "tiles_h", "tiles_w", "stride_xp", "stride_xh", "stride_yp", "stride_yh"):
                sig[arg] = "i32"
            sig["BT"] = "constexpr"
            specs.append(AOTSpec(
                kernel=_dct2d_block_fwd_kernel, signature=sig, constexprs={"BT": cfg["BT"]},
                num_warps=cfg["num_warps"], label=f"dct2d blockwise {name} BT={cfg['BT']}",
                expect_tensor_cores=bdt != torch.float32,
            ))  # fmt: skip
    return specs
