"""Reference orthonormal 2-D DCT-II / DCT-III (inverse) in plain PyTorch.

    X[u, v] = sum_{i, j} D_H[u, i] x[i, j] D_W[v, j],   i.e.  X = D_H @ x @ D_W^T
    D_N[k, n] = c_k cos(pi (2n + 1) k / (2N)),  c_0 = sqrt(1/N), c_k = sqrt(2/N)  (orthonormal)

The inverse is x = D_H^T @ X @ D_W. This matches `scipy.fft.dctn(x, type=2, norm="ortho",
axes=(-2, -1))` / `idctn`. This module is the CPU path, the test oracle (`upcast=True`: float64) and the
benchmark baseline (`upcast=False`: computed in the input dtype). Three formulations, chosen by plane size
(thresholds measured on CPU, see FFT_MIN_SIZE, IFFT_MIN_SIZE and KRON_MAX_PIXELS):
  - kron (tiny planes): one matmul of the flattened planes [P, H W] with kron(D_H, D_W)^T [H W, H W]:
    more flops than two passes, but one large GEMM instead of two small batched ones;
  - matmul (medium): `D_H @ (x @ D_W^T)`, the bases cached per (size, dtype, device);
  - FFT (large): Makhoul's 2-D algorithm, one 2-D real FFT per plane. Reorder v[m1, m2] = x[p(m1), p(m2)]
    with p = (0, 2, 4, ..., 5, 3, 1) along each axis, V = rfft2(v) [H, W/2 + 1]; with the per-axis
    twiddles t_N[k] = s_N[k] exp(-i pi k / 2N) (s_N the orthonormal scales above) folded into two tables
        A[k1, k2] = t_H[k1] t_W[k2] / 2,   B[k1, k2] = conj(t_H[k1]) t_W[k2] / 2,
        C[k1, k2] = A V[k1, k2] + B V[-k1 mod H, k2],
    X[k1, k2] = Re C[k1, k2] for k2 <= W/2 and X[k1, W - k2] = -Im C[k1, k2] for the rest. Reordering
    with p(-m) instead gives conj(V), hence conj(C), whose parts are X with no sign: the output is then one
    pure gather of the interleaved (Re, Im) planes, and the whole form is 2 gathers, a row flip, 2 complex
    multiply-adds and the FFT (the cost is in the gathers; MKL's rfft2 is ~1/4 of scipy's whole dctn).
    The inverse solves the 2 x 2 system (C[k1], C[-k1]) -> (V[k1], V[-k1]), and would then need irfft2,
    which costs 2x rfft2 in torch (a c2c, a copy and a c2r); instead it uses the Hartley identity
    irfft2(V) = Re R + Im R with R = rfft2(Re V + Im V) over the whole (Hermitian) spectrum, laid out with
    gathers (see _fft_tables): 3 gathers, 3 complex multiply-adds and the FFT. Gradients: the transforms are
    orthogonal, so the FFT form's backward is the other transform (`_FFTForm`).
  The FFT form has no half-precision CPU kernels: fp16/bf16 planes take the fp32 FFT and round once.

Reference: J. Makhoul, "A fast cosine transform in one and two dimensions", IEEE TASSP 28(1), 1980.
"""

from __future__ import annotations

import functools
import math

import torch

# Measured on a 2-core shared Xeon (AVX-512, torch 2.13 CPU with MKL), fp32, batches of ~0.8 M pixels, minimum
# of interleaved repeats in one process (the machine was shared: numbers moved up to 1.5x between runs).
# Matmul form: 4 (H + W) flop/pixel at ~190 GFLOP/s (MKL peak), 2.6-2.8 ms at 128 px, 3.0-3.3 at 160, 3.8-4.4
# at 192 (1 thread); FFT form (1 thread) 2.4-3.0 ms forward and 3.0-4.0 ms inverse at 160-256 px, and worse
# than matmul below 128 (4-5 ms at 96: the per-row work of the gathers). The forward crosses near 128-160 px
# (1 thread: FFT 2.5 vs matmul 3.1 ms at 160; 2 threads: a tie), the inverse near 192 (160 px: FFT 3.1-3.3
# vs 3.2 ms on 1 thread, 2.3 vs 1.6-1.9 ms on 2). One kron GEMM beats the two-pass matmul at 8 x 8 (0.6 vs
# 1.3 ms: one large GEMM instead of a batched one) and ties at 10 x 10; at 16 x 16 it loses (2.2 vs 0.8).
# bench/bench_dct.py (test_dct2d_cpu_sweep) re-measures our path against scipy.fft per size.
FFT_MIN_SIZE = 160  # max(H, W) >= this: FFT form (dct2d)
IFFT_MIN_SIZE = 192  # the same for idct2d
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


BLOCKWISE_MAX = 32  # larger blocks are gathered into planes and run the whole-plane kernel
NORMS = ("ortho", "backward", "forward")


def norm_scale(n: int, norm: str) -> torch.Tensor:
    """Factors [n] (float64) turning the orthonormal DCT-II of length n into scipy's `norm` (type 2).

    scipy's "backward" DCT-II is y[k] = 2 sum_i x[i] cos(pi k (2i + 1) / 2n), with no orthogonalisation of
    the DC term, i.e. the orthonormal y[k] times 2 sqrt(n) (k = 0) or sqrt(2n) (k > 0); "forward" divides
    that by 2n. The matching inverses divide the coefficients by the same factors before the orthonormal
    inverse (every norm is a per-frequency scaling of the orthonormal pair).
    """
    s = torch.ones(n, dtype=torch.float64)
    if norm == "ortho":
        return s
    s *= math.sqrt(2.0 * n)
    s[0] = 2.0 * math.sqrt(n)
    return s if norm == "backward" else s / (2 * n)


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


def _mix_tables(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward tables A, B [H, W/2 + 1] (complex128) and the row map k1 -> -k1 mod H (module docstring)."""
    m = w // 2 + 1
    k = torch.arange(max(h, w), dtype=torch.float64)
    t_h = torch.polar(_scale(h), -math.pi * k[:h] / (2 * h)).unsqueeze(1)  # t_N[k] = s_N[k] exp(-i pi k / 2N)
    t_w = torch.polar(_scale(w)[:m], -math.pi * k[:m] / (2 * w))
    # conj: the input is reordered with p(-m), whose spectrum is conj(V); the products are conj(C)
    return (t_h * t_w).conj() / 2, (t_h.conj() * t_w).conj() / 2, (-torch.arange(h)) % h


def _paired_rows(h: int) -> torch.Tensor:
    """Row order [0, 1 .. q, (H/2), H - 1 .. H - q], q = (H - 1) // 2: row k1 of the top block [1, 1 + q) and
    row -k1 of the bottom block [H - q, H) sit at the same offset, so the inverse's (k1, -k1) mix is two
    elementwise ops between slices, with no flipped copy (it is filled by a gather anyway)."""
    q = (h - 1) // 2
    return torch.cat([torch.arange(q + 1), torch.arange(h // 2, h // 2 + 1 - h % 2), h - torch.arange(1, q + 1)])


@functools.lru_cache(maxsize=32)
def _fft_tables(h: int, w: int, dtype: torch.dtype, device: torch.device, inverse: bool):
    """Tables of the FFT form: A, B [H, W/2 + 1] complex (inverse: rows in `_paired_rows` order), the row flip
    k1 -> -k1 mod H (forward), and flat gathers within a plane (`dst.flatten() = src.flatten()[idx]`): input,
    middle (inverse only) and output.
    """
    m = w // 2 + 1
    a, b, flip = _mix_tables(h, w)
    order = _paired_rows(h) if inverse else torch.arange(h)
    pos = torch.argsort(order)  # row k1 sits at pos[k1]
    rows, cols = (_reorder(n)[(-torch.arange(n)) % n] for n in (h, w))  # v[m1, m2] = x[p(-m1), p(-m2)]
    k1, k2 = torch.arange(h).unsqueeze(1), torch.arange(m)
    if not inverse:
        j = torch.arange(w)
        half = torch.where(j < m, 2 * j, 2 * (w - j) + 1)  # X[k1, k2] = Re C, X[k1, W - k2] = Im C
        g_in, g_mid, g_out = rows.unsqueeze(1) * w + cols, None, k1 * 2 * m + half
    else:
        # (C[k1], C[-k1]) = [[A, B], [B(-k1), A(-k1)]] (V[k1], V[-k1]): invert the 2 x 2 (1 x 1 for k1 = -k1),
        # and irfft2's 1 / (H W).
        det = a * a[flip] - b * b[flip]
        a_i, b_i = a[flip] / det, -b / det
        own = flip == torch.arange(h)
        a_i[own], b_i[own] = 1 / (a[own] + b[own]), 0
        # c2r as r2c (Hartley): irfft2(V) = Re R + Im R with R = rfft2(u), u = Re V + Im V over the whole
        # spectrum (u[k1, W - k2] = Re V - Im V at (-k1, k2)). So G = (1 + i) conj(V) holds u in its real
        # (k2 <= W/2) and imaginary (k1 -> -k1, k2 -> W - k2) parts, and conj(C) is read directly as
        # C'' = X[k1, W - k2] + i X[k1, k2] = i conj(C), or (1 + i) X[k1, 0] in column 0 where Im C = 0.
        kappa = torch.full((m,), -1j, dtype=torch.complex128)
        kappa[0] = 1 / (1 + 1j)
        a, b = ((1 + 1j) * t.conj() * kappa / (h * w) for t in (a_i, b_i))
        g_in = order.unsqueeze(1) * w + torch.stack([(w - k2) % w, k2], -1).reshape(-1)
        # u'[j] = u[-j] (both axes), so rfft2(u') = conj(R) and z = (1 + i) conj(R) holds Re R + Im R in its
        # real part and Re R - Im R (the output at (-m1, W - m2)) in its imaginary part.
        n1, n2 = (-k1) % h, (-torch.arange(w)) % w
        g_mid = torch.where(n2 <= w // 2, (pos[n1] * m + n2) * 2, (pos[(-n1) % h] * m + (w - n2) % w) * 2 + 1)
        m1, m2 = torch.argsort(rows).unsqueeze(1), torch.argsort(cols)  # x[i, j] = y[m1[i], m2[j]]
        g_out = torch.where(m2 <= w // 2, (m1 * m + m2) * 2, (((-m1) % h) * m + (w - m2) % w) * 2 + 1)
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    put = dict(device=device)
    g_in, g_mid, g_out = (None if g is None else g.reshape(-1).to(**put) for g in (g_in, g_mid, g_out))
    return a[order].to(cdt).to(**put), b[order].to(cdt).to(**put), flip.to(**put), g_in, g_mid, g_out


def _gather(x2: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x2[:, idx] for x2 [P, n]: index_select is the faster loop on 1 thread (0.45 vs 0.65 ms at 12 x 256^2) but
    runs on one thread only; gather with a broadcast index runs in parallel (2 threads: 0.42 vs 0.47 ms)."""
    if torch.get_num_threads() == 1:
        return x2.index_select(1, idx)
    return torch.gather(x2, 1, idx.expand(x2.shape[0], -1))


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x[:, rows] for x [P, H, n]: as whole-row copies along dim 0, which run in parallel (index_select along
    dim 1 does not: 0.17 vs 0.27 ms on 2 threads at 12 x 256 x 129 complex)."""
    p, h, n = x.shape
    idx = (torch.arange(0, p * h, h, device=x.device).unsqueeze(1) + rows).reshape(-1)
    return x.reshape(p * h, n).index_select(0, idx).view(p, -1, n)


def _paired_mix(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A c + B c[-k1] for c [P, H, W/2 + 1] in `_paired_rows` order (B is 0 on the rows k1 = -k1)."""
    q = (c.shape[1] - 1) // 2
    top, bottom = slice(1, q + 1), slice(c.shape[1] - q, None)
    out = torch.mul(c, a)
    out[:, top].addcmul_(c[:, bottom], b[top])
    out[:, bottom].addcmul_(c[:, top], b[bottom])
    return out


def _fft_planes(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    m = w // 2 + 1
    a, b, flip, g_in, g_mid, g_out = _fft_tables(h, w, x.dtype, x.device, inverse)
    x2 = x.reshape(-1, h * w)  # [P, H W]
    if not inverse:
        v = _gather(x2, g_in).view(-1, h, w)  # the reordered planes
        spec = torch.fft.rfft2(v)  # [P, H, W/2 + 1], rows in natural order
        c = _rows(spec, flip).mul_(b).addcmul_(spec, a)  # conj(C)
        return _gather(torch.view_as_real(c).view(-1, h * 2 * m), g_out).view(x.shape)
    c = torch.view_as_complex(_gather(x2, g_in).view(-1, h, m, 2))  # C'' [P, H, W/2 + 1], rows paired
    g = _paired_mix(c, a, b)  # G = (1 + i) conj(V)
    u = _gather(torch.view_as_real(g).view(-1, h * 2 * m), g_mid).view(-1, h, w)  # u' = u[-k1, -k2]
    z = torch.fft.rfft2(u).mul_(1 + 1j)
    return _gather(torch.view_as_real(z).view(-1, h * 2 * m), g_out).view(x.shape)


class _FFTForm(torch.autograd.Function):
    """The FFT form with its gradient: the transforms are orthogonal, so the gradient of each is the other
    applied to the upstream gradient (one transform, instead of scatter-adds back through the gathers)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        ctx.inverse = inverse
        return _fft_planes(x, inverse)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _FFTForm.apply(grad, not ctx.inverse), None


def _fft_form(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    return _FFTForm.apply(x, inverse)


def _transform(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    if max(h, w) >= (IFFT_MIN_SIZE if inverse else FFT_MIN_SIZE):
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
