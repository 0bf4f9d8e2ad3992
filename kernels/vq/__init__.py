"""vq_nearest: index and distance of the nearest codebook entry for each row, without an M x K matrix."""

from __future__ import annotations

import torch

from .._common import check_float, check_same_device, choose_kernel
from .ref import vq_nearest_ref

__all__ = ["vq_nearest"]

METRICS = ("l2", "cosine")


def vq_nearest(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code for every row of `z`.

    Args:
        z: [M, d] fp32/fp16/bf16 vectors to quantise.
        codebook: [K, d] fp32/fp16/bf16 codes, same device as `z` (dtypes may differ).
        metric: "l2" -> distance ||z - c||^2 (squared Euclidean);
                "cosine" -> distance 1 - cos(z, c), both vectors normalised inside with norms
                clamped at 1e-12 (a zero vector is at distance 1 from everything).
    Returns:
        (indices, distances): int64 [M] and float32 [M] on z's device. Distances are computed in
        fp32 whatever the input dtype and carry no autograd graph (wrap with a straight-through
        estimator in the model). Ties go to the lowest index. A NaN in a row of z gives that row a
        NaN distance; a NaN in a code gives every row a NaN distance (the code is chosen).
    Never allocates an M x K tensor: the reference works in bounded chunks, the Triton kernels keep a
    running min per row in registers. Codes are ranked on data centred on the codebook mean, so the
    argmin stays exact for data far from the origin. The Triton path (vq-v2) caches the prepared
    codebook per tensor version: in-place ops are seen, writes through `.data` are not (pass a fresh
    tensor, or bump it with an in-place op, after such writes).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    check_float("z", z)
    check_float("codebook", codebook)
    if z.dim() != 2:
        raise ValueError(f"z must be [M, d], got shape {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be [K, d], got shape {tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"code dim mismatch: z is {tuple(z.shape)}, codebook is {tuple(codebook.shape)}")
    check_same_device(z=z, codebook=codebook)
    impl = choose_kernel("vq_nearest", metric, z, codebook)
    if impl is not None:
        from .triton import vq_nearest_fwd

        return vq_nearest_fwd(z.detach(), codebook.detach(), metric, impl)
    return vq_nearest_ref(z.detach(), codebook.detach(), metric)
