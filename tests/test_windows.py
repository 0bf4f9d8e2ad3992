"""spectral_windows: the token-frequency mappings and their argument checks."""

import itertools
import math

import numpy as np
import pytest
import torch

from spectralar_kernels import spectral_windows


def assert_valid(w: list[int], size: int, n: int) -> None:
    assert isinstance(w, list) and all(type(v) is int for v in w)
    assert len(w) == n and w[0] >= 1 and w[-1] == size
    assert all(b > a for a, b in zip(w[:-1], w[1:])), w


def test_power_reproduces_design_calibration():
    assert spectral_windows(32, 16, "power", 2.0) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 21, 24, 28, 32]
    assert spectral_windows(32, 16) == spectral_windows(32, 16, "power", 2.0)  # the defaults


def test_uniform_is_equal_radial_steps():
    assert spectral_windows(32, 16, "uniform") == list(range(2, 33, 2))
    assert spectral_windows(32, 3, "uniform") == [11, 21, 32]  # round(10.67), round(21.33)
    assert spectral_windows(10, 10, "uniform") == list(range(1, 11))


def test_power_gamma_one_is_uniform_and_gamma_bends_the_curve():
    assert spectral_windows(64, 8, "power", 1.0) == spectral_windows(64, 8, "uniform")
    steep, flat = spectral_windows(64, 8, "power", 3.0), spectral_windows(64, 8, "power", 0.5)
    assert all(a <= b for a, b in zip(steep, flat)) and steep != flat


@pytest.mark.parametrize(
    "size,n,mapping,gamma",
    list(itertools.product([1, 2, 7, 32, 33, 256], [1, 2, 5, 16, 64], ["uniform", "power"], [0.3, 1.0, 2.0, 5.0])),
)
def test_always_strictly_increasing_and_ending_at_size(size, n, mapping, gamma):
    if n > size:
        with pytest.raises(ValueError, match="exceeds size"):
            spectral_windows(size, n, mapping, gamma)
        return
    w = spectral_windows(size, n, mapping, gamma)
    assert_valid(w, size, n)
    if n == size:
        assert w == list(range(1, size + 1))


def brute_force_energy_windows(p: np.ndarray, n: int) -> list[int]:
    """Smallest w with sum_{max(u,v) < w} p >= i/N of the total, then the +1 / room-left rule."""
    size = p.shape[0]
    cum = [p[:w, :w].sum() for w in range(size + 1)]
    out, prev = [], 0
    for i in range(1, n + 1):
        target = i / n * cum[-1]
        w = size if i == n else next(w for w in range(size + 1) if cum[w] >= target)
        w = min(max(w, prev + 1), size - (n - i))
        out.append(w)
        prev = w
    return out


@pytest.mark.parametrize("size,n", [(32, 16), (17, 5), (8, 8), (64, 1)])
def test_energy_matches_brute_force(size, n):
    u = np.arange(size, dtype=np.float64)
    p = 1.0 / (1.0 + u[:, None] ** 2 + u[None, :] ** 2) ** 1.5  # natural-image-like 1/f^3 power
    p *= np.random.default_rng(size).uniform(0.5, 1.5, p.shape)
    w = spectral_windows(size, n, "energy", power_spectrum=torch.from_numpy(p).float())
    assert_valid(w, size, n)
    assert w == brute_force_energy_windows(p.astype(np.float32).astype(np.float64), n)


def test_energy_flat_spectrum_gives_equal_area_bands():
    size, n = 32, 4
    w = spectral_windows(size, n, "energy", power_spectrum=torch.ones(size, size))
    assert w == [math.ceil(size * math.sqrt(i / n)) for i in range(1, n + 1)]  # area w^2 = i/N size^2


def test_energy_all_at_dc_forces_unit_steps():
    p = torch.zeros(16, 16)
    p[0, 0] = 1.0
    assert spectral_windows(16, 5, "energy", power_spectrum=p) == [1, 2, 3, 4, 16]


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((32, 33), {}, "num_tokens=33 exceeds size=32"),
        ((32, 0), {}, "num_tokens must be a positive int"),
        ((32, 2.0), {}, "num_tokens must be a positive int"),
        ((0, 1), {}, "size must be a positive int"),
        ((32.0, 4), {}, "size must be a positive int"),
        ((True, 1), {}, "size must be a positive int"),
        ((32, 4, "log"), {}, "mapping must be one of"),
        ((32, 4, "power", 0.0), {}, "gamma must be"),
        ((32, 4, "power", -1.0), {}, "gamma must be"),
        ((32, 4, "power", float("nan")), {}, "gamma must be"),
        ((32, 4, "power", "2"), {}, "gamma must be"),
        ((32, 4, "energy"), {}, "needs power_spectrum"),
        ((8, 4, "energy"), {"power_spectrum": np.ones((8, 8))}, "needs power_spectrum"),
        ((8, 4, "energy"), {"power_spectrum": torch.ones(8, 9)}, r"shape \(8, 8\)"),
        ((8, 4, "energy"), {"power_spectrum": torch.ones(8, 8, dtype=torch.int64)}, "real floating"),
        ((8, 4, "energy"), {"power_spectrum": torch.ones(8, 8, dtype=torch.complex64)}, "real floating"),
        ((8, 4, "energy"), {"power_spectrum": -torch.ones(8, 8)}, "non-negative"),
        ((8, 4, "energy"), {"power_spectrum": torch.full((8, 8), float("nan"))}, "finite"),
        ((8, 4, "energy"), {"power_spectrum": torch.zeros(8, 8)}, "zero total energy"),
        ((8, 4, "power"), {"power_spectrum": torch.ones(8, 8)}, "only used by mappings"),
        ((32, 4, "gain"), {}, "mapping='gain' needs power_spectrum"),
        ((8, 4, "gain"), {"power_spectrum": torch.zeros(8, 8)}, "zero total energy"),
        ((8, 4, "gain"), {"power_spectrum": torch.full((8, 8), float("inf"))}, "finite"),
    ],
)
def test_value_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spectral_windows(*args, **kwargs)


def brute_force_gain_windows(p: np.ndarray, n: int) -> list[int]:
    """The `gain` rule spelled out: residual energy per window, equal dB steps up to the last lossy window."""
    size = p.shape[0]
    resid = [sum(p[u, v] for u in range(size) for v in range(size) if max(u, v) >= w) for w in range(size)]
    top = max(w for w in range(size) if resid[w] > 0)
    if top == 0 or n == 1:
        targets = [1] * n
    else:
        lo, hi = -10 * math.log10(resid[0]), -10 * math.log10(resid[top])
        targets = []
        for i in range(1, n):
            goal = lo + (hi - lo) * i / (n - 1)
            targets.append(next(w for w in range(1, top + 1) if -10 * math.log10(resid[w]) >= goal - 1e-9 * (hi - lo)))
        targets.append(size)
    out, prev = [], 0
    for i, t in enumerate(targets, start=1):
        t = size if i == n else t
        prev = min(max(t, prev + 1), size - (n - i))
        out.append(prev)
    return out


@pytest.mark.parametrize("size,n", [(8, 4), (16, 5), (32, 16), (13, 13), (9, 1), (32, 2)])
def test_gain_matches_brute_force(size, n):
    rng = np.random.default_rng(size * 100 + n)
    u = np.arange(size)
    decay = 1.0 / (1.0 + np.maximum(u[:, None], u[None, :])) ** 2.5  # natural-image-like fall-off
    p = (decay * rng.uniform(0.2, 1.8, (size, size))).astype(np.float32).astype(np.float64)
    w = spectral_windows(size, n, "gain", power_spectrum=torch.from_numpy(p).float())
    assert_valid(w, size, n)
    assert w == brute_force_gain_windows(p, n)


def test_gain_never_ends_a_token_on_an_empty_ring():
    """Energy on even rings only (a symmetric-image caricature): every token but the last must end just after
    a ring that carries energy, where `uniform` would give odd-ring tokens nothing."""
    size, n = 32, 6
    u = np.arange(size)
    r = np.maximum(u[:, None], u[None, :])
    p = np.where(r % 2 == 0, 1.0 / (1.0 + r) ** 2, 0.0)
    w = spectral_windows(size, n, "gain", power_spectrum=torch.from_numpy(p))
    assert_valid(w, size, n)
    assert all((wi - 1) % 2 == 0 for wi in w[:-1]), w
    assert any((wi - 1) % 2 == 1 for wi in spectral_windows(size, n, "uniform")[:-1])


def test_gain_steps_are_equal_in_db():
    """Exact sub-image quality climbs in (nearly) equal dB steps when the spectrum is smooth enough to allow it."""
    size, n = 256, 8
    u = np.arange(size)
    p = 1.0 / (1.0 + np.maximum(u[:, None], u[None, :])) ** 3.0
    w = spectral_windows(size, n, "gain", power_spectrum=torch.from_numpy(p))
    band = np.bincount(np.maximum(u[:, None], u[None, :]).ravel(), weights=p.ravel())
    resid = band[::-1].cumsum()[::-1]
    db = [-10 * math.log10(resid[0])] + [-10 * math.log10(resid[wi]) for wi in w[:-1]]
    steps = np.diff(db)
    assert steps.min() > 0.8 * steps.mean() and steps.max() < 1.35 * steps.mean(), steps


def test_gain_all_at_dc_forces_unit_steps():
    p = torch.zeros(16, 16)
    p[0, 0] = 1.0
    assert spectral_windows(16, 5, "gain", power_spectrum=p) == [1, 2, 3, 4, 16]
