"""Reference orthonormal 2-D DCT-II / DCT-III (inverse) in plain PyTorch.

    X[u, v] = sum_{i, j} D_H[u, i] x[i, j] D_W[v, j],   i.e.  X = D_H @ x @ D_W^T
    D_N[k, n] = c_k cos(pi (2n + 1) k / (2N)),  c_0 = sqrt(1/N), c_k = sqrt(2/N)  (orthonormal)

The inverse is x = D_H^T @ X @ D_W. This matches `scipy.fft.dctn(x, type=2, norm="ortho",
axes=(-2, -1))` / `idctn`. This module is the CPU path, the test oracle (`upcast=True`: float64) and the
benchmark baseline (`upcast=False`: computed in the input dtype). Three formulations, chosen per call by
`plane_form(device type, H, W, dtype)`: on a GPU (any device but the CPU) always the matmul form, two GEMMs
(cuBLAS; fp16/bf16 stay in their dtype with fp32 accumulation, see `compute_dtype`), several times faster
there than the FFT form's ~10 data-moving kernels; on the CPU by plane size (thresholds measured on a 2-core
CPU, see FFT_MIN_SIZE, IFFT_MIN_SIZE and KRON_MAX_PIXELS):
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

scipy's other DCT types and normalisations (`axis_factors`): every (type, norm, orthogonalize) transform of
length n, and its inverse, is post * core(pre * x) with per-index factors pre, post and core one of the
orthonormal DCT-II ("dct2"), its inverse ("dct3"), or scipy's unnormalised DCT-I / DCT-IV ("t1", "t4"),
which run here only, as FFTs of length 2(n - 1) / 2n (`dct1_fft`, `dct4_fft`).

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
NORMS = ("backward", "ortho", "forward")  # scipy's; None means "backward"
TYPES = (1, 2, 3, 4)


def _unit_scales(n: int) -> torch.Tensor:
    """c_k of the orthonormal DCT-II (module docstring), float64 [n]."""
    s = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    s[0] = math.sqrt(1.0 / n)
    return s


@functools.lru_cache(maxsize=256)
def axis_factors(t: int, n: int, norm: str, orthogonalize: bool, inverse: bool):
    """scipy's DCT of type t and length n (or its inverse, `idct` with the same arguments) as
    y = post * core(pre * x): (core, pre, post), pre / post float64 [n] or None.

    core: "dct2" (the orthonormal DCT-II D), "dct3" (D^T, its inverse), "t1" / "t4" (scipy's unnormalised DCT-I /
    DCT-IV, `dct1_fft` / `dct4_fft`). With g = 1, 1/sqrt(f), 1/f for norm "backward", "ortho", "forward" and
    f = 2(n - 1) (type 1) or 2n, scipy's transform is g T_t without orthogonalisation and g sqrt(f) O_t with it,
    T_t its unnormalised matrix and O_t the orthonormal one. T_2 = diag(a) D and T_3 = D^T diag(b) with
    a = (2 sqrt(n), sqrt(2n), ...) and b = (sqrt(n), sqrt(2n), ...); T_1 = diag(1 / e) O_1 diag(w / e) sqrt((n - 1) / 2)
    with e = 1/sqrt(2) at both ends and 1 inside, w = 1 at both ends and 2 inside; T_4 = sqrt(2n) O_4; O_1, O_4
    are symmetric and orthogonal, T_1^-1 = T_1 / f, T_4^-1 = T_4 / f. Cached: callers must not modify the factors.
    """
    f = 2.0 * (n - 1) if t == 1 else 2.0 * n
    g = {"backward": 1.0, "ortho": 1.0 / math.sqrt(f), "forward": 1.0 / f}[norm]
    ones = torch.ones(n, dtype=torch.float64)
    if t == 4:  # orthogonalisation changes nothing: sqrt(f) O_4 = T_4
        return "t4", None, ones * (1.0 / (g * f) if inverse else g)
    if t == 1:
        ends = torch.ones(n, dtype=torch.float64)
        ends[[0, -1]] = math.sqrt(2.0)
        inner_w = torch.full((n,), 2.0, dtype=torch.float64)
        inner_w[[0, -1]] = math.sqrt(2.0)  # w / e
        a1, b1 = ends * math.sqrt((n - 1) / 2.0), inner_w  # T_1 = diag(a1) O_1 diag(b1)
        if not orthogonalize:  # g T_1, inverse T_1 / (g f)
            return "t1", None, ones * (1.0 / (g * f) if inverse else g)
        # g sqrt(f) O_1 = g sqrt(f) diag(1 / a1) T_1 diag(1 / b1); its inverse O_1 / (g sqrt(f)) likewise
        scale = 1.0 / (g * math.sqrt(f)) if inverse else g * math.sqrt(f)
        return "t1", 1.0 / b1, scale / a1
    if orthogonalize:
        scale = 1.0 / (g * math.sqrt(f)) if inverse else g * math.sqrt(f)
        core = ("dct3" if t == 2 else "dct2") if inverse else ("dct2" if t == 2 else "dct3")
        return core, None, None if scale == 1.0 else ones * scale
    c = _unit_scales(n)
    if t == 2:
        a = 2.0 / c  # (2 sqrt(n), sqrt(2n), ...)
        return ("dct3", 1.0 / (g * a), None) if inverse else ("dct2", None, g * a)
    b = torch.where(torch.arange(n) == 0, 1.0 / c, 2.0 / c)  # w'_n / c_n: (sqrt(n), sqrt(2n), ...)
    return ("dct2", None, 1.0 / (g * b)) if inverse else ("dct3", g * b, None)


def transform_matrix(t: int, n: int, norm: str, orthogonalize: bool, inverse: bool) -> torch.Tensor:
    """scipy's DCT of type t and length n (or its inverse) as a float64 matrix F [n, n], y = F @ x."""
    core, pre, post = axis_factors(t, n, norm, orthogonalize, inverse)
    if core in ("dct2", "dct3"):
        d = dct_basis(n, torch.float64)
        m = d if core == "dct2" else d.T
    else:  # the unnormalised DCT-I / DCT-IV of the unit vectors: row j of the result is T e_j, so transpose
        m = (dct1_fft if core == "t1" else dct4_fft)(torch.eye(n, dtype=torch.float64)).T
    m = m * pre if pre is not None else m  # columns: F = diag(post) M diag(pre)
    return (post[:, None] * m if post is not None else m).contiguous()


def dct1_fft(x: torch.Tensor) -> torch.Tensor:
    """scipy's unnormalised DCT-I along the last dim (n >= 2): y[k] = x[0] + (-1)^k x[n-1] + 2 sum_{0<m<n-1} x[m]
    cos(pi k m / (n - 1)), the real part of the FFT of the even extension [x, x[n-2:0:-1]]. fp32/float64."""
    ext = torch.cat([x, x[..., 1:-1].flip(-1)], dim=-1)
    return torch.fft.rfft(ext, dim=-1).real


def dct4_fft(x: torch.Tensor) -> torch.Tensor:
    """scipy's unnormalised DCT-IV along the last dim: y[k] = 2 sum_m x[m] cos(pi (2k + 1)(2m + 1) / 4n), as
    2 Re(exp(-i pi (2k + 1) / 4n) FFT_2n(x[m] exp(-i pi m / 2n))[k]) (the phase split in k and m). fp32/float64."""
    n = x.shape[-1]
    cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    idx = torch.arange(n, device=x.device, dtype=x.dtype)
    pre = torch.polar(torch.ones_like(idx), -math.pi * idx / (2 * n)).to(cdt)
    post = torch.polar(torch.ones_like(idx), -math.pi * (2 * idx + 1) / (4 * n)).to(cdt)
    return 2 * (torch.fft.fft(x * pre, n=2 * n, dim=-1)[..., :n] * post).real


@functools.lru_cache(maxsize=32)
def _kron_basis(h: int, w: int, dtype: torch.dtype, device: torch.device, inverse: bool) -> torch.Tensor:
    """M [H W, H W] with y.flatten() = x.flatten() @ M per plane: kron(D_H, D_W)^T, or kron(D_H, D_W) inverse."""
    k = torch.kron(dct_basis(h, torch.float64), dct_basis(w, torch.float64))
    return (k if inverse else k.T).to(dtype=dtype, device=device).contiguous()


def _reorder(n: int) -> torch.Tensor:
    """p = (0, 2, 4, ..., 5, 3, 1): even indices up, odd indices down."""
    return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])


def _mix_tables(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward tables A, B [H, W/2 + 1] (complex128) and the row map k1 -> -k1 mod H (module docstring)."""
    m = w // 2 + 1
    k = torch.arange(max(h, w), dtype=torch.float64)
    t_h = torch.polar(_unit_scales(h), -math.pi * k[:h] / (2 * h)).unsqueeze(1)  # t_N[k] = s_N[k] exp(-i pi k / 2N)
    t_w = torch.polar(_unit_scales(w)[:m], -math.pi * k[:m] / (2 * w))
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


def _rfft2(v: torch.Tensor) -> torch.Tensor:
    """rfft2 over the last two dims; planes of height 1 (the 1-D transforms) as the 1-D rfft (~20% faster)."""
    return torch.fft.rfft(v) if v.shape[-2] == 1 else torch.fft.rfft2(v)


def _fft_planes(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    m = w // 2 + 1
    a, b, flip, g_in, g_mid, g_out = _fft_tables(h, w, x.dtype, x.device, inverse)
    x2 = x.reshape(-1, h * w)  # [P, H W]
    if not inverse:
        v = _gather(x2, g_in).view(-1, h, w)  # the reordered planes
        spec = _rfft2(v)  # [P, H, W/2 + 1], rows in natural order
        c = _rows(spec, flip).mul_(b).addcmul_(spec, a)  # conj(C)
        return _gather(torch.view_as_real(c).view(-1, h * 2 * m), g_out).view(x.shape)
    c = torch.view_as_complex(_gather(x2, g_in).view(-1, h, m, 2))  # C'' [P, H, W/2 + 1], rows paired
    g = _paired_mix(c, a, b)  # G = (1 + i) conj(V)
    u = _gather(torch.view_as_real(g).view(-1, h * 2 * m), g_mid).view(-1, h, w)  # u' = u[-k1, -k2]
    z = _rfft2(u).mul_(1 + 1j)
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


def plane_form(device_type: str, h: int, w: int, dtype: torch.dtype, inverse: bool = False) -> str:
    """The formulation the reference uses for [h, w] planes: "kron", "matmul" or "fft" (module docstring).

    On the CPU by size (the thresholds were measured there, for every dtype: fp16/bf16 take the fp32 FFT);
    elsewhere the matmul form, whatever the size and dtype: on a GPU two GEMMs beat the FFT form's data moves.
    """
    if device_type != "cpu":
        return "matmul"
    if max(h, w) >= (IFFT_MIN_SIZE if inverse else FFT_MIN_SIZE):
        return "fft"
    return "kron" if h * w <= KRON_MAX_PIXELS else "matmul"


def compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the public functions run the reference in for inputs of `dtype`: float64 as is; fp16/bf16 in
    fp32 on the CPU (no fast half GEMM or FFT there; one rounding at the end) and in their own dtype elsewhere
    (cuBLAS accumulates them in fp32, the intermediate is rounded once, as in the kernels)."""
    if dtype in (torch.float32, torch.float64) or device_type != "cpu":
        return dtype
    return torch.float32


def _transform(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    form = plane_form(x.device.type, h, w, x.dtype, inverse)
    if form == "fft":
        # torch.fft has no CPU half kernels: low precision takes the fp32 FFT and rounds once.
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return _fft_form(xf, inverse).to(x.dtype)
    if form == "kron":
        k = _kron_basis(h, w, x.dtype, x.device, inverse)
        return (x.reshape(-1, h * w) @ k).reshape(x.shape)
    d_w = dct_basis(w, x.dtype, x.device)
    y = x @ (d_w if inverse else d_w.transpose(0, 1))
    if h == 1:  # 1-D transforms run as planes of height 1: the length-1 DCT is the identity
        return y
    d_h = dct_basis(h, x.dtype, x.device)
    return (d_h.transpose(0, 1) if inverse else d_h) @ y


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
