"""vq_nearest on CPU against `cdist + argmin / topk`, per thread count: the table in docs/kernels.md.

    python -m bench.vq_cpu_sweep                  # 1 and 2 threads, the three shapes, k = 1, 4, 16
    python -m bench.vq_cpu_sweep --threads 4 --rounds 30

Each round times every provider once, one after the other (in alternating order), so a noisy machine slows them
alike; the medians are printed with their ratio (above 1: ours is faster). Our results are checked against
`cdist` once per case (the same codes, up to fp32 ties). The pytest benchmarks (bench_vq.py) time the same
providers one at a time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from spectralar_kernels import vq_nearest

SHAPES = [(1024, 1024), (1024, 4096), (4096, 4096)]  # M x K, code dim 12: the fmnist and bench sizes


def plain(z: torch.Tensor, c: torch.Tensor, k: int) -> torch.Tensor:
    """The peer: torch.cdist, then argmin (k = 1) or the k smallest; writes the M x K distance matrix."""
    d = torch.cdist(z, c)
    return d.argmin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices


def median_ms(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] * 1e3


def sweep(threads: int, rounds: int, d: int = 12) -> None:
    torch.set_num_threads(threads)
    print(f"threads={threads}: ms per call, median of {rounds} interleaved rounds (ratio: cdist / ours)")
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
            times = {"ours": [], "cdist": []}
            for r in range(rounds):  # the order alternates: whichever runs second finds the caches the first left
                for name, fn in (("ours", ours), ("cdist", theirs))[:: 1 if r % 2 == 0 else -1]:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            a, b = median_ms(times["ours"]), median_ms(times["cdist"])
            cells.append(f"k={k}: {a:.2f} / {b:.2f} ({b / a:.2f}x)")
        print(f"  {M} x {K}:  " + "   ".join(cells))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to sweep")
    p.add_argument("--rounds", type=int, default=60, help="interleaved rounds per case (default 60)")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.rounds < 1:
        p.error("--threads and --rounds must be positive")
    try:
        for t in args.threads:
            sweep(t, args.rounds)
    except KeyboardInterrupt:  # the rows printed so far are complete
        sys.stderr.write("python -m bench.vq_cpu_sweep: interrupted (Ctrl-C); the lines above are complete\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
