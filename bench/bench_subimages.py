"""Spectral sub-image benchmarks: reference vs Triton vs scipy.fft (dctn, mask, idctn).

Run with `pytest bench/bench_subimages.py --benchmark-only`. Cases: one window per sample (the tokenizer's
training targets) and all N prefixes (progressive decoding), at the fmnist size (32 x 32 x 1, N = 16) and at
ImageNet size (256 x 256 x 3, N = 64: the GPU report's cases, bench/cases.py; all prefixes CUDA only on the
reference path's account: it materialises N full-size coefficient tensors), in fp32 and (CUDA only) bf16. CPU
runs use small batches and skip the Triton provider (the interpreter is not a speed). Each case checks
correctness once against the float64 reference (bf16: within 2x the error of the bf16 reference, the tests'
rule), then times; `extra_info` holds GB/s (read x once, write the outputs), plus peak memory on CUDA.
"""

import numpy as np
import pytest
import scipy.fft
import torch

from spectralar_kernels import spectral_subimages, spectral_windows
from spectralar_kernels.subimages import ref
from spectralar_kernels.testing import assert_close_to_oracle, max_err

from . import cases

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# name: (shape [B, C, S, S], number of tokens N, all_prefixes)
CASES = {
    "fmnist-32-per-sample": ((256 if CUDA else 64, 1, 32, 32), 16, False),
    "fmnist-32-all16": ((256 if CUDA else 16, 1, 32, 32), 16, True),
    **{name: (shape if CUDA else cases.smaller(shape, 2), n, all_prefixes)
       for name, (shape, n, all_prefixes) in cases.SUBIMAGES.items()},
}  # fmt: skip
PROVIDERS = ["ref", "triton", "scipy"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def scipy_subimages(a: np.ndarray, windows: list[int], all_prefixes: bool) -> np.ndarray:
    coeffs = scipy.fft.dctn(a, type=2, norm="ortho", axes=(-2, -1), workers=2)
    outs = []
    for i, w in enumerate(windows):
        masked = np.zeros_like(coeffs[:, None] if all_prefixes else coeffs[i])
        if all_prefixes:
            masked[..., :w, :w] = coeffs[:, None, :, :w, :w]
        else:
            masked[..., :w, :w] = coeffs[i, ..., :w, :w]
        outs.append(scipy.fft.idctn(masked, type=2, norm="ortho", axes=(-2, -1), workers=2))
    return np.concatenate(outs, axis=1) if all_prefixes else np.stack(outs)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_spectral_subimages(benchmark, case, provider, dtype, monkeypatch):
    shape, n_tokens, all_prefixes = CASES[case]
    if provider == "triton" and not CUDA:
        pytest.skip("the Triton provider is timed on CUDA only")
    if shape[-1] == 256 and all_prefixes and not CUDA:
        pytest.skip("all 64 prefixes of 256 x 256 images is a GPU-sized case")
    if dtype != "fp32" and (provider == "scipy" or not CUDA):
        pytest.skip("bf16 is timed on CUDA, for the reference and Triton")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(DEVICE, DTYPES[dtype])
    size = shape[-1]
    prefix_windows = spectral_windows(size, n_tokens, "power", 2.0)
    if all_prefixes:
        windows = prefix_windows
    else:
        windows = torch.tensor(prefix_windows)[torch.randint(0, n_tokens, (shape[0],), generator=gen)].to(DEVICE)
    if provider == "scipy":
        a = x.cpu().numpy()
        w_list = windows if all_prefixes else windows.tolist()
        fn = lambda: torch.from_numpy(scipy_subimages(a, w_list, all_prefixes))
    else:
        monkeypatch.setenv("SPECTRALAR_KERNELS", provider)
        fn = lambda: spectral_subimages(x, windows, all_prefixes=all_prefixes)
    out = fn()
    head = windows if all_prefixes else windows[:2]
    oracle = ref.spectral_subimages(x[:2], head, all_prefixes, upcast=True)
    err = max_err(out[:2].to(oracle.device), oracle)
    if dtype == "fp32":
        assert err < 1e-4 * max(1.0, oracle.abs().max().item()), f"{provider}: max err {err:.2e}"
    else:
        same_precision = ref.spectral_subimages(x[:2], head, all_prefixes)
        assert_close_to_oracle(out[:2], oracle, same_precision_ref=same_precision, name=f"{provider} {case} {dtype}")
    del out
    if CUDA:
        torch.cuda.reset_peak_memory_stats()

    def timed():
        res = fn()
        if CUDA:
            torch.cuda.synchronize()
        return res

    benchmark.pedantic(timed, rounds=10 if CUDA else 3, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        n_out = len(windows) if all_prefixes else 1
        nbytes = x.numel() * x.element_size() * (1 + n_out)
        benchmark.extra_info.update(max_err=err, gbps=nbytes / stats.stats.mean / 1e9)
        if CUDA:
            benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
