"""vq_nearest: index and distance of the nearest codebook entries for each row, without an M x K matrix."""

from __future__ import annotations

import torch

from .._common import check_float, check_same_device, choose_kernel
from . import dense
from .ref import vq_nearest_ref

__all__ = ["vq_nearest"]

METRICS = ("l2", "cosine")
DISTANCES = ("squared", "euclidean")


def _check(z, codebook, metric, topk, return_distances) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if return_distances not in DISTANCES:
        raise ValueError(f"return_distances must be one of {DISTANCES}, got {return_distances!r}")
    if metric == "cosine" and return_distances != "squared":
        raise ValueError(
            "return_distances='euclidean' needs metric='l2' (cosine distances are 1 - cos; the Euclidean "
            "distance between the normalised vectors is sqrt(2 * (1 - cos)))"
        )
    check_float("z", z)
    check_float("codebook", codebook)
    if z.dim() < 2:
        raise ValueError(f"z must be [..., M, d], got shape {tuple(z.shape)}")
    if codebook.dim() not in (2, 3):
        raise ValueError(f"codebook must be [K, d] (shared) or [G, K, d] (one per group), got {tuple(codebook.shape)}")
    if codebook.dim() == 3 and (z.dim() < 3 or z.shape[-3] != codebook.shape[0]):
        raise ValueError(
            f"with codebook [G, K, d] = {tuple(codebook.shape)}, z must be [..., G, M, d] with G = "
            f"{codebook.shape[0]} at dim -3, got {tuple(z.shape)} (move the group dim there with z.movedim)"
        )
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"code dim mismatch: z is {tuple(z.shape)}, codebook is {tuple(codebook.shape)}")
    K = codebook.shape[-2]
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= K):
        raise ValueError(f"topk must be None or an int in [1, K={K}], got {topk!r}")
    check_same_device(z=z, codebook=codebook)


def _nearest(z: torch.Tensor, codebook: torch.Tensor, metric: str, topk: int | None, cache: bool = False):
    """One [M, d] x [K, d] problem: the kernel for the nearest code, else every pair at once for a small problem on
    CPU (vq/dense.py), else the reference; all three give the same results."""
    if (topk or 1) == 1:
        impl = choose_kernel("vq_nearest", metric, z, codebook, k=codebook.shape[-2], d=codebook.shape[-1])
        if impl is not None:
            from .triton import vq_nearest_fwd

            idx, dist = vq_nearest_fwd(z, codebook, metric, impl, cache=cache)
            return (idx, dist) if topk is None else (idx[:, None], dist[:, None])
    if dense.fits(z, codebook):
        return dense.vq_nearest_dense(z, codebook, metric, topk)
    return vq_nearest_ref(z, codebook, metric, topk=topk)


def vq_nearest(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    *,
    topk: int | None = None,
    return_distances: str = "squared",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code(s) for every row of `z`, against one shared codebook or one codebook per group.

    Args:
        z: [..., M, d] fp32/fp16/bf16 vectors to quantise (any leading dims). With a per-group codebook
            [G, K, d], z must be [..., G, M, d]: dim -3 is the group, and rows of group g are matched
            against codebook[g] only.
        codebook: [K, d] shared, or [G, K, d] one per group; fp32/fp16/bf16, same device as `z` (dtypes
            may differ).
        metric: "l2" -> distance ||z - c||^2 (squared Euclidean);
                "cosine" -> distance 1 - cos(z, c), both vectors normalised inside with norms
                clamped at 1e-12 (a zero vector is at distance 1 from everything).
        topk: None (default) for the nearest code, outputs [..., M]; k for the k nearest codes, outputs
            [..., M, k] in ascending order of (distance, index).
        return_distances: "squared" (default: the metric's distance above) or "euclidean" (||z - c||, as
            torch.cdist and faiss-style peers report; metric="l2" only).
    Returns:
        (indices, distances): int64 and float32 on z's device, shapes as above, no autograd graph (wrap with a
        straight-through estimator in the model).

    Ranking (the same on every path, any BLAS, any chunking): a code's distance is computed in float64 from the
    raw values and rounded once to fp32 (cosine as |z/|z| - c/|c||^2 / 2, which is 1 - cos without its
    cancellation near 0); the nearest code is the lowest index among those at the smallest distance, so exact
    duplicates always give the lowest copy and the answer is the true nearest code up to the fp32 rounding of
    its distance, for data far from the origin, clustered codebooks and outlier codes alike. A code holding inf
    or NaN ranks after every finite code (chosen only when all codes are non-finite; distance NaN); a row
    holding NaN gets the lowest-index finite code with distance NaN. An fp32 GEMM ranks first, a rigorous
    bound on its rounding picks the few codes whose exact distance is then compared (vq/ref.py).

    Never allocates an M x K tensor beyond 2^16 values: on CPU a small problem (M x K x (d + 2) <= 2^18 and
    M x K <= 2^16) is ranked by computing every pair exactly (vq/dense.py), faster there than the general path;
    above that the reference works in bounded chunks (its temporaries stay within a few chunks of 2^22 values
    whatever K), and the Triton kernels keep per-row minima in registers. Per-group codebooks run one
    [M, d] x [K, d] problem per group; topk > 1 never runs a Triton kernel. The Triton path (vq-v2) caches its
    padded codebook per tensor version when the codebook does not require grad: in-place ops are seen, writes
    through `.data` are not (call `spectralar_kernels.vq.triton.clear_cache()` after those); a codebook that
    requires grad (a trainable parameter, which fused optimizers update without a version bump) is prepared
    afresh every call.

    Training losses that need logits over codes (soft VQ, a cross-entropy over codes): the logits are
    -||z - c||^2 / temperature, differentiable, so build them in torch. Over all K codes that is an
    M x K matrix by nature; keep it to chunks of rows (and sum the per-chunk losses), and expand it on
    data shifted by a point near them (the codebook mean here) so far-from-origin inputs keep their precision::

        mu = codebook.detach().mean(0)
        zc, cc = z - mu, codebook - mu
        logits = (2 * zc @ cc.T - cc.pow(2).sum(-1)) / temperature  # -||z - c||^2 / T up to a per-row constant

    Or restrict the softmax to the k nearest codes (the others get probability 0), found here without
    any M x K buffer; the nearest code is column 0::

        idx, _ = vq_nearest(z, codebook, topk=k)  # [M, k]
        logits = -(z.unsqueeze(-2) - codebook[idx]).pow(2).sum(-1) / temperature  # [M, k], differentiable
    """
    _check(z, codebook, metric, topk, return_distances)
    # a codebook that requires grad is being trained: optimizers update it in place, and fused ones (fused=True)
    # do not bump its version counter, so vq-v2 prepares it afresh every call instead of caching it
    cache = not codebook.requires_grad
    z, codebook = z.detach(), codebook.detach()
    d = z.shape[-1]
    tail = () if topk is None else (topk,)
    if codebook.dim() == 2:
        idx, dist = _nearest(z.reshape(-1, d), codebook, metric, topk, cache)
        idx, dist = idx.view(*z.shape[:-1], *tail), dist.view(*z.shape[:-1], *tail)
    else:
        zg = z.movedim(-3, 0)  # [G, ..., M, d]
        parts = [_nearest(zg[g].reshape(-1, d), codebook[g], metric, topk, cache) for g in range(codebook.shape[0])]
        shape = (*zg.shape[:-1], *tail)  # [G, ..., M(, k)] -> group back at its place in z
        where = z.dim() - 3
        idx = torch.stack([p[0] for p in parts]).view(shape).movedim(0, where).contiguous()
        dist = torch.stack([p[1] for p in parts]).view(shape).movedim(0, where).contiguous()
    if return_distances == "euclidean":
        dist = dist.sqrt()
    return idx, dist
