"""vq_nearest on CPU against `cdist + argmin / topk`, per thread count: the table in docs/kernels.md.

    python -m bench.vq_cpu_sweep                  # 1 and 2 threads, the three shapes, k = 1, 4, 16
    python -m bench.vq_cpu_sweep --threads 4 --rounds 30
    python -m bench.vq_cpu_sweep --small          # small problems: the dense path against the general one

Each round times every provider once, one after the other (in a random order), so a noisy machine slows them
alike; the medians are printed with their ratio (above 1: ours is faster), and ours again on a codebook changed
before every call ("cold": the codebook state the reference keeps between calls never matches). Our results are
checked against `cdist` once per case (the same codes, up to fp32 ties). The pytest benchmarks (bench_vq.py) time
the same providers one at a time.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time

import torch

from spectralar_kernels import vq_nearest
from spectralar_kernels.vq import dense

SHAPES = [(1024, 1024), (1024, 4096), (4096, 4096)]  # M x K, code dim 12: the fmnist and bench sizes
SMALL_SHAPES = [(4, 4096), (16, 1024), (64, 100), (128, 128)]  # within vq/dense.py's limits at d = 12


def plain(z: torch.Tensor, c: torch.Tensor, k: int) -> torch.Tensor:
    """The peer: torch.cdist, then argmin (k = 1) or the k smallest; writes the M x K distance matrix."""
    d = torch.cdist(z, c)
    return d.argmin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices


def median_ms(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] * 1e3


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median ms per provider; each round times every provider once, in a fresh random order (a provider finds the
    caches its predecessor left: each follows each other one, and itself, alike)."""
    times = {name: [] for name in fns}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(fns.items())
        rng.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: median_ms(t) for name, t in times.items()}


_CHANGING: dict = {}


def cold(z: torch.Tensor, c: torch.Tensor, k: int, lookup=None) -> torch.Tensor:
    """vq_nearest (or `lookup(z, codebook, k)`) on a copy of the fp32 codebook c whose first value moves by one ulp
    before every call: a codebook changed since the last call, as in training, so the state kept between calls
    never matches (the timing includes the one-value update, about a microsecond)."""
    key = (c.data_ptr(), tuple(c.shape))
    copy = _CHANGING.get(key)
    if copy is None:
        _CHANGING.clear()
        copy = _CHANGING[key] = c.clone()
    copy.view(torch.int32)[0, 0] += 1
    return vq_nearest(z, copy, topk=k)[0] if lookup is None else lookup(z, copy, k)


def general(z: torch.Tensor, c: torch.Tensor, metric: str, k: int) -> torch.Tensor:
    """vq_nearest with the small-problem path switched off: the GEMM-and-bound reference whatever the size."""
    saved, dense.DENSE_ELEMS = dense.DENSE_ELEMS, 0
    try:
        return vq_nearest(z, c, metric, topk=k)[0]
    finally:
        dense.DENSE_ELEMS = saved


def sweep(threads: int, rounds: int, d: int = 12) -> None:
    torch.set_num_threads(threads)
    print(f"threads={threads}: ms per call, median of {rounds} interleaved rounds: ours / cdist (ratio), and ours")
    print("  when the codebook's state is made afresh (cold: a codebook changed since the last call)")
    g = torch.Generator().manual_seed(0)
    for M, K in SHAPES:
        z, c = torch.randn(M, d, generator=g), torch.randn(K, d, generator=g)
        cells = []
        for k in (1, 4, 16):
            ours = functools.partial(lambda z, c, k: vq_nearest(z, c, topk=k)[0], z, c, k)
            theirs = functools.partial(plain, z, c, k)
            got, want = ours(), theirs()
            chosen = (z[:, None] - c[got]).pow(2).sum(-1)
            best = (z[:, None] - c[want]).pow(2).sum(-1)
            assert (chosen - best).abs().max() <= 1e-4 * (1 + best.abs().max()), f"{M}x{K} k={k}: not the nearest"
            ms = interleaved({"ours": ours, "cold": functools.partial(cold, z, c, k), "cdist": theirs}, rounds)
            a, b = ms["ours"], ms["cdist"]
            cells.append(f"k={k}: {a:.2f} / {b:.2f} ({b / a:.2f}x), cold {ms['cold']:.2f}")
        print(f"  {M} x {K}:  " + "   ".join(cells))


def sweep_small(threads: int, rounds: int, d: int = 12) -> None:
    """Small problems: vq_nearest (the dense path) against the general path and, for l2, cdist + argmin / topk."""
    torch.set_num_threads(threads)
    print(f"threads={threads}, small problems: ms per call, median of {rounds} interleaved rounds")
    print("  (ours / general path (speed-up); cdist for l2)")
    g = torch.Generator().manual_seed(0)
    for M, K in SMALL_SHAPES:
        z, c = torch.randn(M, d, generator=g), torch.randn(K, d, generator=g)
        assert dense.fits(z, c), f"{M} x {K} at d = {d} is not a small problem"
        for metric in ("l2", "cosine"):
            cells = []
            for k in (1, 4):
                fns = {
                    "ours": functools.partial(lambda z, c, m, k: vq_nearest(z, c, m, topk=k)[0], z, c, metric, k),
                    "general": functools.partial(general, z, c, metric, k),
                }
                if metric == "l2":
                    fns["cdist"] = functools.partial(plain, z, c, k)
                got, want = fns["ours"](), fns["general"]()
                assert torch.equal(got, want), f"{M}x{K} {metric} k={k}: the two paths differ"
                ms = interleaved(fns, rounds)
                cell = f"k={k}: {ms['ours']:.2f} / {ms['general']:.2f} ({ms['general'] / ms['ours']:.1f}x)"
                if "cdist" in ms:
                    cell += f", cdist {ms['cdist']:.2f}"
                cells.append(cell)
            print(f"  {M} x {K} {metric:>6}:  " + "   ".join(cells))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to sweep")
    p.add_argument("--rounds", type=int, default=60, help="interleaved rounds per case (default 60)")
    p.add_argument("--small", action="store_true", help="small problems instead: the dense path against the general")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.rounds < 1:
        p.error("--threads and --rounds must be positive")
    try:
        for t in args.threads:
            (sweep_small if args.small else sweep)(t, args.rounds)
    except KeyboardInterrupt:  # the rows printed so far are complete
        sys.stderr.write("python -m bench.vq_cpu_sweep: interrupted (Ctrl-C); the lines above are complete\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
