"""Generator sampling with and without the static KV cache.

Run with `pytest bench/bench_sampling.py --benchmark-only`. The `fmnist` generator (random init, seed 0,
eval mode, fp32) samples batch 1 and batch 64 with CFG 2.0 (2 and 128 rows through the model), with
`kv_cache=True` (prefill + one-token decode steps) and `kv_cache=False` (the whole prefix recomputed
every step), and `kv_cache=True, compile=True` (each whole sampling step through torch.compile: Inductor's
C++ code on CPU, one CUDA graph on CUDA; the warm-up round pays the compilation, the timed rounds do not).
On CUDA the `d16` generator in bf16 also samples batch 64 all three ways. `extra_info` holds images/s and
tokens/s (generated codes; the CFG rows are not counted), the rows through the model, and for the eager
cached mode `ops_per_step`: the top-level aten ops one decode step dispatches (views excluded; on a GPU
each is about one kernel launch), counted once with the CPU profiler.

Correctness, checked once per model: with the same torch.Generator seed both paths give identical
codes, sampled (temperature 1) and greedy (top_k=1), and the compiled decode step gives the eager cached
path's codes. d16 runs in bf16, where the two paths round
differently and a near-tie may flip, so there the fraction of equal codes is recorded, not asserted.

Anytime sampling (`num_tokens=k`, k = 4 and 8 of the 16 tokens, batch 64, KV cache) and streaming (batch 16,
`sampling.stream`: the codes after every token, and with a preview: every row decoded after every token by the
`fmnist` tokenizer, random init) are timed against the same batch sampled whole; `extra_info` holds the time
relative to that run.
Correctness: the k-token codes are the whole run's first k, the stream's last codes are `generate`'s.

On CPU the module runs single-threaded: on the shared 2-core machine two OpenMP threads spin-waited
behind other jobs and one sampling call took 5-30x longer (measured). Three rounds per case after a
warm-up keep the file around a minute (the warm-up of the compiled cases compiles the decode step).
"""

import pytest
import torch

from spectralar.models.config import preset
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.sampling import SamplingParams, stream

from .cases import CFG_SCALE

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
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


MODES = {"kv": {"kv_cache": True}, "recompute": {"kv_cache": False}, "kv-compiled": {"kv_cache": True, "compile": True}}


def _generate(model, labels, mode, **kw):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    codes = model.generate(labels, cfg_scale=CFG_SCALE, generator=g, **MODES[mode], **kw)
    if CUDA:
        torch.cuda.synchronize()
    return codes


def agreement(name: str, model, mode: str) -> tuple[float, float]:
    """(fraction of equal codes sampled, greedy) between the eager KV-cached path and `mode`; computed once."""
    if (name, mode) not in _agreement:
        labels = torch.arange(AGREE_BATCH, device=DEVICE) % model.config.num_classes
        fracs = []
        for kw in ({}, {"top_k": 1}):
            a, b = _generate(model, labels, "kv", **kw), _generate(model, labels, mode, **kw)
            fracs.append((a == b).double().mean().item())
        _agreement[name, mode] = (fracs[0], fracs[1])
    return _agreement[name, mode]


_NO_LAUNCH = ("view", "reshape", "_unsafe_view", "unbind", "select", "slice", "chunk", "split", "narrow", "transpose",
              "t", "permute", "expand", "as_strided", "unsqueeze", "squeeze", "detach", "alias", "empty", "empty_like",
              "empty_strided", "resolve_conj", "resolve_neg", "dropout")


def ops_per_step(model, rows: int) -> int:
    """Top-level non-view aten ops of one eager decode step (`decode_one_token`, rows through the model)."""
    from torch.profiler import ProfilerActivity, profile

    caches = model.setup_caches(rows, next(model.parameters()).dtype, DEVICE)
    token = torch.zeros(rows, dtype=torch.long, device=DEVICE)
    with torch.no_grad():
        model.decode_one_token(token, caches, 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.decode_one_token(token, caches, 1)
    skip = {f"aten::{name}" for name in _NO_LAUNCH}
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.name not in skip
               and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))  # fmt: skip


def _run(benchmark, model, batch, mode, threads, rounds, warmup):
    cfg = model.config
    labels = torch.arange(batch, device=DEVICE) % cfg.num_classes
    codes = benchmark.pedantic(_generate, args=(model, labels, mode), rounds=rounds, iterations=1,
                               warmup_rounds=warmup)  # fmt: skip
    assert codes.shape == (batch, cfg.num_tokens) and codes.dtype == torch.int64
    assert bool(((codes >= 0) & (codes < cfg.codebook_size)).all()), "code index out of range"
    info = benchmark.extra_info
    info.update(batch=batch, rows=2 * batch, mode=mode, device=DEVICE, threads=threads,
                dtype=str(next(model.parameters()).dtype))  # fmt: skip
    if mode == "kv":
        info["ops_per_step"] = ops_per_step(model, 2 * batch)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        mean = stats.stats.mean
        info["images_per_s"] = batch / mean
        info["tokens_per_s"] = batch * cfg.num_tokens / mean


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("batch", [1, 64])
def test_sampling_fmnist(benchmark, fmnist, cpu_threads, batch, mode):
    if mode != "kv":
        sampled, greedy = agreement("fmnist", fmnist, mode)
        assert sampled == 1.0, f"kv and {mode} sampled different codes ({100 * sampled:.1f}% equal)"
        assert greedy == 1.0, f"kv and {mode} greedy codes differ ({100 * greedy:.1f}% equal)"
    # CPU: 3 rounds after a warm-up (the batch-64 recompute case costs 1-3 s a call on this machine)
    rounds, warmup = (5, 1) if CUDA else (3, 1)
    _run(benchmark, fmnist, batch, mode, cpu_threads, rounds, warmup)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(MODES))
def test_sampling_d16_bf16(benchmark, d16, cpu_threads, mode):
    if mode != "kv":
        sampled, greedy = agreement("d16", d16, mode)
        benchmark.extra_info.update(equal_codes_sampled=sampled, equal_codes_greedy=greedy)
    benchmark.extra_info.update(params=sum(p.numel() for p in d16.parameters()))
    _run(benchmark, d16, 64, mode, cpu_threads, rounds=3, warmup=1)


@pytest.fixture(scope="module")
def fmnist_tokenizer():
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return SpectralTokenizer(preset("tokenizer", "fmnist")).eval()


_whole: dict[int, float] = {}


def _whole_run_seconds(model, labels) -> float:
    """Seconds of one whole (N-token) KV-cached run of `labels`, the best of 3: the baseline of the cases below."""
    if len(labels) not in _whole:
        import time

        best = float("inf")
        for _ in range(4):  # the first is a warm-up
            t = time.perf_counter()
            _generate(model, labels, "kv")
            best = min(best, time.perf_counter() - t)
        _whole[len(labels)] = best
    return _whole[len(labels)]


@pytest.mark.parametrize("k", [4, 8])
def test_sampling_anytime_fmnist(benchmark, fmnist, cpu_threads, k):
    labels = torch.arange(64, device=DEVICE) % fmnist.config.num_classes
    full = _generate(fmnist, labels, "kv")
    assert torch.equal(_generate(fmnist, labels, "kv", num_tokens=k), full[:, :k])
    _run_relative(benchmark, lambda: _generate(fmnist, labels, "kv", num_tokens=k), fmnist, labels, k=k)


@pytest.mark.parametrize("preview", [False, True])
def test_stream_fmnist(benchmark, fmnist, fmnist_tokenizer, cpu_threads, preview):
    labels = torch.arange(16, device=DEVICE) % fmnist.config.num_classes  # 16: a decoder pass per token is slow on CPU
    tok = fmnist_tokenizer if preview else None

    def run():
        *_, last = stream(fmnist, labels, SamplingParams(cfg_scale=CFG_SCALE), tokenizer=tok,
                          generator=torch.Generator(device=DEVICE).manual_seed(0))
        if CUDA:
            torch.cuda.synchronize()
        return last.codes

    assert torch.equal(run(), _generate(fmnist, labels, "kv"))
    _run_relative(benchmark, run, fmnist, labels, preview=preview)


def _run_relative(benchmark, fn, model, labels, **info):
    rounds, warmup = (5, 1) if CUDA else (3, 1)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    benchmark.extra_info.update(batch=len(labels), device=DEVICE, **info)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        benchmark.extra_info["time_vs_whole_run"] = stats.stats.min / _whole_run_seconds(model, labels)
