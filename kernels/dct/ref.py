"""Reference orthonormal 2-D DCT-II / DCT-III (inverse) in plain PyTorch.

    X[u, v] = sum_{i, j} D_H[u, i] x[i, j] D_W[v, j],   i.e.  X = D_H @ x @ D_W^T
    D_N[k, n] = c_k cos(pi (2n + 1) k / (2N)),  c_0 = sqrt(1/N), c_k = sqrt(2/N)  (orthonormal)

The inverse is x = D_H^T @ X @ D_W. This matches `scipy.fft.dctn(x, type=2, norm="ortho",
axes=(-2, -1))` / `idctn`. Two formulations, chosen by plane size:
  - matmul: `D_H @ x @ D_W^T` with the basis cached per (size, dtype, device);
  - FFT: Makhoul's N-point reordering (one real FFT of length N per row, then a twiddle).
This module is the CPU fallback, the test oracle (`upcast=True`: float64) and the benchmark
baseline (`upcast=False`: computed in the input dtype).

Reference: J. Makhoul, "A fast cosine transform in one and two dimensions", IEEE TASSP 1980.
"""

from __future__ import annotations

import functools
import math

import torch

# Measured on this machine (2 shared cores, torch 2.13 CPU, fp32, torch.set_num_threads(1) because
# with 2 threads the shared cores add ~8 ms of thread hand-off per op; median of 7 runs):
#   N=128, 48 planes: matmul 12.8 ms, FFT 25.3 ms     N=256, 48 planes: matmul 92 ms, FFT 150 ms
#   N=384, 12 planes: matmul 97 ms,   FFT 77 ms       N=512, 12 planes: matmul 380 ms, FFT 206 ms
# (N=32: matmul 7x faster). The crossover lies between 256 and 384: FFT from max(H, W) >= 320 on.
FFT_MIN_SIZE = 320


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


def _dct1d_fft(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    """Orthonormal DCT-II (or its inverse, DCT-III) along `dim` via one real FFT of length N.

    Forward: v = [x_0, x_2, x_4, ..., x_5, x_3, x_1], V = rfft(v), Z_k = f_k V_k exp(-i pi k / 2N);
    then X_k = Re Z_k (k <= N/2) and X_{N-k} = -Im Z_k (f_0 = sqrt(1/N), f_k = sqrt(2/N)).
    Inverse: Z_k from (X_k, X_{N-k}) as above, v = irfft(Z_k / (f_k exp(-i pi k / 2N))), un-reorder.
    """
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    m = n // 2 + 1
    k = torch.arange(m, dtype=x.dtype, device=x.device)
    if not inverse:
        f = torch.full((m,), math.sqrt(2.0 / n), dtype=x.dtype, device=x.device)
        f[0] = math.sqrt(1.0 / n)
        v = torch.cat([x[..., 0::2], x[..., 1::2].flip(-1)], dim=-1)
        z = torch.fft.rfft(v, dim=-1) * torch.polar(f, -math.pi * k / (2 * n))
        out = torch.cat([z.real, z.imag[..., 1 : (n + 1) // 2].flip(-1).neg()], dim=-1)
        return out.movedim(-1, dim)
    g = torch.full((m,), math.sqrt(n / 2.0), dtype=x.dtype, device=x.device)
    g[0] = math.sqrt(n)
    x_rev = torch.cat([torch.zeros_like(x[..., :1]), x[..., 1:].flip(-1)[..., : m - 1]], dim=-1)  # X_{N-k}
    v = torch.fft.irfft(torch.complex(x[..., :m], -x_rev) * torch.polar(g, math.pi * k / (2 * n)), n=n, dim=-1)
    out = torch.empty_like(v)
    half = (n + 1) // 2
    out[..., 0::2] = v[..., :half]
    out[..., 1::2] = v[..., half:].flip(-1)
    return out.movedim(-1, dim)


def _transform(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    if max(h, w) >= FFT_MIN_SIZE:
        # torch.fft has no CPU half kernels: low precision takes the fp32 FFT and rounds once.
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return _dct1d_fft(_dct1d_fft(xf, -1, inverse), -2, inverse).to(x.dtype)
    d_h = dct_basis(h, x.dtype, x.device)
    d_w = dct_basis(w, x.dtype, x.device)
    if inverse:
        return d_h.transpose(0, 1) @ x @ d_w
    return d_h @ x @ d_w.transpose(0, 1)


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
