"""Nearest-codebook lookup in plain PyTorch: the CPU path, the test oracle and the benchmark baseline.

For each row z_m of z [M, d] and codebook c [K, d]:
    l2:      index_m = argmin_k ||z_m - c_k||^2,            distance_m = ||z_m - c_idx||^2
    cosine:  index_m = argmin_k 1 - cos(z_m, c_k),          distance_m = 1 - z_m.c_idx / (|z_m| |c_idx|)
with |.| clamped below at EPS so zero vectors are safe (a zero vector has cos = 0 to everything).

The argmin uses scores that drop per-row constants (which never change the argmin):
    l2:      s_mk = ||c_k||^2 - 2 z_m.c_k
    cosine:  s_mk = -z_m.c_k / max(|c_k|, EPS)
and the reported distance is recomputed directly from the chosen code (no cancellation in
||z||^2 - 2 z.c + ||c||^2). Ties go to the lowest index. A NaN score counts as -inf, so a NaN in a
row of z or in any code is chosen and shows up as a NaN distance instead of a silent finite one.

Memory: the M x K score matrix is never allocated; rows and codes are processed in chunks of at most
CHUNK_ELEMS scores, keeping a running (min, argmin) per row.
"""

from __future__ import annotations

import torch

EPS = 1e-12
CHUNK_ELEMS = 1 << 22  # scores alive at once (16 MiB in fp32)


def code_scores_coeffs(codebook: torch.Tensor, cosine: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code (a, b) with score s_mk = a_k + b_k * (z_m . c_k); shapes [K], in `dtype`.

    The Triton kernel computes the same coefficients in-kernel from its codebook tiles.
    """
    c = codebook.to(dtype)
    sq = c.pow(2).sum(dim=1)
    if cosine:
        return torch.zeros_like(sq), -1.0 / sq.sqrt().clamp_min(EPS)
    return sq, torch.full_like(sq, -2.0)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference nearest-code lookup (arguments are assumed valid: see `vq_nearest`).

    Args:
        z: [M, d] float tensor.
        codebook: [K, d] float tensor.
        metric: "l2" (squared Euclidean) or "cosine" (1 - cosine similarity).
        upcast: compute in float64 (oracle quality) instead of float32. Either way fp16/bf16
            inputs are upcast, since fp32 distance arithmetic is the op's contract.
        chunk_elems: most scores alive at once (row chunk x code chunk).
    Returns:
        indices int64 [M], distances [M] (float32, or float64 with `upcast`); no autograd.
    """
    cosine = metric == "cosine"
    dtype = torch.float64 if upcast else torch.float32
    M, _ = z.shape
    K = codebook.shape[0]
    a, b = code_scores_coeffs(codebook, cosine, dtype)
    # Chunk codes first so one row chunk sees as many codes as fit, then rows.
    code_chunk = max(1, min(K, chunk_elems))
    row_chunk = max(1, min(M, chunk_elems // code_chunk))
    indices = torch.empty(M, dtype=torch.int64, device=z.device)
    for r0 in range(0, M, row_chunk):
        zr = z[r0 : r0 + row_chunk].to(dtype)  # [m, d]
        best = torch.full((zr.shape[0],), float("inf"), dtype=dtype, device=z.device)
        best_idx = torch.zeros(zr.shape[0], dtype=torch.int64, device=z.device)
        for k0 in range(0, K, code_chunk):
            ck = codebook[k0 : k0 + code_chunk].to(dtype)  # [k, d]
            if cosine:
                s = (zr @ ck.T).mul_(b[k0 : k0 + code_chunk])  # [m, k]
            else:
                s = torch.addmm(a[k0 : k0 + code_chunk], zr, ck.T, alpha=-2.0)  # [m, k] = ||c||^2 - 2 z.c
            torch.nan_to_num_(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            cmin, cidx = s.min(dim=1)  # torch returns the first index among equal minima
            upd = cmin < best  # strict: an earlier chunk (lower index) keeps a tie
            best = torch.where(upd, cmin, best)
            best_idx = torch.where(upd, cidx + k0, best_idx)
        indices[r0 : r0 + row_chunk] = best_idx
    distances = torch.empty(M, dtype=dtype, device=z.device)
    rows_per_step = max(1, chunk_elems // z.shape[1])
    for r0 in range(0, M, rows_per_step):
        rows = slice(r0, r0 + rows_per_step)
        distances[rows] = _direct_distance(z[rows].to(dtype), codebook[indices[rows]].to(dtype), cosine)
    return indices, distances
