"""Triton spectral sub-images: x_w = IDCT(DCT(x) * M_w) = D_w^T (D_w x D_w^T) D_w,  D_w = D[:w].

Only the first w rows of the orthonormal DCT basis D [S, S] take part, so the work shrinks with the
window. Two launches of the DCT kernel (`_dct2d_fwd_kernel` in kernels/dct/triton.py, one fused
L @ X @ R^T per plane) with per-plane windows:
  1. coefficients  Cw = D_w X D_w^T           (window_mode=1: only the w x w outputs are computed
                                              and written, into an fp32 scratch [B*C, S, S]);
  2. sub-image     x_w = D_w^T Cw D_w          (window_mode=2: the contractions run over i, j < w).
Cost per plane ~ 3 S^2 w + S w^2 multiply-adds instead of 4 S^3 for a full DCT + IDCT; memory:
read x, write x_w, plus the w x w scratch. With all_prefixes, step 1 runs once with w = w_N and
step 2 writes all N sub-images from it (the N outputs are the unavoidable cost).

Gradient: the op is the symmetric projection P_w x P_w^T (P_w = D_w^T D_w), so the gradient of one
window is the same op on the upstream gradient; for all prefixes it is
sum_n P_{w_n} g_n P_{w_n}^T = IDCT(sum_n M_{w_n} * DCT(g_n)) (step 1 per prefix, a sum, one IDCT).

Planes taller than the fused DCT limit (S > 256) use the reference (warned once).
"""

from __future__ import annotations

import dataclasses

import torch

from .._common import AOTSpec, warn_once
from ..dct import ref as dct_ref
from ..dct import triton as dct_triton
from . import ref


def _basis(size: int, x: torch.Tensor) -> torch.Tensor:
    return dct_ref.dct_basis(size, dct_triton.basis_dtype(x.dtype), x.device)


def spectral_subimages_fwd(x: torch.Tensor, windows, all_prefixes: bool, out: torch.Tensor | None = None):
    """Launcher. x `[B, C, S, S]`; windows int tensor `[B]` or (all_prefixes) a list of N ints.

    Returns `[B, C, S, S]` or `[B, N, C, S, S]` in x.dtype; writes into `out` when given.
    """
    b, c, s, _ = x.shape
    if dct_triton.fused_config(s) is None:
        warn_once("spectral_subimages.large", f"spectral_subimages: S={s} > 256 has no Triton path: reference used")
        res = ref.spectral_subimages(x.float(), windows, all_prefixes).to(x.dtype)
        return res if out is None else out.copy_(res)
    n_out = len(windows) if all_prefixes else 1
    shape = (b, n_out, c, s, s) if all_prefixes else (b, c, s, s)
    y = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
    assert tuple(y.shape) == shape and y.dtype == x.dtype and y.is_contiguous()
    x3 = x.reshape(b * c, s, s)  # [B*C, S, S]
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    d = _basis(s, x)
    coeff = torch.empty((b * c, s, s), dtype=torch.float32, device=x.device)
    if all_prefixes:
        w_all = torch.tensor(list(windows), dtype=torch.int64, device=x.device)
        dct_triton.plane_matmul(x3, coeff, d, d, w_all[-1:], window_mode=1, num_ch=c)
        # output plane (b, n, c) reads coefficients of plane (b, c) with window w_all[n]
        dct_triton.plane_matmul(coeff, y.view(-1, s, s), d.T, d.T, w_all, window_mode=2, num_ch=c, num_groups=n_out)
    else:
        w_all = windows.to(torch.int64)
        dct_triton.plane_matmul(x3, coeff, d, d, w_all, window_mode=1, num_ch=c)
        dct_triton.plane_matmul(coeff, y.view(-1, s, s), d.T, d.T, w_all, window_mode=2, num_ch=c)
    return y


def _all_prefixes_bwd(grad: torch.Tensor, windows: list[int]) -> torch.Tensor:
    b, n, c, s, _ = grad.shape
    g3 = grad.reshape(-1, s, s)  # [B*N*C, S, S]
    if g3.stride(-1) != 1:
        g3 = g3.contiguous()
    w_all = torch.tensor(list(windows), dtype=torch.int64, device=grad.device)
    d = _basis(s, grad)
    coeff = torch.zeros((b, n, c, s, s), dtype=torch.float32, device=grad.device)  # zero outside each window
    dct_triton.plane_matmul(g3, coeff.view(-1, s, s), d, d, w_all, window_mode=1, num_ch=c)
    return dct_triton.dct2d_fwd(coeff.sum(1), None, inverse=True).to(grad.dtype)


class SubimagesFunction(torch.autograd.Function):
    """spectral_subimages, differentiable w.r.t. x (a symmetric projection: its own transpose)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, windows, all_prefixes: bool) -> torch.Tensor:
        ctx.windows, ctx.all_prefixes, ctx.x_shape = windows, all_prefixes, x.shape
        return spectral_subimages_fwd(x, windows, all_prefixes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if dct_triton.fused_config(grad.shape[-1]) is None:  # the forward used the reference: so does this
            with torch.enable_grad():
                x0 = torch.zeros(ctx.x_shape, dtype=torch.float32, device=grad.device, requires_grad=True)
                y0 = ref.spectral_subimages(x0, ctx.windows, ctx.all_prefixes)
                (gx,) = torch.autograd.grad(y0, x0, grad.float())  # the op is linear: any point will do
            return gx.to(grad.dtype), None, None
        if ctx.all_prefixes:
            return _all_prefixes_bwd(grad, ctx.windows), None, None
        return spectral_subimages_fwd(grad.contiguous(), ctx.windows, False), None, None


def aot_specs() -> list[AOTSpec]:
    """The launches above: fused `_dct2d_fwd_kernel` configurations with (x, y) dtypes (input, fp32
    scratch) and (fp32 scratch, input) for every S <= 256 (the same configs the DCT lists)."""
    specs = []
    for spec in dct_triton.aot_specs():
        x_sig, y_sig = spec.signature["x_ptr"], spec.signature["y_ptr"]
        if spec.constexprs.get("FUSE_L") and (x_sig != y_sig or x_sig == "*fp32"):
            specs.append(dataclasses.replace(spec, label=spec.label.replace("dct2d fused", "subimages")))
    return specs
