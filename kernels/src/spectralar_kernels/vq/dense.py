"""vq_nearest for small problems on CPU: every (row, code) pair's exact distance at once, in numpy.

The general reference (ref.py) ranks with an fp32 GEMM, a rigorous bound on its rounding and float64 distances
for the few candidates it leaves. For a small problem that machinery costs more than the pairs themselves (about
0.3 ms of fixed cost on a 2-core CPU), so when M x K x (d + 2) <= DENSE_ELEMS (2^18: a pair costs about 1.3 ns
per coordinate plus 2 ns to become a ranking key there) and M x K <= DENSE_PAIRS (2^16: the M x K arrays stay in
cache; beyond, each step costs several times more), `vq_nearest` computes every pair's distance here instead:
the same float64 operations in the same order as keys.exact_keys (coordinate after coordinate, separate multiply
and add), so the same ranking keys bit for bit, and the same results. Measured on that CPU: 1.1-4.7x faster than
the general path over the range (64 x 100 at d = 12: 0.21 ms instead of 0.35; cosine 0.25 instead of 0.57).
Temporaries: at most two float64 M x K arrays (512 KiB each at most); three while cosine handles a norm below 1e-12.
"""

from __future__ import annotations

import torch

from .keys import EPS, _np, decode, keys_numpy, unit_rows64

__all__ = ["DENSE_ELEMS", "DENSE_PAIRS", "fits", "vq_nearest_dense"]

DENSE_ELEMS = 1 << 18  # M x K x (d + 2) up to this (module docstring)
DENSE_PAIRS = 1 << 16  # and M x K up to this


def fits(z: torch.Tensor, codebook: torch.Tensor) -> bool:
    """Whether the [M, d] x [K, d] problem takes this path: on CPU, with numpy, and small (module docstring)."""
    (M, d), K = z.shape, codebook.shape[0]
    return z.device.type == "cpu" and _np is not None and M * K * (d + 2) <= DENSE_ELEMS and M * K <= DENSE_PAIRS


def vq_nearest_dense(
    z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", topk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ref.vq_nearest_ref's results (indices int64, fp32 distances; [M] or [M, k]) from every pair's exact distance.

    Arguments as vq_nearest_ref's (assumed valid); z and codebook on CPU, numpy installed (see `fits`).
    """
    k = topk or 1
    indices, distances = decode(smallest_keys(z, codebook, metric == "cosine", k))
    if topk is None:
        return indices.view(-1), distances.view(-1)
    return indices, distances


def smallest_keys(z: torch.Tensor, codebook: torch.Tensor, cosine: bool, k: int) -> torch.Tensor:
    """The k smallest ranking keys of every row, [M, k] ascending (ref.py: fp32 distance bits << 32 | index)."""
    a = z.double().numpy()  # [M, d]
    b = codebook.T.double().contiguous().numpy()  # [d, K]: one contiguous vector per coordinate
    d, K = b.shape
    with _np.errstate(all="ignore"):  # NaN, inf and overflow propagate as in torch
        if cosine:
            (ua, nz), (uc, nc) = unit_rows64(a), unit_rows64(b.T)
            dist = _squares(ua, _np.ascontiguousarray(uc.T))  # z / |z| - c / |c|, coordinate by coordinate
            dist *= 0.5
            if (nz < EPS).any() or (nc < EPS).any():  # a norm below EPS: 1 - z.c / (max(|z|, EPS) max(|c|, EPS))
                zc = a[:, 0, None] * b[0]  # clamped at 0, for the pairs where one is
                for j in range(1, d):
                    zc += a[:, j, None] * b[j]
                zc /= _np.maximum(nz, EPS)[:, None] * _np.maximum(nc, EPS)
                _np.subtract(1.0, zc, out=zc)
                _np.maximum(zc, 0.0, out=zc)
                _np.copyto(dist, zc, where=(nz < EPS)[:, None] | (nc < EPS))
                del zc
        else:
            dist = _squares(a, b)
        dist = dist.astype(_np.float32)  # from here each step in place or freeing the last: two M x K arrays at most
    bad = ~_np.isfinite(b).all(axis=0)  # codes holding inf or NaN rank after every finite code
    keys = keys_numpy(dist, _np.arange(K), bad if bad.any() else None)
    del dist
    if k == 1:
        return torch.from_numpy(keys.min(axis=1, keepdims=True))
    if k < K:  # keys of a row are distinct (the index is part of them): partition, then order the k smallest
        keys = _np.partition(keys, k - 1, axis=1)[:, :k]
    return torch.from_numpy(_np.sort(keys, axis=1))


def _squares(x, y):
    """The [n, m] matrix sum_j (x[:, j] - y[j])^2 for x [n, d], y [d, m]: coordinate after coordinate, each term
    squared by one multiply, as keys._coordinate_sum adds them (one reused temporary)."""
    out = _np.subtract(x[:, :1], y[0])
    out *= out
    t = _np.empty_like(out)
    for j in range(1, x.shape[1]):
        _np.subtract(x[:, j, None], y[j], out=t)
        t *= t
        out += t
    return out
