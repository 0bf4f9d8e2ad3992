"""Nearest-codebook lookup in plain PyTorch: the CPU path, the test oracle and the benchmark baseline.

For each row z_m of z [M, d] and codebook c [K, d]:
    l2:      index_m = argmin_k ||z_m - c_k||^2,            distance_m = ||z_m - c_idx||^2
    cosine:  index_m = argmin_k 1 - cos(z_m, c_k),          distance_m = 1 - z_m.c_idx / (|z_m| |c_idx|)
with |.| clamped below at EPS so zero vectors are safe (a zero vector has cos = 0 to everything).

Ranking. The argmin uses scores s_mk = a_k + (z_m - mu) . w_k that differ from the distance by a
per-row constant (which never changes the argmin), with codebook terms (`ranking_operands`) built in
float64 and centred on the codebook mean:
    l2:      mu = mean_k c_k (on a coarse grid: `centre`),  w_k = -2 (c_k - mu),  a_k = ||c_k - mu||^2
    cosine:  mu = 0,  w_k = -(u_k - mean_j u_j) with u_k = c_k / max(|c_k|, EPS),  a_k = 0
Why centre: the textbook form ||c||^2 - 2 z.c carries terms of size |offset|^2 whose fp32 rounding
swamps the gaps between codes once data sit far from the origin (an offset of 100 in d = 12 flips
about 1% of the indices of near-by codes). After centring every term is of the size of the spread of
the data, so fp32 resolves the gaps it would resolve at the origin. For l2 the shift mu is exactly
representable and shared by z and c, so z - mu only rounds at the scale of the spread. Cosine
drops the row term -z . mean_j u_j; building w_k in float64 keeps its rounding at the scale of
u_k - mean u instead of |u_k| = 1.

The reported distance is recomputed directly from the chosen code (no cancellation). Ties go to the
lowest index. A NaN score counts as -inf, so a NaN in a row of z or in any code is chosen and shows up
as a NaN distance instead of a silent finite one (the mean skips non-finite codes, so one NaN code does
not poison every score).

Memory: the M x K score matrix is never allocated; rows and codes are processed in chunks of at most
CHUNK_ELEMS scores, keeping a running (min, argmin) per row.
"""

from __future__ import annotations

import torch

EPS = 1e-12
CHUNK_ELEMS = 1 << 22  # scores alive at once (16 MiB in fp32)


def _finite_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of x [K, d] whose entries are all finite; zeros if there are none."""
    finite = torch.isfinite(x).all(dim=1, keepdim=True)
    total = torch.where(finite, x, torch.zeros_like(x)).sum(dim=0)
    return total / finite.sum().clamp_min(1).to(x.dtype)


def centre(codebook: torch.Tensor) -> torch.Tensor:
    """The l2 centring shift [d] (codebook dtype): the mean of the finite codes, rounded to a power-of-two grid.

    The grid is the largest power of two not above the codes' largest deviation from their mean, so the
    shift stays within the spread of the data (all centring needs) while keeping c - mu exact wherever
    the data are coarse (small integers stay integers: exact ties stay exact ties).
    """
    finite = torch.isfinite(codebook).all(dim=1, keepdim=True)
    mean = _finite_mean(codebook)
    spread = torch.where(finite, (codebook - mean).abs(), torch.zeros_like(codebook)).amax()
    grid = torch.exp2(torch.floor(torch.log2(spread)))
    return torch.where(spread > 0, torch.round(mean / grid) * grid, mean)


@torch.no_grad()
def ranking_operands(
    codebook: torch.Tensor, cosine: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codebook terms of the centred ranking score s_mk = a_k + (z_m - mu) . w_k (module docstring).

    Built in float64 and rounded once to `dtype`. Returns (w [K, d], a [K], mu [d]) in `dtype`;
    the Triton kernels cache and pad these.
    """
    c = codebook.to(torch.float64)
    if cosine:
        u = c / c.norm(dim=1, keepdim=True).clamp_min(EPS)
        w = _finite_mean(u) - u
        return w.to(dtype), torch.zeros(c.shape[0], dtype=dtype, device=c.device), w.new_zeros(c.shape[1]).to(dtype)
    mu = centre(c).to(dtype).to(torch.float64)  # a shift exactly representable in `dtype`
    centred = c - mu
    return (-2.0 * centred).to(dtype), centred.pow(2).sum(dim=1).to(dtype), mu.to(dtype)


def _direct_distance(z: torch.Tensor, c: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Distance between matching rows of z [m, d] and c [m, d] (already in the compute dtype)."""
    if cosine:
        nz = z.pow(2).sum(dim=1).sqrt().clamp_min(EPS)
        nc = c.pow(2).sum(dim=1).sqrt().clamp_min(EPS)
        dist = 1.0 - (z * c).sum(dim=1) / (nz * nc)
        # 1 - cos can round to -1e-7 for parallel vectors; `where` (not clamp) keeps NaN as NaN
        return torch.where(dist < 0, torch.zeros_like(dist), dist)
    return (z - c).pow(2).sum(dim=1)


@torch.no_grad()
def vq_nearest_ref(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    upcast: bool = False,
    chunk_elems: int = CHUNK_ELEMS,
    topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference nearest-code lookup (arguments are assumed valid: see `vq_nearest`).

    Args:
        z: [M, d] float tensor.
        codebook: [K, d] float tensor.
        metric: "l2" (squared Euclidean) or "cosine" (1 - cosine similarity).
        upcast: compute in float64 (oracle quality) instead of float32. Either way fp16/bf16
            inputs are upcast, since fp32 distance arithmetic is the op's contract.
        chunk_elems: most scores alive at once (row chunk x code chunk).
        topk: None for the nearest code ([M] outputs), or k <= K for the k nearest ([M, k], ascending
            score, ties by lowest index).
    Returns:
        indices int64 [M] (or [M, k]), distances of the same shape (float32, or float64 with `upcast`); no autograd.
    """
    cosine = metric == "cosine"
    dtype = torch.float64 if upcast else torch.float32
    M, d = z.shape
    K = codebook.shape[0]
    k = topk or 1
    w, a, mu = ranking_operands(codebook, cosine, dtype)
    # Chunk codes first so one row chunk sees as many codes as fit, then rows (top-k: + k carried columns).
    carried = k if k > 1 else 0
    code_chunk = max(1, min(K, chunk_elems - carried))
    row_chunk = max(1, min(M, chunk_elems // (code_chunk + carried)))
    indices = torch.empty(M, k, dtype=torch.int64, device=z.device)
    for r0 in range(0, M, row_chunk):
        zr = z[r0 : r0 + row_chunk].to(dtype) - mu  # [m, d], centred (cosine: mu = 0)
        m = zr.shape[0]
        if k == 1:
            best = torch.full((m,), float("inf"), dtype=dtype, device=z.device)
            best_idx = torch.zeros(m, dtype=torch.int64, device=z.device)
        else:
            best = torch.empty(m, 0, dtype=dtype, device=z.device)
            best_idx = torch.empty(m, 0, dtype=torch.int64, device=z.device)
        for k0 in range(0, K, code_chunk):
            s = torch.addmm(a[k0 : k0 + code_chunk], zr, w[k0 : k0 + code_chunk].T)  # [m, k]
            torch.nan_to_num_(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            if k == 1:
                cmin, cidx = s.min(dim=1)  # torch returns the first index among equal minima
                upd = cmin < best  # strict: an earlier chunk (lower index) keeps a tie
                best = torch.where(upd, cmin, best)
                best_idx = torch.where(upd, cidx + k0, best_idx)
            else:
                # the running best (lower indices, already in order) first, then this chunk in index order:
                # a stable sort by score keeps the lowest index first among equal scores
                cand = torch.arange(k0, k0 + s.shape[1], device=z.device).expand(m, -1)
                s, order = torch.cat([best, s], dim=1).sort(dim=1, stable=True)
                best = s[:, :k]
                best_idx = torch.cat([best_idx, cand], dim=1).gather(1, order[:, :k])
        indices[r0 : r0 + row_chunk] = best_idx.view(m, k)
    distances = torch.empty(M, k, dtype=dtype, device=z.device)
    rows_per_step = max(1, chunk_elems // (d * k))
    for r0 in range(0, M, rows_per_step):
        rows = slice(r0, r0 + rows_per_step)
        zr = z[rows].to(dtype)[:, None, :].expand(-1, k, -1).reshape(-1, d)
        chosen = codebook[indices[rows].reshape(-1)].to(dtype)
        distances[rows] = _direct_distance(zr, chosen, cosine).view(-1, k)
    if topk is None:
        return indices.view(M), distances.view(M)
    return indices, distances
