"""vq_nearest benchmarks: the nearest code and the k nearest, ours side by side with the unfused peers.

`pytest bench/bench_vq.py --benchmark-only` groups each case ("vq nearest ..." and "vq top-k ...") so the
table shows every provider of one case together. Providers:
  ref          the reference (vq_nearest_ref: the CPU path; exact ranking, never more than 2^22 scores alive; a
               fixed codebook: its state, kept between calls, is used again)
  ref-cold     the reference on a codebook changed by one ulp before every call (vq_cpu_sweep.cold): what a
               codebook updated every training step pays (its kept state never matches)
  vq-v1        the general fused kernels (two launches; CUDA only: the interpreter is not a benchmark)
  vq-v2        one launch on the cached padded codebook (a fixed codebook: the cache hits; CUDA only)
  vq-v2-cold   vq-v2 preparing its codebook every call (cache=False): what a codebook updated every training
               step pays (CUDA only)
  cdist        torch.cdist(z, c).argmin(1), or .topk(k, largest=False)      (writes the M x K distance matrix)
  matmul       (||c||^2 - 2 z c^T).argmin(1)                               (writes M x K, several times)
Peak memory goes to benchmark.extra_info: on CUDA measured (torch.cuda.max_memory_allocated above what was
allocated before the call), on CPU the largest intermediate each provider allocates, computed analytically and
labelled as such. Correctness is checked once per provider before timing against the float64 reference; speed
is never asserted. `python -m bench.vq_cpu_sweep` times ref against cdist on CPU interleaved, per thread count.
"""

import pytest
import torch

from spectralar_kernels.vq import ref

from . import cases, vq_cpu_sweep

NEAREST = ["ref", "ref-cold", "vq-v1", "vq-v2", "vq-v2-cold", "cdist", "matmul"]
TOPK = ["ref", "ref-cold", "cdist"]
GPU_ONLY = ("vq-v1", "vq-v2", "vq-v2-cold")
# (device, M, K, d): 64 images x 16 tokens against the fmnist codebook and a 4x larger one on CPU; 64 x 64 tokens
# against ImageNet-size codebooks on CUDA (code dim 12 in all; the GPU report's cases, bench/cases.py).
CASES = [
    pytest.param("cpu", 64 * 16, 1024, 12, id="cpu-M1024-K1024-d12"),
    pytest.param("cpu", 64 * 16, 4096, 12, id="cpu-M1024-K4096-d12"),
    pytest.param("cuda", 64 * 16, 1024, 12, id="cuda-M1024-K1024-d12", marks=pytest.mark.gpu),
    *(pytest.param("cuda", m, k, d, id=f"cuda-{name}", marks=pytest.mark.gpu) for name, (m, k, d) in cases.VQ.items()),
]


def _triton(impl: str, cold: bool = False):
    def run(z, c, k):
        from spectralar_kernels.vq.triton import vq_nearest_fwd

        return vq_nearest_fwd(z, c, "l2", impl, cache=not cold)[0][:, None]

    return run


def _matmul(z, c, k):
    return (c.pow(2).sum(1) - 2 * (z @ c.T)).argmin(dim=1, keepdim=True)  # [M, K], ||z||^2 left out


FUNCS = {
    "ref": lambda z, c, k: ref.vq_nearest_ref(z, c, topk=k)[0],
    "ref-cold": lambda z, c, k: vq_cpu_sweep.cold(z, c, k, lambda z, c, k: ref.vq_nearest_ref(z, c, topk=k)[0]),
    "vq-v1": _triton("vq-v1"),
    "vq-v2": _triton("vq-v2"),
    "vq-v2-cold": _triton("vq-v2", cold=True),
    "cdist": vq_cpu_sweep.plain,
    "matmul": _matmul,
}


def analytic_peak_bytes(provider: str, M: int, K: int) -> int:
    """Largest single intermediate a provider allocates on CPU (fp32), from the algorithm, not measured."""
    if provider.startswith("ref"):
        return 4 * min(M * K, ref.CHUNK_ELEMS)  # one chunk of scores
    return 4 * M * K  # cdist / matmul: the full distance matrix (the kernels never run on CPU)


def run_case(benchmark, provider, device, M, K, d, k):
    if provider in GPU_ONLY and device != "cuda":
        pytest.skip(f"{provider} needs CUDA (the interpreter is not a benchmark)")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(M, d, generator=g).to(device)
    codebook = torch.randn(K, d, generator=g).to(device)
    fn = FUNCS[provider]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    # correctness once: the chosen codes' float64 distances match the float64 k smallest
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    idx = fn(z, codebook, k)
    sync()
    if device == "cuda":
        benchmark.extra_info["peak_extra_bytes (measured)"] = torch.cuda.max_memory_allocated() - base
    else:
        benchmark.extra_info["peak_intermediate_bytes (analytic)"] = analytic_peak_bytes(provider, M, K)
    _, best = ref.vq_nearest_ref(z, codebook, upcast=True, topk=k)
    chosen = (z.double()[:, None, :] - codebook.double()[idx]).pow(2).sum(-1)
    scale = z.double().pow(2).sum(1).max() + codebook.double().pow(2).sum(1).max()
    assert (chosen - best).abs().max().item() <= 1e-5 * scale.item(), f"{provider}: not the nearest codes"

    def run():
        out = fn(z, codebook, k)
        sync()
        return out

    benchmark(run)
    if benchmark.stats is not None:
        benchmark.extra_info["TFLOP/s (2MKd)"] = 2 * M * K * d / benchmark.stats.stats.mean / 1e12


@pytest.mark.parametrize("provider", NEAREST)
@pytest.mark.parametrize("device, M, K, d", CASES)
def test_vq_nearest(benchmark, provider, device, M, K, d):
    benchmark.group = f"vq nearest {device} M={M} K={K} d={d}"
    run_case(benchmark, provider, device, M, K, d, 1)


@pytest.mark.parametrize("provider", TOPK)
@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("device, M, K, d", CASES)
def test_vq_topk(benchmark, provider, k, device, M, K, d):
    """vq_nearest(..., topk=k) runs the reference on every device: ours vs cdist + topk."""
    benchmark.group = f"vq top-{k} {device} M={M} K={K} d={d}"
    run_case(benchmark, provider, device, M, K, d, k)
