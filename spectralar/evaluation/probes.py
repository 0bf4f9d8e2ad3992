"""The causality probe's embeddings: a tokenizer's own token vectors, PCA, raster patches, DCT bands, and ridge
predictability per position."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spectralar_kernels import dct2d

from ..progress import bar
from .metrics import ridge_r2

__all__ = ["check_probe_sizes", "dct_bands", "pca_project", "probe_r2", "raster_patches", "token_embeddings"]

# ---- causality probe ------------------------------------------------------------------------------


@torch.no_grad()
def check_probe_sizes(num_train: int, num_test: int, dim: int, names=("num_train", "num_test")) -> None:
    """Refuse causality-probe sizes too small for its numbers to mean anything: a PCA to `dim` dimensions needs
    more training images than dimensions (else the axes past the data's rank are noise, which standardising
    blows up: R^2 of -1e27), and the ridge strength is picked on a fifth of them (at least 5); R^2 needs several
    held-out images. `names`: what the two sizes are called in the message (a command line gives its flags)."""
    need = max(25, 2 * dim + 1)
    if num_train < need:
        raise ValueError(f"{names[0]} {num_train}: the probe needs at least {need} training images (more than twice "
                         f"the {dim} embedding dimensions, and 5 to choose the ridge strength)")
    if num_test < 10:
        raise ValueError(f"{names[1]} {num_test}: R^2 needs at least 10 held-out images")


def token_embeddings(tokenizer, images: torch.Tensor, batch_size: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """A tokenizer's tokens of images [M, C, S, S] as vectors, on the CPU: (continuous: the l2-normalised encoder
    outputs before quantisation, quantized: the chosen code vectors), each float32 [M, N, code_dim]."""
    dev = next(tokenizer.parameters()).device
    cont, quant = [], []
    for i in bar(range(0, images.shape[0], batch_size), desc="encode", unit="batch"):
        x = images[i:i + batch_size].to(dev)
        cont.append(F.normalize(tokenizer.encode_continuous(x).float(), dim=-1).cpu())
        quant.append(tokenizer.quantizer.codes_to_vectors(tokenizer.encode(x)).float().cpu())
    return torch.cat(cont), torch.cat(quant)


def pca_project(train: torch.Tensor, test: torch.Tensor, k: int):
    """Project rows [M, D] onto the top-k principal axes of `train` (float64); returns (train, test, kept var)."""
    a, b = train.double(), test.double()
    mean = a.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((a - mean).T).reshape(a.shape[1], a.shape[1]))
    k = min(k, a.shape[1])
    axes = evecs[:, -k:].flip(1)
    kept = float(evals[-k:].sum() / evals.sum().clamp_min(1e-300))
    return (a - mean) @ axes, (b - mean) @ axes, kept


def raster_patches(x: torch.Tensor, n: int) -> torch.Tensor:
    """[M, C, S, S] -> [M, n, C*ph*pw]: a g x g grid of square patches (n = g^2) in raster order, else n strips."""
    M, C, S, _ = x.shape
    g = math.isqrt(n)
    if g * g == n and S % g == 0:
        p = S // g
        return x.reshape(M, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(M, n, C * p * p)
    if S % n == 0:
        return x.reshape(M, C, n, S // n, S).permute(0, 2, 1, 3, 4).reshape(M, n, -1)
    raise ValueError(f"{n} tokens tile a {S}x{S} image neither as a square grid nor as equal strips")


def dct_bands(x: torch.Tensor, windows) -> list[torch.Tensor]:
    """[M, C, S, S] -> the DCT coefficients of each band {w[i-1] <= max(u, v) < w[i]}: N tensors [M, C*|B_i|]."""
    d = dct2d(x.float())
    S = x.shape[-1]
    r = torch.maximum(torch.arange(S)[:, None], torch.arange(S)[None, :])
    lo = [0, *windows[:-1]]
    return [d[..., (r >= a) & (r < b)].flatten(1) for a, b in zip(lo, windows)]


def probe_r2(emb_train, emb_test, alphas) -> list:
    """R^2 per position of ridge(tokens < i -> token i); emb [M, N, d]; position 1 has no prefix (None)."""
    out = [None]
    for i in range(1, emb_train.shape[1]):
        r = ridge_r2(emb_train[:, :i].flatten(1), emb_train[:, i], emb_test[:, :i].flatten(1), emb_test[:, i], alphas)
        out.append(r)
    return out
