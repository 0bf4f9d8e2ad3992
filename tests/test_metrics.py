"""Metric code on cases with known answers: Frechet distance, PSNR, SSIM, the ridge probe, the baselines' pieces."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from spectralar.evaluation.metrics import (
    feature_stats,
    frechet_distance,
    frechet_distance_from_features,
    gaussian_window,
    mean_pairwise_distance,
    psnr,
    relative_diversity,
    ridge_r2,
    ssim,
)
from spectralar.evaluation.probes import dct_bands, pca_project, raster_patches
from spectralar.models.classifier import SmallCNN, classify
from spectralar.models.config import ClassifierConfig

# ---- Frechet distance ----------------------------------------------------------------------------------


def _fd_oracle(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root of sigma1 sigma2 (float64)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_identical_sets_is_zero():
    f = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0, 5.0])
def test_frechet_grows_with_a_known_mean_shift(shift):
    # translating a set keeps its covariance, so the distance is exactly |shift vector|^2
    f = torch.randn(400, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    delta = torch.full((6,), shift, dtype=torch.float64)
    assert frechet_distance_from_features(f, f + delta) == pytest.approx(6 * shift**2, rel=1e-9, abs=1e-9)


def test_frechet_gaussian_closed_form_diagonal():
    # N(mu1, diag(a)) vs N(mu2, diag(b)): |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(2)
    for d in (1, 5, 33):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, 2 * d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T / d  # the two do not commute
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_oracle(mu1, s1, mu2, s2), rel=1e-7, abs=1e-8)


def test_frechet_of_samples_approaches_the_gaussian_value():
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(40000, 3, generator=g, dtype=torch.float64)
    mu = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    f2 = torch.randn(40000, 3, generator=g, dtype=torch.float64) * 2 + mu
    want = 1.0 + 3 * (2 - 1) ** 2  # |mu|^2 + sum (sqrt(4) - sqrt(1))^2
    assert frechet_distance_from_features(f1, f2) == pytest.approx(want, rel=0.03)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="M >= 2"):
        feature_stats(torch.zeros(1, 4))


# ---- PSNR / SSIM ---------------------------------------------------------------------------------------


def test_psnr_identical_is_inf_or_capped():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.equal(psnr(x, x, max_db=100.0), torch.full((2,), 100.0, dtype=torch.float64))


def test_psnr_known_value():
    x = torch.rand(3, 2, 5, 7) * 1.8 - 0.9
    y = x.clone()
    y[1] += 0.1  # image 1: MSE 0.01 -> 10 log10(4 / 0.01) dB
    got = psnr(x, y, max_db=1000.0)
    assert got[1].item() == pytest.approx(10 * math.log10(400), abs=1e-4)
    assert got[0].item() == 1000.0


def test_ssim_identical_is_one():
    x = torch.rand(3, 2, 16, 20) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_ssim_of_two_constant_images_hand_computed():
    # zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 2)^2
    a, b, c1 = 0.5, -0.25, (0.01 * 2) ** 2
    x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def _ssim_bruteforce(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5, L=2.0) -> float:
    """Per-window SSIM with an explicit 2-D Gaussian weight, looped over every valid position (float64)."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("shape", [(11, 11), (13, 14), (16, 16)])
def test_ssim_matches_bruteforce_windows(shape):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, *shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    got = ssim(x, y)
    for n in range(2):
        want = np.mean([_ssim_bruteforce(x[n, c].double().numpy(), y[n, c].double().numpy()) for c in range(3)])
        assert got[n].item() == pytest.approx(want, abs=1e-10)
    assert (got < 1).all() and (got > 0).all()


def test_ssim_window_and_errors():
    g = gaussian_window(11, 1.5)
    assert g.sum().item() == pytest.approx(1.0) and g.argmax().item() == 5 and torch.allclose(g, g.flip(0))
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


# ---- ridge probe ---------------------------------------------------------------------------------------


def test_ridge_r2_exact_linear_map_is_one_and_noise_is_zero():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 10, generator=g, dtype=torch.float64)
    w = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = x @ w + 2.0
    r = ridge_r2(x[:500], y[:500], x[500:], y[500:], alphas=(0.0, 1e-6, 1.0))
    assert r["r2"] == pytest.approx(1.0, abs=1e-6)
    noise = torch.randn(600, 3, generator=g, dtype=torch.float64)
    r = ridge_r2(x[:500], noise[:500], x[500:], noise[500:])
    assert abs(r["r2"]) < 0.05


def test_ridge_r2_known_signal_fraction():
    # y = x w + e with Var(x w) = Var(e): the best possible R^2 is 1/2
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0], [0.0], [0.0], [0.0]], dtype=torch.float64)
    y = x @ w + torch.randn(20000, 1, generator=g, dtype=torch.float64)
    r = ridge_r2(x[:15000], y[:15000], x[15000:], y[15000:])
    assert r["r2"] == pytest.approx(0.5, abs=0.03)


def test_ridge_r2_alpha_zero_matches_least_squares():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(80, 6)) * np.arange(1, 7), rng.normal(size=(80, 2))
    xt, yt = rng.normal(size=(30, 6)) * np.arange(1, 7), rng.normal(size=(30, 2))
    A = np.c_[x, np.ones(80)]
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = np.c_[xt, np.ones(30)] @ coef
    want = 1 - ((yt - pred) ** 2).sum() / ((yt - yt.mean(0)) ** 2).sum()
    assert ridge_r2(x, y, xt, yt, alphas=(0.0,))["r2"] == pytest.approx(want, rel=1e-8, abs=1e-10)


def test_ridge_r2_rejects_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        ridge_r2(np.zeros((10, 3)), np.zeros((9, 1)), np.zeros((4, 3)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="non-negative"):
        ridge_r2(np.zeros((10, 3)), np.zeros((10, 1)), np.zeros((4, 3)), np.zeros((4, 1)), alphas=(-1.0,))


# ---- pieces of the baselines and the classifier --------------------------------------------------------


def test_raster_patches_order_and_strips():
    x = torch.arange(2 * 16, dtype=torch.float32).view(1, 2, 4, 4).repeat(2, 1, 1, 1)
    p = raster_patches(x, 4)  # 2x2 grid of 2x2 patches, raster order
    assert p.shape == (2, 4, 8)
    assert p[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]  # top-right patch, channel 0 then channel 1
    assert p[0, 2].tolist()[:4] == [8, 9, 12, 13]  # bottom-left
    s = raster_patches(x, 2)  # 2 is not a square: two horizontal strips
    assert s.shape == (2, 2, 16) and s[0, 1].tolist()[:8] == [8, 9, 10, 11, 12, 13, 14, 15]
    with pytest.raises(ValueError, match="tile"):
        raster_patches(x, 3)


def test_dct_bands_partition_the_spectrum():
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    bands = dct_bands(x, [1, 2, 5, 8])
    assert [b.shape[1] for b in bands] == [2 * 1, 2 * 3, 2 * 21, 2 * 39]
    energy = sum(b.double().pow(2).sum(1) for b in bands)  # orthonormal DCT: Parseval
    assert torch.allclose(energy, x.double().pow(2).flatten(1).sum(1), rtol=1e-5)
    assert torch.allclose(bands[0][:, 0].double(), x[:, 0].double().sum((1, 2)) / 8, atol=1e-5)  # DC = sum / S


def test_pca_project_keeps_the_top_axes():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2000, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.1, 0.1],
                                                                            dtype=torch.float64)
    tr, te, kept = pca_project(z, z[:10], 2)
    assert tr.shape == (2000, 2) and te.shape == (10, 2)
    assert kept == pytest.approx(34 / 35.02, abs=0.01)
    assert tr[:, 0].var().item() == pytest.approx(25, rel=0.1) and tr[:, 1].var().item() == pytest.approx(9, rel=0.1)


def test_classifier_shapes_and_input_check():
    m = SmallCNN(ClassifierConfig(image_size=16, channels=3, num_classes=4, width=4, feature_dim=8))
    f, logits = classify(m, torch.rand(5, 3, 16, 16) * 2 - 1, batch_size=2)
    assert f.shape == (5, 8) and logits.shape == (5, 4) and (f >= 0).all()
    with pytest.raises(ValueError, match="classifier takes"):
        classify(m, torch.zeros(2, 1, 16, 16))


def test_mean_pairwise_distance_hand_computed():
    # three points on a line at 0, 3 and 4: pairwise distances 3, 4, 1 -> mean 8/3
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert math.isclose(mean_pairwise_distance(x), 8 / 3, rel_tol=1e-12)
    # images are flattened: a [M, C, H, W] batch counts every pixel
    img = torch.zeros(2, 1, 2, 2)
    img[1] = 1.0
    assert math.isclose(mean_pairwise_distance(img), 2.0, rel_tol=1e-12)
    with pytest.raises(ValueError, match="M >= 2"):
        mean_pairwise_distance(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="non-finite"):
        mean_pairwise_distance(torch.tensor([[0.0], [float("nan")]]))


def test_relative_diversity_per_class():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    real_y = torch.arange(200) % 2
    # class 0: the real points themselves (ratio 1); class 1: one point repeated (mode collapse, ratio 0);
    # class 2: no real images, so no entry
    samples = torch.cat([real[real_y == 0], real[real_y == 1][:1].repeat(5, 1), torch.randn(3, 8, generator=g)])
    samples_y = torch.cat([torch.zeros(100), torch.ones(5), torch.full((3,), 2.0)]).long()
    d = relative_diversity(samples, samples_y, real, real_y, ["a", "b", "c"])
    assert set(d) == {"a", "b"}
    assert math.isclose(d["a"], 1.0, rel_tol=1e-12) and d["b"] == 0.0
    # twice the spread, twice the diversity
    d2 = relative_diversity(2 * real, real_y, real, real_y, ["a", "b"])
    assert all(math.isclose(v, 2.0, rel_tol=1e-9) for v in d2.values())
