"""Token-frequency mapping: the spectral windows w[1..N] of a Nested Spectral Tokenizer.

Token i carries the DCT band B_i = {(u, v): w[i-1] <= max(u, v) < w[i]} (w[0] = 0, w[N] = size),
and a prefix of i tokens decodes to the low-pass square u, v < w[i]. Pure Python; no kernels.
"""

from __future__ import annotations

import math

import torch

__all__ = ["spectral_windows"]

MAPPINGS = ("uniform", "power", "energy", "gain")
DATA_MAPPINGS = ("energy", "gain")  # computed from a power spectrum of the training data


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _make_increasing(targets: list[float | int], size: int) -> list[int]:
    """Integers from targets with w_1 >= 1, at least +1 per step, and room left for the steps still
    to come (w_i <= size - (N - i)), so the result is strictly increasing and ends at size."""
    n = len(targets)
    out, prev = [], 0
    for i, t in enumerate(targets, start=1):
        t = size if i == n else t  # w[N] = size by definition (energy can reach its total earlier)
        w = min(max(int(t), prev + 1), size - (n - i))
        out.append(w)
        prev = w
    assert out[-1] == size, out
    return out


def _ring_energy(size: int, power_spectrum, mapping: str) -> torch.Tensor:
    """band[r] = energy of the ring max(u, v) = r, float64, after validating the spectrum."""
    if not isinstance(power_spectrum, torch.Tensor):
        raise ValueError(f"mapping={mapping!r} needs power_spectrum, a [size, size] tensor, got {type(power_spectrum)}")
    if tuple(power_spectrum.shape) != (size, size):
        raise ValueError(f"power_spectrum must have shape ({size}, {size}), got {tuple(power_spectrum.shape)}")
    if power_spectrum.dtype.is_complex or not power_spectrum.dtype.is_floating_point:
        raise ValueError(f"power_spectrum must be a real floating tensor, got {power_spectrum.dtype}")
    p = power_spectrum.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("power_spectrum must be finite and non-negative")
    idx = torch.arange(size)
    radius = torch.maximum(idx.unsqueeze(1), idx.unsqueeze(0))
    band = torch.zeros(size, dtype=torch.float64).index_add_(0, radius.flatten(), p.flatten())
    if not band.sum().item() > 0:
        raise ValueError("power_spectrum has zero total energy")
    return band


def _energy_targets(size: int, num_tokens: int, power_spectrum) -> list[int]:
    band = _ring_energy(size, power_spectrum, "energy")
    # cum[w] = energy inside the low-pass square max(u, v) < w, for w = 0..size.
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), band.cumsum(0)])
    total = cum[-1].item()
    # w_i = the smallest window whose low-pass square holds at least i/N of the energy.
    targets = [i / num_tokens * total for i in range(1, num_tokens + 1)]
    return [int(torch.searchsorted(cum, torch.tensor(t, dtype=torch.float64)).item()) for t in targets]


def _gain_targets(size: int, num_tokens: int, power_spectrum) -> list[int]:
    band = _ring_energy(size, power_spectrum, "gain")
    # resid[w] = energy outside the low-pass square = S^2 x the MSE of the exact sub-image (Parseval), w < size.
    resid = band.flip(0).cumsum(0).flip(0)
    live = (resid > 0).nonzero().flatten()
    top = int(live[-1])  # the last window whose sub-image still misses something
    if top == 0 or num_tokens == 1:
        return [1] * num_tokens  # nothing to share out: unit steps, then w_N = size
    # Quality in dB (up to a constant): q(w) = -10 log10 resid[w]. Token i ends where q has climbed i/(N-1) of
    # the way from q(0) to q(top); the last token takes whatever is left, up to the full image.
    q = -10.0 * torch.log10(resid[1 : top + 1])
    lo, hi = -10.0 * math.log10(resid[0].item()), q[-1].item()
    targets = torch.tensor([lo + (hi - lo) * i / (num_tokens - 1) for i in range(1, num_tokens)], dtype=torch.float64)
    return [int(w) + 1 for w in torch.searchsorted(q, targets - 1e-9 * abs(hi - lo))] + [size]


def spectral_windows(
    size: int,
    num_tokens: int,
    mapping: str = "power",
    gamma: float = 2.0,
    power_spectrum: torch.Tensor | None = None,
) -> list[int]:
    """The windows w[1..N] of the token-frequency mapping (strictly increasing, w[1] >= 1, w[N] = size).

    Args:
        size: image side S (the DCT has S x S coefficients).
        num_tokens: N, 1 <= N <= size.
        mapping: "uniform": w_i = round(S i / N) (equal radial steps).
            "power": w_i = round(S (i / N)^gamma) (Python's round, half to even), then at least +1 per
            step. For S=32, N=16, gamma=2 this gives 1 2 3 4 5 6 7 8 10 12 15 18 21 24 28 32, the
            list used by the design's calibration.
            "energy": w_i = the smallest window whose low-pass square {max(u, v) < w_i} holds at
            least i/N of the energy of `power_spectrum`, so each band B_i carries about an equal share,
            then at least +1 per step. On natural images the DC term alone holds a large share of the
            power, so this degenerates into one ring per token and a last token holding the rest.
            "gain": each token adds an equal step of reconstruction quality in dB. With R(w) the energy
            of `power_spectrum` outside the low-pass square (the squared error of the exact sub-image, by
            Parseval), w_i is the smallest window with -10 log10 R(w_i) at least i/(N-1) of the way from
            R(0) to R(w_top) on that log scale (w_top: the last window still missing energy), then at least
            +1 per step. Rings that carry almost nothing (odd rings of left-right symmetric images) are
            merged into the next token instead of getting one of their own.
        gamma: exponent of "power" (> 0; > 1 spends more tokens on low frequencies).
        power_spectrum: `[size, size]` mean DCT power |X[u, v]|^2 over the training data (only for
            "energy" and "gain").
    Every rule finally clamps w_i to size - (N - i) so that the remaining steps fit, and sets w_N = size.
    Returns:
        list of N Python ints.
    """
    if not _is_int(size) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not _is_int(num_tokens) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    if num_tokens > size:
        raise ValueError(f"num_tokens={num_tokens} exceeds size={size} (each token needs >= 1 new frequency)")
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if mapping not in DATA_MAPPINGS and power_spectrum is not None:
        raise ValueError(f"power_spectrum is only used by mappings {DATA_MAPPINGS}, got mapping={mapping!r}")

    n = num_tokens
    if mapping == "uniform":
        targets = [round(size * i / n) for i in range(1, n + 1)]
    elif mapping == "power":
        targets = [round(size * (i / n) ** gamma) for i in range(1, n + 1)]
    elif mapping == "energy":
        targets = _energy_targets(size, n, power_spectrum)
    else:
        targets = _gain_targets(size, n, power_spectrum)
    return _make_increasing(targets, size)
