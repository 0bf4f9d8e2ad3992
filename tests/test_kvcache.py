"""attention_with_kvcache: step-by-step decoding vs full causal attention over the same keys.

The float64 oracle is causal attention over whole sequences; decoding position p of sample b must
reproduce row p of it. Caches of 20 entries use one split in the Triton decode kernel; 150 entries
split the cache across programs and exercise the combine kernel.
"""

import pytest
import torch
from tolerances import assert_close_to_oracle, nan_like

from spectralar_kernels import attention_with_kvcache
from spectralar_kernels.attention import ref


def sequences(b, t, h, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, d, generator=g).to(dtype) for _ in range(3)]


def full_causal(q, k, v):
    """float64 oracle: causal attention over the whole sequences."""
    return ref.attention_ref(q.double(), k.double(), v.double(), causal=True)


def rows_at(x, positions):
    """x[b, positions[b] + t] for a [B, Tq] table of positions -> [B, Tq, H, D]."""
    return torch.stack([x[i, p] for i, p in enumerate(positions)])


def check(out, want, same, name):
    return assert_close_to_oracle(out, want, same, atol=2e-6, rtol=1e-4, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("t_max", [20, 150])
def test_decode_steps_ragged(backend, t_max, dtype):
    b, h, d, steps = 3, 2, 16, 4
    start = torch.tensor([0, 3, t_max - steps - 1], dtype=torch.int32)  # ragged lengths across the batch
    q, k, v = sequences(b, t_max, h, d, dtype, seed=t_max)
    want_all = full_causal(q, k, v)
    k_cache = torch.zeros(b, t_max, h, d, dtype=dtype)
    v_cache = torch.zeros(b, t_max, h, d, dtype=dtype)
    for i in range(b):  # the caller's prefill
        k_cache[i, : start[i]] = k[i, : start[i]]
        v_cache[i, : start[i]] = v[i, : start[i]]
    seqlens = start.clone()
    for step in range(steps):
        pos = seqlens.long()[:, None]  # [B, 1]
        q_new, k_new, v_new = rows_at(q, pos), rows_at(k, pos), rows_at(v, pos)
        kc_before, vc_before = k_cache.clone(), v_cache.clone()
        out = attention_with_kvcache(q_new, k_cache, v_cache, seqlens, k=k_new, v=v_new)
        same = None
        if dtype != torch.float32:
            same = ref.attention_with_kvcache_ref(q_new, k_cache, v_cache, seqlens)
        check(out, rows_at(want_all, pos), same, f"{backend} step {step}")
        assert torch.equal(seqlens, start + step), "the call must not advance cache_seqlens"
        # exactly the new positions were written
        written = torch.zeros(b, t_max, dtype=torch.bool)
        written[torch.arange(b), seqlens.long()] = True
        assert torch.equal(k_cache[written], k_new[:, 0]) and torch.equal(v_cache[written], v_new[:, 0])
        assert torch.equal(k_cache[~written], kc_before[~written])
        assert torch.equal(v_cache[~written], vc_before[~written])
        seqlens += 1


@pytest.mark.parametrize("t_q", [5, 17])  # 17 queries: two 16-row query blocks in the decode kernel
def test_prefill_chunk(backend, t_q):
    """Tq > 1: a chunk of new tokens, causal among themselves, on top of ragged caches."""
    b, h, d, t_max = 2, 1, 32, 150
    start = torch.tensor([0, 70], dtype=torch.int32)
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=t_q)
    want_all = full_causal(q, k, v)
    k_cache, v_cache = torch.randn(b, t_max, h, d), torch.randn(b, t_max, h, d)  # garbage beyond the valid length
    for i in range(b):
        k_cache[i, : start[i]] = k[i, : start[i]]
        v_cache[i, : start[i]] = v[i, : start[i]]
    pos = start.long()[:, None] + torch.arange(t_q)  # [B, Tq]
    out = attention_with_kvcache(rows_at(q, pos), k_cache, v_cache, start, k=rows_at(k, pos), v=rows_at(v, pos))
    check(out, rows_at(want_all, pos), None, f"prefill Tq={t_q}")


def test_without_new_kv_reads_what_the_caller_wrote(backend):
    b, h, d, t_max = 2, 2, 16, 20
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=7)
    seqlens = torch.tensor([4, 9], dtype=torch.int32)
    pos = seqlens.long()[:, None] + torch.arange(2)
    k_cache, v_cache = k.clone(), v.clone()  # positions up to seqlens + Tq - 1 already hold the new keys
    out = attention_with_kvcache(rows_at(q, pos), k_cache, v_cache, seqlens)
    check(out, rows_at(full_causal(q, k, v), pos), None, "k=None")
    assert torch.equal(k_cache, k) and torch.equal(v_cache, v)


def test_traces_under_torch_compile():
    # A model that drops this op in and compiles itself must get one graph (fullgraph: no host sync for the
    # overflow check, static shapes) that writes the cache in place and matches the oracle.
    b, h, d, t_max = 2, 3, 16, 12
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=9)
    seqlens = torch.tensor([2, 7], dtype=torch.int32)
    pos = seqlens.long()[:, None] + torch.arange(1)
    k_cache, v_cache = torch.zeros_like(k), torch.zeros_like(v)
    k_cache[:, :7], v_cache[:, :7] = k[:, :7], v[:, :7]
    step = torch.compile(attention_with_kvcache, fullgraph=True, dynamic=False)
    out = step(rows_at(q, pos), k_cache, v_cache, seqlens, k=rows_at(k, pos), v=rows_at(v, pos))
    check(out, rows_at(full_causal(q, k, v), pos), None, "compiled")
    for cache, src in ((k_cache, k), (v_cache, v)):
        torch.testing.assert_close(rows_at(cache, pos), rows_at(src, pos), rtol=0, atol=0)


def test_int_seqlens_and_scale(backend):
    b, h, d, t_max = 2, 1, 16, 20
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=8)
    out = attention_with_kvcache(q[:, 6:7], k.clone(), v.clone(), 6, softmax_scale=0.3)
    want = ref.attention_ref(q.double(), k.double(), v.double(), causal=True, softmax_scale=0.3)[:, 6:7]
    check(out, want, None, "int seqlens")


@pytest.mark.parametrize("t_max,num_splits", [(20, 1), (150, None), (150, 3), (150, 10)])
def test_triton_decode_writes_every_element(t_max, num_splits):
    from spectralar_kernels.attention.decode import attention_with_kvcache_fwd

    b, h, d = 2, 2, 16
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=9)
    seqlens = torch.tensor([t_max - 3, 1], dtype=torch.int32)
    pos = seqlens.long()[:, None] + torch.arange(3)[None, :2]  # Tq = 2
    q_new = rows_at(q, pos)
    out = attention_with_kvcache_fwd(q_new, k, v, seqlens, d**-0.5, out=nan_like(q_new), num_splits=num_splits)
    check(out, rows_at(full_causal(q, k, v), pos), None, f"splits={num_splits}")


def test_bf16_triton(monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    b, h, d, t_max = 2, 1, 16, 150
    q, k, v = sequences(b, t_max, h, d, torch.bfloat16, seed=10)
    seqlens = torch.tensor([80, 2], dtype=torch.int32)
    pos = seqlens.long()[:, None]
    q_new = rows_at(q, pos)
    out = attention_with_kvcache(q_new, k.clone(), v.clone(), seqlens)
    same = ref.attention_with_kvcache_ref(q_new, k, v, seqlens)
    check(out, rows_at(full_causal(q, k, v), pos), same, "bf16")


def _bad_cases():
    q = torch.randn(2, 1, 2, 16)
    c = torch.randn(2, 8, 2, 16)
    s = torch.tensor([3, 4], dtype=torch.int32)
    return [
        ("overflow", (q, c, c.clone(), torch.tensor([3, 8], dtype=torch.int32)), {"k": q, "v": q}, "overflow"),
        ("overflow chunk", (torch.randn(2, 5, 2, 16), c, c.clone(), s), {}, "overflow"),
        ("negative", (q, c, c.clone(), torch.tensor([-1, 0], dtype=torch.int32)), {}, ">= 0"),
        ("k only", (q, c, c.clone(), s), {"k": q}, "both k and v"),
        ("k shape", (q, c, c.clone(), s), {"k": torch.randn(2, 2, 2, 16), "v": torch.randn(2, 2, 2, 16)}, "k shape"),
        ("cache H", (q, torch.randn(2, 8, 1, 16), torch.randn(2, 8, 1, 16), s), {}, "differ in H"),
        ("v_cache shape", (q, c, torch.randn(2, 9, 2, 16), s), {}, "v_cache shape"),
        ("cache dtype", (q, c.half(), c.half(), s), {}, "dtype"),
        ("seqlens dtype", (q, c, c.clone(), s.float()), {}, "int32/int64"),
        ("seqlens shape", (q, c, c.clone(), torch.tensor([1], dtype=torch.int32)), {}, "shape \\[B=2\\]"),
        ("seqlens list", (q, c, c.clone(), [1, 2]), {}, "int32/int64"),
        ("q 3 dims", (q[0], c, c.clone(), s), {}, "4 dims"),
        ("device", (q, c, c.to("meta"), s), {}, "one device"),
        ("scale", (q, c, c.clone(), s), {"softmax_scale": float("inf")}, "softmax_scale"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors(backend, case):
    _, args, kwargs, match = case
    k_cache_before = args[1].clone() if args[1].device.type != "meta" else None
    with pytest.raises(ValueError, match=match):
        attention_with_kvcache(*args, **kwargs)
    if k_cache_before is not None:
        assert torch.equal(args[1], k_cache_before), "a rejected call must not touch the cache"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "b,h,d,t_max,t_q", [(2, 4, 64, 65, 1), (64, 16, 64, 65, 1), (2, 2, 128, 1000, 1), (4, 4, 64, 300, 17)]
)
def test_triton_decode_on_gpu(monkeypatch, dtype, b, h, d, t_max, t_q):
    """Compiled decode kernel, with (small batch x heads) and without (large) the split-K path."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    k_cache, v_cache = (torch.randn(b, t_max, h, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    q, k, v = (torch.randn(b, t_q, h, d, device="cuda", generator=g).to(dtype) for _ in range(3))
    seqlens = torch.randint(0, t_max - t_q + 1, (b,), device="cuda", generator=g, dtype=torch.int32)
    out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)
    want = ref.attention_with_kvcache_ref(q.double(), k_cache.double(), v_cache.double(), seqlens)
    same = ref.attention_with_kvcache_ref(q, k_cache, v_cache, seqlens) if dtype != torch.float32 else None
    check(out, want, same, f"gpu decode {dtype}")
