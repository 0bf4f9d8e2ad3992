"""Reference orthonormal 2-D DCT-II / DCT-III (inverse) in plain PyTorch.

    X[u, v] = sum_{i, j} D_H[u, i] x[i, j] D_W[v, j],   i.e.  X = D_H @ x @ D_W^T
    D_N[k, n] = c_k cos(pi (2n + 1) k / (2N)),  c_0 = sqrt(1/N), c_k = sqrt(2/N)  (orthonormal)

The inverse is x = D_H^T @ X @ D_W. This matches `scipy.fft.dctn(x, type=2, norm="ortho",
axes=(-2, -1))` / `idctn`. This module is the CPU path, the test oracle (`upcast=True`: float64) and the
benchmark baseline (`upcast=False`: computed in the input dtype). Three formulations, chosen by plane size
(thresholds measured on CPU, see FFT_MIN_SIZE and KRON_MAX_PIXELS):
  - kron (tiny planes): one matmul of the flattened planes [P, H W] with kron(D_H, D_W)^T [H W, H W]:
    more flops than two passes, but one large GEMM instead of two small batched ones;
  - matmul (medium): `D_H @ (x @ D_W^T)`, the bases cached per (size, dtype, device);
  - FFT (large): Makhoul's 2-D algorithm, one 2-D real FFT per plane. Reorder v[m1, m2] = x[p(m1), p(m2)]
    with p = (0, 2, 4, ..., 5, 3, 1) along each axis, V = rfft2(v) [H, W/2 + 1]; with the per-axis
    twiddles t_N[k] = s_N[k] exp(-i pi k / 2N) (s_N the orthonormal scales above) folded into two tables
        A[k1, k2] = t_H[k1] t_W[k2] / 2,   B[k1, k2] = conj(t_H[k1]) t_W[k2] / 2,
        C[k1, k2] = A V[k1, k2] + B V[-k1 mod H, k2],
    X[k1, k2] = Re C[k1, k2] for k2 <= W/2 and X[k1, W - k2] = -Im C[k1, k2] for the rest. The inverse
    runs the steps backwards: Z = X[k1, k2] - X[-k1, -k2] - i (X[k1, -k2] + X[-k1, k2]) (X at index N
    is 0), V = Z / (t_H t_W), v = irfft2(V), undo the reorder.
  The FFT form has no half-precision CPU kernels: fp16/bf16 planes take the fp32 FFT and round once.

Reference: J. Makhoul, "A fast cosine transform in one and two dimensions", IEEE TASSP 28(1), 1980.
"""

from __future__ import annotations

import functools
import math

import torch

# Measured on a 2-core shared Xeon (AVX-512, torch 2.13 CPU with MKL), fp32, 1 thread, batches of ~0.8 M
# pixels, minimum of interleaved repeats in one process (the machine was busy: numbers moved up to 2x
# between runs). Matmul form: 4 (H + W) flop/pixel at ~190 GFLOP/s (MKL peak), 2.1-2.5 ms at 128 px,
# 3.1-4.0 ms at 192, 4.3-5.0 ms at 256; FFT form: ~10 passes over the data plus rfft2, 3.3-4 ms at 192-256
# on a quiet machine. They cross near 192 px. One kron GEMM beats the two-pass matmul at 8 x 8 (0.6 vs
# 1.3 ms: one large GEMM instead of a batched one) and ties at 10 x 10; at 16 x 16 it loses (2.2 vs 0.8).
# bench/bench_dct.py (test_dct2d_cpu_sweep) re-measures our path against scipy.fft per size.
FFT_MIN_SIZE = 192  # max(H, W) >= this: FFT form
KRON_MAX_PIXELS = 100  # H * W <= this (and below FFT_MIN_SIZE): one matmul with kron(D_H, D_W)


@functools.lru_cache(maxsize=64)
def dct_basis(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix D [n, n] (row k = frequency k), computed in float64 then cast.

    Cached per (n, dtype, device): callers must not modify it in place.
    """
    k = torch.arange(n, dtype=torch.int64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    # Reduce the angle's integer part mod 4N (one period) first: cos of a small argument is exact
    # to float64 rounding, cos of pi * 2N^2 / 2N is not (1e-14 at N=33).
    phase = ((2 * i + 1) * k) % (4 * n)
    basis = torch.cos(math.pi * phase.to(torch.float64) / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = math.sqrt(1.0 / n)
    return basis.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _kron_basis(h: int, w: int, dtype: torch.dtype, device: torch.device, inverse: bool) -> torch.Tensor:
    """M [H W, H W] with y.flatten() = x.flatten() @ M per plane: kron(D_H, D_W)^T, or kron(D_H, D_W) inverse."""
    k = torch.kron(dct_basis(h, torch.float64), dct_basis(w, torch.float64))
    return (k if inverse else k.T).to(dtype=dtype, device=device).contiguous()


def _scale(n: int) -> torch.Tensor:
    s = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    s[0] = math.sqrt(1.0 / n)
    return s


def _reorder(n: int) -> torch.Tensor:
    """p = (0, 2, 4, ..., 5, 3, 1): even indices up, odd indices down."""
    return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])


@functools.lru_cache(maxsize=32)
def _fft_tables(h: int, w: int, dtype: torch.dtype, device: torch.device, inverse: bool):
    """Twiddle tables A, B [H, W/2 + 1] (complex), row index maps, for the FFT form (see module docstring)."""
    m = w // 2 + 1
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    k1 = torch.arange(h, dtype=torch.float64).unsqueeze(1)
    k2 = torch.arange(m, dtype=torch.float64)
    if not inverse:
        a_h = torch.polar(_scale(h).unsqueeze(1) / 2, -math.pi * k1 / (2 * h))
        a_w = torch.polar(_scale(w)[:m], -math.pi * k2 / (2 * w))
        a, b = a_h * a_w, a_h.conj() * a_w
    else:  # Z -> V: 1 / (scale * twiddle) per axis; B carries the -i and is 0 in row 0 (X at index H is 0)
        a = torch.polar(1 / _scale(h).unsqueeze(1), math.pi * k1 / (2 * h)) * torch.polar(
            1 / _scale(w)[:m], math.pi * k2 / (2 * w)
        )
        b = -1j * a
        b[0] = 0
    rows = _reorder(h)
    flip = (-torch.arange(h)) % h  # row -k1 mod H
    if inverse:
        rows = torch.argsort(rows)
    put = dict(device=device)
    return a.to(cdt).to(**put), b.to(cdt).to(**put), rows.to(**put), flip.to(**put)


def _fft_form(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    m = w // 2 + 1
    a, b, rows, flip = _fft_tables(h, w, x.dtype, x.device, inverse)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    half = (w + 1) // 2
    if not inverse:
        xr = x.index_select(-2, rows)
        # Columns: even ones, then odd ones descending = every other column of the flipped rows (a
        # contiguous flip and stride-2 reads are cheaper than flipping the stride-2 odd columns).
        v = torch.cat([xr[..., 0::2], xr.flip(-1)[..., w % 2 :: 2]], dim=-1)  # the reordered planes
        spec = torch.fft.rfft2(v)  # [..., H, W/2 + 1]
        spec_neg = spec.index_select(-2, flip)  # V[-k1 mod H, k2]
        c = spec.mul_(a).addcmul_(spec_neg, b)
        out[..., :m] = c.real
        if w > m:
            out[..., m:] = c.conj().imag[..., 1 : w - m + 1].flip(-1)  # -Im C, columns W - k2
        return out
    # Inverse: Z[k1, k2] = X[k1, k2] - i X[k1, -k2] (half spectrum along W), then rows k1 and -k1.
    x_neg = torch.zeros(x.shape[:-1] + (m,), dtype=x.dtype, device=x.device)  # X[k1, W - k2], 0 at k2 = 0
    if m > 1:
        x_neg[..., 1:] = x[..., w - m + 1 :].flip(-1)
    z = torch.complex(x[..., :m], -x_neg)
    spec = z * a
    spec = spec.addcmul_(z.index_select(-2, flip), b)
    v = torch.fft.irfft2(spec, s=(h, w)).index_select(-2, rows)
    out[..., 0::2] = v[..., :half]
    out[..., 1::2] = v[..., half:].flip(-1)
    return out


def _transform(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    if max(h, w) >= FFT_MIN_SIZE:
        # torch.fft has no CPU half kernels: low precision takes the fp32 FFT and rounds once.
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return _fft_form(xf, inverse).to(x.dtype)
    if h * w <= KRON_MAX_PIXELS:
        k = _kron_basis(h, w, x.dtype, x.device, inverse)
        return (x.reshape(-1, h * w) @ k).reshape(x.shape)
    d_h = dct_basis(h, x.dtype, x.device)
    d_w = dct_basis(w, x.dtype, x.device)
    if inverse:
        return d_h.transpose(0, 1) @ (x @ d_w)
    return d_h @ (x @ d_w.transpose(0, 1))


def _blockwise(x: torch.Tensor, block: int, inverse: bool) -> torch.Tensor:
    d = dct_basis(block, x.dtype, x.device)
    if inverse:
        d = d.transpose(0, 1)
    *lead, h, w = x.shape
    tiles = x.reshape(*lead, h // block, block, w // block, block).transpose(-3, -2)  # [..., H/b, W/b, b, b]
    out = d @ tiles @ d.transpose(0, 1)
    return out.transpose(-3, -2).reshape(*lead, h, w)


def _run(x: torch.Tensor, block: int | None, inverse: bool, upcast: bool) -> torch.Tensor:
    if upcast:
        x = x.to(torch.float64)
    if block is not None:
        return _blockwise(x, block, inverse)
    return _transform(x, inverse)


def dct2d(x: torch.Tensor, block: int | None = None, upcast: bool = False) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims of `x [..., H, W]` (no argument checks).

    block: JPEG-style independent b x b blocks (H and W divisible by b).
    upcast: compute and return float64 (the test oracle); otherwise compute in `x.dtype`.
    """
    return _run(x, block, inverse=False, upcast=upcast)


def idct2d(x: torch.Tensor, block: int | None = None, upcast: bool = False) -> torch.Tensor:
    """Inverse of `dct2d` (orthonormal 2-D DCT-III); same arguments."""
    return _run(x, block, inverse=True, upcast=upcast)
