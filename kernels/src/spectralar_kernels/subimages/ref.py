"""Reference spectral sub-images in plain PyTorch.

    x_w = IDCT( DCT(x) * M_w ),   M_w[u, v] = 1 iff u < w and v < w

(orthonormal whole-image DCT per channel). Equivalently x_w = P_w x P_w^T with the symmetric
projection P_w = D[:w]^T D[:w]; this reference uses the masked-coefficient form, the definition, through the
DCT reference, so it takes that reference's form for the device (the matmul form on a GPU, by size on the CPU).
"""

from __future__ import annotations

import torch

from ..transforms import ref as dct_ref


def spectral_subimages(
    x: torch.Tensor, windows, all_prefixes: bool = False, upcast: bool = False
) -> torch.Tensor:
    """Sub-images of `x [B, C, S, S]` (no argument checks).

    windows: int tensor `[B]` (one window per sample; returns `[B, C, S, S]`), or with
        `all_prefixes=True` a sequence of N windows (returns `[B, N, C, S, S]`).
    upcast: compute and return float64 (the test oracle); otherwise compute in `x.dtype`.
    """
    if upcast:
        x = x.to(torch.float64)
    size = x.shape[-1]
    coeffs = dct_ref.dct2d(x)
    freq = torch.arange(size, device=x.device)
    if all_prefixes:
        w = torch.as_tensor(windows, device=x.device).reshape(-1, 1, 1, 1)  # [N, 1, 1, 1]
        coeffs = coeffs.unsqueeze(1)  # [B, 1, C, S, S]
    else:
        w = windows.to(x.device).reshape(-1, 1, 1, 1)  # [B, 1, 1, 1]
    mask = (freq.view(1, 1, size, 1) < w) & (freq.view(1, 1, 1, size) < w)  # [B or N, 1, S, S]
    return dct_ref.idct2d(coeffs * mask.to(coeffs.dtype))
