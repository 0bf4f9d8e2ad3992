"""vq_nearest benchmarks: fused Triton kernel vs the chunked reference and the unfused peers.

Providers:
  ref          the chunked PyTorch reference (never more than 2^22 scores alive)
  vq-v1        the first fused kernels (two launches; CUDA only: the interpreter is not a benchmark)
  vq-v2        one launch on the cached padded codebook (a fixed codebook: the cache hits; CUDA only)
  vq-v2-cold   vq-v2 with the codebook cache emptied before every call (a codebook rebuilt per call,
               as a model that normalises its codebook in forward does; CUDA only)
  cdist        torch.cdist(z, c).argmin(1)                       (writes the M x K distance matrix)
  matmul       (||z||^2 - 2 z c^T + ||c||^2).argmin(1)           (writes M x K, several times)
Peak memory goes to benchmark.extra_info: on CUDA measured (torch.cuda.max_memory_allocated above
what was allocated before the call), on CPU the largest intermediate each provider allocates,
computed analytically and labelled as such. Correctness is checked once per provider before timing
against the float64 reference; speed is never asserted.
"""

import pytest
import torch

from spectralar_kernels.vq import ref

from . import cases

PROVIDERS = ["ref", "vq-v1", "vq-v2", "vq-v2-cold", "cdist", "matmul"]
GPU_ONLY = ("vq-v1", "vq-v2", "vq-v2-cold")
# (device, M, K, d): 64 images x 16 tokens against the fmnist codebook; 64 x 64 tokens against
# ImageNet-size codebooks (code dim 12 in both; the GPU report's cases, bench/cases.py).
CASES = [
    pytest.param("cpu", 64 * 16, 1024, 12, id="cpu-M1024-K1024-d12"),
    pytest.param("cuda", 64 * 16, 1024, 12, id="cuda-M1024-K1024-d12", marks=pytest.mark.gpu),
    *(pytest.param("cuda", m, k, d, id=f"cuda-{name}", marks=pytest.mark.gpu) for name, (m, k, d) in cases.VQ.items()),
]


def _cdist(z, c):
    return torch.cdist(z, c).argmin(dim=1)


def _matmul(z, c):
    d2 = z.pow(2).sum(1, keepdim=True) - 2 * (z @ c.T) + c.pow(2).sum(1)  # [M, K]
    return d2.argmin(dim=1)


def _triton(impl: str, cold: bool = False):
    def run(z, c):
        from spectralar_kernels.vq import triton as vq_triton

        if cold:
            vq_triton._CACHE.clear()
        return vq_triton.vq_nearest_fwd(z, c, "l2", impl)[0]

    return run


FUNCS = {
    "ref": lambda z, c: ref.vq_nearest_ref(z, c)[0],
    "vq-v1": _triton("vq-v1"),
    "vq-v2": _triton("vq-v2"),
    "vq-v2-cold": _triton("vq-v2", cold=True),
    "cdist": _cdist,
    "matmul": _matmul,
}


def analytic_peak_bytes(provider: str, M: int, K: int) -> int:
    """Largest single intermediate a provider allocates on CPU (fp32), from the algorithm, not measured."""
    if provider == "ref":
        return 4 * min(M * K, max(ref.CHUNK_ELEMS // K, 1) * K)  # one chunk of scores
    return 4 * M * K  # cdist / matmul: the full distance matrix (the kernels never run on CPU)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("device, M, K, d", CASES)
def test_vq_nearest(benchmark, provider, device, M, K, d):
    if provider in GPU_ONLY and device != "cuda":
        pytest.skip(f"{provider} needs CUDA (the interpreter is not a benchmark)")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(M, d, generator=g).to(device)
    codebook = torch.randn(K, d, generator=g).to(device)
    fn = FUNCS[provider]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    # correctness once: the chosen code's float64 distance must match the float64 minimum
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    idx = fn(z, codebook)
    sync()
    if device == "cuda":
        benchmark.extra_info["peak_extra_bytes (measured)"] = torch.cuda.max_memory_allocated() - base
    else:
        benchmark.extra_info["peak_intermediate_bytes (analytic)"] = analytic_peak_bytes(provider, M, K)
    _, best = ref.vq_nearest_ref(z, codebook, upcast=True)
    chosen = (z.double() - codebook.double()[idx]).pow(2).sum(1)
    scale = z.double().pow(2).sum(1).max() + codebook.double().pow(2).sum(1).max()
    assert (chosen - best).abs().max().item() <= 1e-5 * scale.item(), f"{provider}: not the nearest code"

    def run():
        out = fn(z, codebook)
        sync()
        return out

    benchmark(run)
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.mean
        benchmark.extra_info["TFLOP/s (2MKd)"] = 2 * M * K * d / seconds / 1e12
