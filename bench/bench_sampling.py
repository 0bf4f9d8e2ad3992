"""Generator sampling with and without the static KV cache.

Run with `pytest bench/bench_sampling.py --benchmark-only`. The `fmnist` generator (random init, seed 0,
eval mode, fp32) samples batch 1 and batch 64 with CFG 2.0 (2 and 128 rows through the model), with
`kv_cache=True` (prefill + one-token decode steps) and `kv_cache=False` (the whole prefix recomputed
every step). On CUDA the `d16` generator in bf16 also samples batch 64 both ways. `extra_info` holds
images/s and tokens/s (generated codes; the CFG rows are not counted) and the rows through the model.

Correctness, checked once per model: with the same torch.Generator seed both paths give identical
codes, sampled (temperature 1) and greedy (top_k=1). d16 runs in bf16, where the two paths round
differently and a near-tie may flip, so there the fraction of equal codes is recorded, not asserted.

On CPU the module runs single-threaded: on the shared 2-core machine two OpenMP threads spin-waited
behind other jobs and one sampling call took 5-30x longer (measured), and one round per case is
enough to compare the two paths, so the file finishes in well under a minute.
"""

import pytest
import torch

from spectralar.config import preset
from spectralar.generator import SpectralGPT

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CFG_SCALE = 2.0
AGREE_BATCH = 8
_agreement: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def cpu_threads():
    old = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield torch.get_num_threads()
    torch.set_num_threads(old)


def _build(name: str, dtype: torch.dtype) -> SpectralGPT:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = SpectralGPT(preset("generator", name))
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def fmnist():
    return _build("fmnist", torch.float32)


@pytest.fixture(scope="module")
def d16():
    return _build("d16", torch.bfloat16)


def _generate(model, labels, kv_cache, **kw):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    codes = model.generate(labels, cfg_scale=CFG_SCALE, kv_cache=kv_cache, generator=g, **kw)
    if CUDA:
        torch.cuda.synchronize()
    return codes


def agreement(name: str, model) -> tuple[float, float]:
    """(fraction of equal codes sampled, greedy) between kv_cache=True and False; computed once per model."""
    if name not in _agreement:
        labels = torch.arange(AGREE_BATCH, device=DEVICE) % model.config.num_classes
        fracs = []
        for kw in ({}, {"top_k": 1}):
            a, b = _generate(model, labels, True, **kw), _generate(model, labels, False, **kw)
            fracs.append((a == b).double().mean().item())
        _agreement[name] = (fracs[0], fracs[1])
    return _agreement[name]


def _run(benchmark, model, batch, kv_cache, threads, rounds, warmup):
    cfg = model.config
    labels = torch.arange(batch, device=DEVICE) % cfg.num_classes
    codes = benchmark.pedantic(_generate, args=(model, labels, kv_cache), rounds=rounds, iterations=1,
                               warmup_rounds=warmup)  # fmt: skip
    assert codes.shape == (batch, cfg.num_tokens) and codes.dtype == torch.int64
    assert bool(((codes >= 0) & (codes < cfg.codebook_size)).all()), "code index out of range"
    info = benchmark.extra_info
    info.update(batch=batch, rows=2 * batch, kv_cache=kv_cache, device=DEVICE, threads=threads,
                dtype=str(next(model.parameters()).dtype))  # fmt: skip
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        mean = stats.stats.mean
        info["images_per_s"] = batch / mean
        info["tokens_per_s"] = batch * cfg.num_tokens / mean


@pytest.mark.parametrize("kv_cache", [True, False], ids=["kv", "recompute"])
@pytest.mark.parametrize("batch", [1, 64])
def test_sampling_fmnist(benchmark, fmnist, cpu_threads, batch, kv_cache):
    sampled, greedy = agreement("fmnist", fmnist)
    assert sampled == 1.0, f"kv_cache=True/False sampled different codes ({100 * sampled:.1f}% equal)"
    assert greedy == 1.0, f"kv_cache=True/False greedy codes differ ({100 * greedy:.1f}% equal)"
    # CPU: the batch-64 recompute case costs ~3 s a call on this machine, so one round there
    rounds, warmup = (5, 1) if CUDA else ((3, 1) if batch == 1 else (1, 0))
    _run(benchmark, fmnist, batch, kv_cache, cpu_threads, rounds, warmup)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_cache", [True, False], ids=["kv", "recompute"])
def test_sampling_d16_bf16(benchmark, d16, cpu_threads, kv_cache):
    sampled, greedy = agreement("d16", d16)
    benchmark.extra_info.update(equal_codes_sampled=sampled, equal_codes_greedy=greedy,
                                params=sum(p.numel() for p in d16.parameters()))  # fmt: skip
    _run(benchmark, d16, 64, kv_cache, cpu_threads, rounds=3, warmup=1)
