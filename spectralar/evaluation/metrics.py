"""Image-quality and representation metrics we can compute offline, named for what they are.

- `psnr`, `ssim`: per-image reconstruction quality for images in [-1, 1] (data range 2).
- `frechet_distance`: the Frechet distance between Gaussians fitted to two feature sets. With
  InceptionV3 pool features this is FID; with our small classifier's features it is the *classifier
  Frechet distance (CFD)*, which is not FID and is never called that.
- `mean_pairwise_distance`, `relative_diversity`: how spread out a set of samples is (within one class),
  relative to real images of that class: 1 is as varied as real data, below 1 is mode-dropping or blur.
- `ridge_r2`: held-out R^2 of a ridge regression (the linear causality probe), with the ridge strength
  chosen on a validation split.

All reductions run in float64. Reference: Wang et al. 2004 (SSIM); Heusel et al. 2017 (Frechet distance
of Gaussians); Dowson & Landau 1982 (its closed form).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CFD_LABEL",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_window",
    "mean_pairwise_distance",
    "psnr",
    "relative_diversity",
    "ridge_r2",
    "ssim",
]

CFD_LABEL = "classifier Frechet distance (CFD), not FID"


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.dim() != 4 or x.numel() == 0:
        raise ValueError(f"expected two non-empty [B, C, H, W] tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, max_db: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(data_range^2 / MSE), in dB.

    Args:
        x, y: `[B, C, H, W]` float images (data range 2 for [-1, 1]).
        max_db: cap the result (identical images give +inf without a cap).
    Returns:
        float64 `[B]`.
    """
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    out = 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> +inf
    return out.clamp(max=max_db) if max_db is not None else out


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian [size] (float64), centred on the middle tap."""
    if size < 1 or size % 2 == 0 or sigma <= 0:
        raise ValueError(f"window size must be odd and >= 1 and sigma > 0, got {size}, {sigma}")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.pow(2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, averaged over channels and window positions.

    Local statistics use a separable Gaussian window (size 11, sigma 1.5), evaluated only where the
    window fits inside the image ("valid", no padding); C1 = (k1 L)^2, C2 = (k2 L)^2 with L = data_range.

    Args:
        x, y: `[B, C, H, W]` float images, H and W >= window.
    Returns:
        float64 `[B]`; exactly 1 for identical images.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the SSIM window {window}")
    B, C, H, W = x.shape
    g = gaussian_window(window, sigma).to(x.device)
    kh, kw = g.view(1, 1, window, 1), g.view(1, 1, 1, window)

    def blur(t):  # [B*C, 1, H, W] -> local Gaussian mean, valid positions only
        return F.conv2d(F.conv2d(t, kh), kw)

    a = x.double().reshape(B * C, 1, H, W)
    b = y.double().reshape(B * C, 1, H, W)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(B, -1).mean(1)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [M, D], M >= 2."""
    f = features.detach().double().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features,
                                                                                                      np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [M >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs i != j of the rows of x [M, ...] (M >= 2), in float64."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"expected a tensor [M >= 2, ...], got {getattr(x, 'shape', type(x).__name__)}")
    f = x.detach().reshape(x.shape[0], -1).double().cpu()
    if not torch.isfinite(f).all():
        raise ValueError("mean_pairwise_distance: non-finite values")
    m = f.shape[0]
    return float(torch.cdist(f, f).sum() / (m * (m - 1)))


def relative_diversity(samples: torch.Tensor, samples_labels: torch.Tensor, real: torch.Tensor,
                       real_labels: torch.Tensor, classes) -> dict:
    """{class name: mean pairwise distance of that class's samples / that of its real images}, for every class
    with at least two of each; rows of `samples` / `real` are features or images of one shape."""
    out = {}
    for c, name in enumerate(classes):
        s, r = samples[samples_labels == c], real[real_labels == c]
        if s.shape[0] >= 2 and r.shape[0] >= 2:
            out[name] = mean_pairwise_distance(s) / max(mean_pairwise_distance(r), 1e-12)
    return out


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2)

    The trace term uses the symmetric form (equal to tr((sigma1 sigma2)^1/2)), computed with two
    symmetric eigendecompositions, so it stays real and needs no `sqrtm` or ad-hoc jitter.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(d, 0.0)


def frechet_distance_from_features(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to feature sets f1 [M1, D] and f2 [M2, D]."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _ridge_fit(x, y, alphas):
    """Weights [(D, K) per alpha] of ridge regressions on centred data, from one eigendecomposition."""
    w, v = np.linalg.eigh(x.T @ x)
    w = np.clip(w, 0, None)
    xty = v.T @ (x.T @ y)
    tiny = 1e-12 * max(float(w.max(initial=0.0)), 1e-300)
    out = []
    for a in alphas:  # alpha = 0 on a rank-deficient x: the minimum-norm least-squares solution
        d = w + a
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > tiny)
        out.append(v @ (xty * inv[:, None]))
    return out


def ridge_r2(x_train, y_train, x_test, y_test, alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0),
             val_fraction: float = 0.2) -> dict:
    """Held-out R^2 of a ridge regression y ~ x, the ridge strength picked on a validation split.

    Inputs are float arrays/tensors [M, D] (x) and [M, K] (y). x is standardised with the training
    statistics (so one alpha grid suits any feature scale); the last `val_fraction` of the training
    rows pick alpha, then the model is refitted on all training rows.

    R^2 is variance-weighted over the K outputs: 1 - sum|y - y_hat|^2 / sum|y - mean(y_test)|^2
    (sklearn's r2_score(multioutput="variance_weighted")). 0 = no better than the mean, 1 = exact.
    Returns {"r2", "alpha", "val_r2"}.
    """
    def arr(a):
        a = a.detach().double().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
        return a.reshape(a.shape[0], -1)

    xtr, ytr, xte, yte = arr(x_train), arr(y_train), arr(x_test), arr(y_test)
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0] or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"shape mismatch: x_train {xtr.shape}, y_train {ytr.shape}, x_test {xte.shape}, "
                         f"y_test {yte.shape}")
    if not 0 < val_fraction < 1 or xtr.shape[0] < 4:
        raise ValueError(f"need >= 4 training rows and 0 < val_fraction < 1, got {xtr.shape[0]}, {val_fraction}")
    alphas = [float(a) for a in alphas]
    if not alphas or min(alphas) < 0:
        raise ValueError(f"alphas must be non-negative, got {alphas}")

    def r2(y, pred):
        sst = ((y - y.mean(0)) ** 2).sum()
        return 1.0 - float(((y - pred) ** 2).sum() / sst) if sst > 0 else float("nan")

    def fit_predict(x, y, x_eval, alphas):
        mx, sx, my = x.mean(0), x.std(0), y.mean(0)
        sx = np.where(sx > 0, sx, 1.0)
        return [(x_eval - mx) / sx @ w + my for w in _ridge_fit((x - mx) / sx, y - my, alphas)]

    n_fit = min(xtr.shape[0] - 2, max(2, int(round(xtr.shape[0] * (1 - val_fraction)))))
    val_scores = [r2(ytr[n_fit:], p) for p in fit_predict(xtr[:n_fit], ytr[:n_fit], xtr[n_fit:], alphas)]
    best = 0 if all(math.isnan(v) for v in val_scores) else int(np.nanargmax(val_scores))
    (pred,) = fit_predict(xtr, ytr, xte, [alphas[best]])
    return {"r2": r2(yte, pred), "alpha": alphas[best], "val_r2": val_scores[best]}
