"""Attention benchmarks: SDPA reference vs our Triton kernels vs flash-attn (when installed), and the cost of our
`scaled_dot_product_attention` over torch's where no kernel of ours applies (`test_sdpa_overhead`).

Run with `pytest bench/bench_attention.py --benchmark-only`. Shapes are this model's, the GPU report's
(bench/cases.py): the generator (128 rows with CFG, causal, T = 65 = class token + 64 codes, 16 heads), the
tokenizer's encoder (prefix-LM, 256 patches + 64 queries, 12 heads) and decoder (full, T = 320), all at head
dim 64, and one KV-cache decode step against 64 cached entries (65 after the write) for 128 rows and for 2;
plus the fmnist sizes at head dim 32 (T = 17 causal, 64 + 16 prefix-LM). CUDA runs use bf16 at these shapes;
CPU runs fp32 with at most 4 rows of 4 heads.
Each case checks correctness once against the float64 reference, then times, the forward alone and the
forward with the gradients of q, k, v; `extra_info` holds the achieved TFLOP/s (4 * B * H * D * visible
(query, key) pairs for the forward, ~halved for causal; 3.5x that with the backward) and, for decode,
the GB/s of reading the cache, plus peak memory on CUDA.
"""

import importlib.util

import pytest
import torch

from spectralar_kernels import attention, attention_with_kvcache
from spectralar_kernels.attn import ref
from spectralar_kernels.testing import assert_close_to_oracle

from . import cases

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None


def _sized(b, t, h, d) -> tuple:
    """[B, T, H, D] as this machine times it: as is on CUDA, at most 4 rows of 4 heads on CPU."""
    return (b, t, h, d) if CUDA else (min(b, 4), t, min(h, 4), d)


def _case_id(name, t, prefix_len):
    return f"{name}-T{t}" + (f"-prefix{prefix_len}" if prefix_len else "")


# name: ([B, T, H, D], causal, prefix_len)
SHAPES = {}
for _name, (_shape, _mask) in cases.ATTENTION.items():
    _causal, _prefix, _ = cases.parse_mask(_mask, _shape[1])
    SHAPES[_case_id(_name, _shape[1], _prefix)] = (_sized(*_shape), _causal, _prefix)
SHAPES["fmnist-generator-T17"] = (_sized(64, 17, 16, 32), True, 0)
SHAPES["fmnist-encoder-T80-prefix64"] = (_sized(64, 80, 16, 32), True, 64)
PROVIDERS = ["ref", "triton", "flash-attn"]


def _skip_unavailable(provider, causal=False, prefix_len=0):
    if provider == "triton" and not CUDA:
        pytest.skip("the Triton provider is timed on CUDA only (the interpreter is not a speed)")
    if provider == "flash-attn":
        if not (CUDA and HAS_FLASH):
            pytest.skip("flash-attn needs CUDA and the flash_attn package")
        if causal and prefix_len > 1:
            pytest.skip("flash-attn has no prefix-LM mask")


def _run(provider, fn, monkeypatch):
    # "flash-attn" is what `auto` dispatch picks on CUDA when the package imports.
    monkeypatch.setenv("SPECTRALAR_KERNELS", {"ref": "ref", "triton": "triton", "flash-attn": "auto"}[provider])

    def timed():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out

    return timed


def _record(benchmark, flops, nbytes=None):
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    mean = stats.stats.mean
    benchmark.extra_info["tflops"] = flops / mean / 1e12
    if nbytes is not None:
        benchmark.extra_info["gbps"] = nbytes / mean / 1e9
    if CUDA:
        benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20


def _visible_pairs(t, causal, prefix_len):
    if not causal:
        return t * t
    return sum(max(i + 1, prefix_len) for i in range(t)) if prefix_len else t * (t + 1) // 2


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention_forward(benchmark, monkeypatch, provider, shape):
    (b, t, h, d), causal, prefix_len = SHAPES[shape]
    _skip_unavailable(provider, causal, prefix_len)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(b, t, h, d, device=DEVICE, generator=g, dtype=DTYPE) for _ in range(3))
    fn = _run(provider, lambda: attention(q, k, v, causal=causal, prefix_len=prefix_len), monkeypatch)

    out = fn()  # correctness once, against the float64 reference
    oracle = ref.attention_ref(q.double(), k.double(), v.double(), causal, prefix_len)
    same = ref.attention_ref(q, k, v, causal, prefix_len) if DTYPE != torch.float32 else None
    assert_close_to_oracle(out, oracle, same, atol=1e-5, rtol=1e-4, name=f"{provider} {shape}")

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark(fn)
    _record(benchmark, 4 * b * h * d * _visible_pairs(t, causal, prefix_len))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention_forward_backward(benchmark, monkeypatch, provider, shape):
    """Forward plus the gradients of q, k, v (training); checks the gradients once against float64."""
    (b, t, h, d), causal, prefix_len = SHAPES[shape]
    _skip_unavailable(provider, causal, prefix_len)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v, do = (torch.randn(b, t, h, d, device=DEVICE, generator=g, dtype=DTYPE) for _ in range(4))
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    grads = lambda: torch.autograd.grad(attention(q, k, v, causal=causal, prefix_len=prefix_len), (q, k, v), do)  # noqa: E731
    fn = _run(provider, grads, monkeypatch)

    got = fn()
    x64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    want = torch.autograd.grad(ref.attention_ref(*x64, causal, prefix_len), x64, do.double())
    same = [None] * 3
    if DTYPE != torch.float32:
        same = torch.autograd.grad(ref.attention_ref(q, k, v, causal, prefix_len), (q, k, v), do)
    for name, a, w, s in zip("qkv", got, want, same):
        assert_close_to_oracle(a, w, s, atol=1e-5, rtol=1e-4, name=f"{provider} {shape} d{name}")

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark(fn)
    # backward: 5 products of the forward's size (s and dp recomputed, dv, dk, dq) -> 3.5x the forward's flops
    _record(benchmark, 3.5 * 4 * b * h * d * _visible_pairs(t, causal, prefix_len))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(cases.DECODE))
def test_attention_decode_step(benchmark, monkeypatch, provider, case):
    """One decoding step: the new token's k, v written into a cache holding `seqlen` entries, then read."""
    _skip_unavailable(provider)
    b, t_max, h, d, t_q, seqlen = cases.DECODE[case]
    b, t_max, h, d = _sized(b, t_max, h, d)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    k_cache, v_cache = (torch.randn(b, t_max, h, d, device=DEVICE, generator=g, dtype=DTYPE) for _ in range(2))
    q, k, v = (torch.randn(b, t_q, h, d, device=DEVICE, generator=g, dtype=DTYPE) for _ in range(3))
    seqlens = torch.full((b,), seqlen, dtype=torch.int32, device=DEVICE)
    fn = _run(provider, lambda: attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v), monkeypatch)

    out = fn()  # writes k, v at position `seqlen` (the same values on every later call)
    oracle = ref.attention_with_kvcache_ref(q.double(), k_cache.double(), v_cache.double(), seqlens)
    same = ref.attention_with_kvcache_ref(q, k_cache, v_cache, seqlens) if DTYPE != torch.float32 else None
    assert_close_to_oracle(out, oracle, same, atol=1e-5, rtol=1e-4, name=f"{provider} decode {case}")

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark(fn)
    n_keys = seqlen + t_q
    cache_bytes = 2 * b * n_keys * h * d * k_cache.element_size()
    _record(benchmark, 4 * b * h * t_q * n_keys * d, cache_bytes)  # t_q = 1: every query sees every key


# ---- scaled_dot_product_attention: the cost of the drop-in where no kernel of ours applies ----------------

# name: (query shape, key/value shape, keyword arguments); masks are built per device below
SDPA_CASES = {
    "tiny": ((1, 2, 5, 16), (1, 2, 5, 16), {}),
    "tiny-causal": ((1, 2, 5, 16), (1, 2, 5, 16), {"is_causal": True}),
    "decode-mask-B8-H8-Tk24-D32": ((8, 8, 1, 32), (8, 8, 24, 32), {"attn_mask": (8, 1, 1, 24)}),
    "train-causal-4x4x65x64": ((4, 4, 65, 64), (4, 4, 65, 64), {"is_causal": True}),
}


@pytest.mark.parametrize("provider", ["torch", "spectralar_kernels"])
@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_overhead(benchmark, monkeypatch, provider, case):
    """torch's SDPA and ours side by side (one group per case) under SPECTRALAR_KERNELS=auto: on CPU ours is
    torch's call after a few checks (target: at most 5% over torch, tiny inputs included); on CUDA the same
    until a measured kernel is enabled. Checks once that ours returns torch's output exactly.

    Timed as a user's process runs it: without the Triton interpreter, which the root conftest switches on for
    the tests (under it every CPU call must also look up the kernel mode, ~0.5 us more)."""
    from torch.nn.functional import scaled_dot_product_attention as torch_sdpa

    from spectralar_kernels import scaled_dot_product_attention, use_backend
    from spectralar_kernels.attn import sdpa

    if not CUDA:
        monkeypatch.setattr(sdpa, "_INTERPRETER", False)
        monkeypatch.setattr(sdpa, "_NO_KERNELS", not torch.backends.cuda.is_built())

    q_shape, kv_shape, kw = SDPA_CASES[case]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(q_shape, device=DEVICE, generator=g, dtype=DTYPE)
    k, v = (torch.randn(kv_shape, device=DEVICE, generator=g, dtype=DTYPE) for _ in range(2))
    if "attn_mask" in kw:
        kw = {**kw, "attn_mask": torch.rand(kw["attn_mask"], device=DEVICE, generator=g) < 0.8}
    fn = {"torch": torch_sdpa, "spectralar_kernels": scaled_dot_product_attention}[provider]
    benchmark.group = f"sdpa {case}"

    def timed():
        out = fn(q, k, v, **kw)
        if CUDA:
            torch.cuda.synchronize()
        return out

    with use_backend("auto"):  # for the check only: the timing runs as the environment says (unset: auto)
        got, want = timed(), torch_sdpa(q, k, v, **kw)
    if CUDA:  # a measured kernel may run there
        torch.testing.assert_close(got, want)
    else:  # no kernel of ours applies: torch's own call
        assert torch.equal(got, want)
    benchmark(timed)
