"""DCT benchmarks: reference vs Triton vs scipy.fft.dctn vs torch-dct (if installed) vs unfold-matmul-fold blockwise.

Run with `pytest bench/bench_dct.py --benchmark-only`. Cases: the whole-image DCT of the fmnist preset (32 x
32, one channel), of ImageNet-size images (256 x 256 x 3), and the JPEG-style 8 x 8 blockwise DCT; the
ImageNet-size ones are the GPU report's (bench/cases.py). CPU runs use small fp32 batches (the Triton provider
is CUDA-only: the interpreter is not a speed); CUDA runs use bigger batches. Each case checks correctness once
against the float64 reference, then times; `extra_info` holds GB/s (one read + one write of the tensor, the
floor for the blockwise case) and GFLOP/s of the matmul form (2 (H + W) flops per pixel), plus peak memory on
CUDA.

`test_dct_cpu_sweep`: each CPU DCT reference (the product on CPU) against the strongest plain path there,
scipy.fft, per size 8 ... 512 px, with 1 and 2 threads (torch.set_num_threads(t) for ours, `workers=t` for scipy:
both may use t cores): the whole-plane `dct2d` / `idct2d` against `dctn` / `idctn` over the last two axes, and the
1-D `dct` / `idct` (scipy's own functions, along the last axis) against scipy's. Each case also times both
providers side by side, interleaved (minimum of several repeats: robust on a shared machine), and the `ref` case
records `speed_vs_scipy` = scipy time / our time (>= 1: ours is faster) in `extra_info`; `python -m
bench.bench_dct --table FILE.json` prints the table of a `--benchmark-json` run (docs/benchmarks.md).
"""

import time

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from spectralar_kernels import dct, dct2d, idct, idct2d
from spectralar_kernels.testing import max_err
from spectralar_kernels.transforms import ref

from . import cases

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# name: (shape [B, C, H, W], block)
CASES = {
    "fmnist-32x32": ((256 if CUDA else 64, 1, 32, 32), None),
    **{name: (shape if CUDA else cases.smaller(shape, 2), block) for name, (shape, block) in cases.DCT.items()},
}
PROVIDERS = ["ref", "triton", "scipy", "unfold", "torch_dct"]


def unfold_blockwise_dct(x: torch.Tensor, block: int) -> torch.Tensor:
    """Peer: blocks as columns (F.unfold), one matmul with kron(D, D), F.fold back."""
    b, c, h, w = x.shape
    kron = torch.kron(*(ref.dct_basis(block, x.dtype, x.device),) * 2)  # [b*b, b*b] acting on row-major blocks
    cols = F.unfold(x.reshape(b * c, 1, h, w), kernel_size=block, stride=block)  # [B*C, b*b, L]
    return F.fold(kron @ cols, (h, w), kernel_size=block, stride=block).reshape(b, c, h, w)


def _provider_fn(provider, x, block, monkeypatch):
    if provider == "triton" and not CUDA:
        pytest.skip("the Triton provider is timed on CUDA only")
    if provider == "unfold" and block is None:
        pytest.skip("unfold-matmul-fold is a blockwise peer")
    if provider == "torch_dct":
        # torch-dct 0.1.6 still imports on torch 2.13 (checked 2026-11-28); optional peer, not a dependency
        torch_dct = pytest.importorskip("torch_dct", reason="pip install torch-dct to compare against it")
        if block is not None:
            pytest.skip("torch-dct has no blockwise mode")
        return lambda: torch_dct.dct_2d(x, norm="ortho")
    if provider in ("ref", "triton"):
        monkeypatch.setenv("SPECTRALAR_KERNELS", provider)
        return lambda: dct2d(x, block=block)
    if provider == "unfold":
        return lambda: unfold_blockwise_dct(x, block)
    a = x.cpu().numpy()
    if block is None:
        return lambda: torch.from_numpy(scipy.fft.dctn(a, type=2, norm="ortho", axes=(-2, -1), workers=2))
    b, c, h, w = a.shape
    tiles = np.ascontiguousarray(a.reshape(b, c, h // block, block, w // block, block).swapaxes(3, 4))

    def scipy_blocks():
        out = scipy.fft.dctn(tiles, type=2, norm="ortho", axes=(-2, -1), workers=2)
        return torch.from_numpy(out.swapaxes(3, 4).reshape(b, c, h, w))

    return scipy_blocks


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_dct2d(benchmark, case, provider, monkeypatch):
    shape, block = CASES[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    fn = _provider_fn(provider, x, block, monkeypatch)
    oracle = ref.dct2d(x.double(), block, upcast=True)
    err = max_err(fn().to(oracle.device), oracle)
    assert err < 1e-4 * max(1.0, oracle.abs().max().item()), f"{provider}: max err {err:.2e}"
    if CUDA:
        torch.cuda.reset_peak_memory_stats()

    def timed():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark.pedantic(timed, rounds=20 if CUDA else 5, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        mean = stats.stats.mean
        n, h, w = x.numel(), shape[-2], shape[-1]
        inner = 2 * block if block else h + w
        benchmark.extra_info.update(
            max_err=err, gbps=2 * n * x.element_size() / mean / 1e9, gflops=2 * inner * n / mean / 1e9
        )
        if CUDA:
            benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20


SWEEP_SIZES = [8, 16, 32, 64, 128, 256, 512]
SWEEP_FNS = {  # name: (ours, scipy's, keyword arguments for both)
    "dct2d": (dct2d, scipy.fft.dctn, dict(norm="ortho", axes=(-2, -1))),
    "idct2d": (idct2d, scipy.fft.idctn, dict(norm="ortho", axes=(-2, -1))),
    "dct": (dct, scipy.fft.dct, dict(norm="ortho")),
    "idct": (idct, scipy.fft.idct, dict(norm="ortho")),
}


def _sweep_input(n: int) -> torch.Tensor:
    """[B, 3, n, n] with ~0.8 M pixels (B >= 1): every size takes well over 0.1 ms."""
    return torch.randn(max(1, 2**18 // (n * n)), 3, n, n, generator=torch.Generator().manual_seed(0))


def _side_by_side(fns: dict, repeats: int = 15) -> dict:
    """Minimum wall time (ms) per function, the functions interleaved in each round. Each timed call follows an
    untimed call of the same function: right after torch's parallel ops, its OpenMP workers still spin on the
    other core, which slowed a scipy workers=2 call by up to 1.7x at 128-256 px (dctn 2.1-2.7 ms when timed
    right after ours, 1.3-1.4 ms otherwise). The extra call narrows that; OMP_WAIT_POLICY=PASSIVE removes it
    but slows torch's own 2-thread runs by ~15%."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: t * 1e3 for name, t in best.items()}


@pytest.mark.parametrize("provider", ["ref", "scipy"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fn", list(SWEEP_FNS))
@pytest.mark.parametrize("n", SWEEP_SIZES)
def test_dct_cpu_sweep(benchmark, n, fn, threads, provider, monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "ref")
    x = _sweep_input(n)
    a = x.numpy()
    ours, theirs, kwargs = SWEEP_FNS[fn]
    scipy_kwargs = dict(kwargs, type=2, workers=threads)
    ours_kwargs = {} if fn.endswith("2d") else dict(kwargs)  # dct2d / idct2d: orthonormal over the last 2 dims
    fns = {
        "ref": lambda: ours(x, **ours_kwargs),
        "scipy": lambda: torch.from_numpy(theirs(a, **scipy_kwargs)),
    }
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        oracle = torch.from_numpy(theirs(a.astype(np.float64), **dict(kwargs, type=2)))
        err = max_err(fns[provider](), oracle)
        assert err < 1e-4 * max(1.0, oracle.abs().max().item()), f"{provider}: max err {err:.2e}"
        benchmark.pedantic(fns[provider], rounds=5, iterations=1, warmup_rounds=1)
        if provider == "ref" and not benchmark.disabled:
            ms = _side_by_side(fns)
            benchmark.extra_info.update(
                max_err=err,
                threads=threads,
                planes=x.shape[0] * x.shape[1],
                ms_ref=ms["ref"],
                ms_scipy=ms["scipy"],
                speed_vs_scipy=ms["scipy"] / ms["ref"],
            )
    finally:
        torch.set_num_threads(saved)


def table(path: str) -> str:
    """The markdown table of scipy time / ours per size, function and thread count from a --benchmark-json file."""
    import json

    runs = json.load(open(path, encoding="utf-8"))["benchmarks"]
    ratio = {}
    for r in runs:
        p, info = r["params"], r.get("extra_info", {})
        if r["name"].startswith("test_dct_cpu_sweep") and "speed_vs_scipy" in info:
            ratio[(p["n"], p["fn"], p["threads"])] = (info["speed_vs_scipy"], info["ms_ref"], info["ms_scipy"])
    cols = [(fn, t) for t in (1, 2) for fn in SWEEP_FNS]
    lines = ["| n | " + " | ".join(f"{fn} {t} thr." for fn, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in SWEEP_SIZES:
        cells = [f"{ratio[(n, fn, t)][0]:.2f}" if (n, fn, t) in ratio else "-" for fn, t in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["--table"] or len(sys.argv) != 3:
        sys.exit("usage: python -m bench.bench_dct --table FILE.json  (a pytest bench/bench_dct.py --benchmark-json)")
    print(table(sys.argv[2]), end="")
