"""attention_with_kvcache: step-by-step decoding vs full causal attention over the same keys (flash-attn's
`flash_attn_with_kvcache` contract, argument by argument: test_kvcache_flash.py).

The float64 oracle is causal attention over whole sequences; decoding position p of sample b must
reproduce row p of it. Caches of 20 entries use one split in the Triton decode kernel; 150 entries
split the cache across programs and exercise the combine kernel. Also: no host sync (fake tensors),
out-of-range cache_seqlens masked on the device, the debug switch, the custom op torch.compile keeps,
and the decode-v2 kernel (fused append) against the float64 reference on awkward shapes.
"""

import pytest
import torch

from spectralar_kernels import attention_with_kvcache
from spectralar_kernels.attn import decode, kvcache, kvrun, ref
from spectralar_kernels.testing import assert_close_to_oracle, nan_like


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
    out = attention_with_kvcache(rows_at(q, pos), k_cache, v_cache, start, k=rows_at(k, pos), v=rows_at(v, pos),
                                 causal=True)  # fmt: skip
    check(out, rows_at(want_all, pos), None, f"prefill Tq={t_q}")


def test_without_new_kv_reads_what_the_caller_wrote(backend):
    b, h, d, t_max = 2, 2, 16, 20
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=7)
    seqlens = torch.tensor([4, 9], dtype=torch.int32)
    pos = seqlens.long()[:, None] + torch.arange(2)
    k_cache, v_cache = k.clone(), v.clone()  # positions up to seqlens + Tq - 1 already hold the new keys
    out = attention_with_kvcache(rows_at(q, pos), k_cache, v_cache, seqlens + 2, causal=True)  # flash-attn: + Tq
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
    out = attention_with_kvcache(q[:, 6:7], k.clone(), v.clone(), 7, softmax_scale=0.3)  # 7 valid keys, new one too
    want = ref.attention_ref(q.double(), k.double(), v.double(), causal=True, softmax_scale=0.3)[:, 6:7]
    check(out, want, None, "int seqlens")


@pytest.mark.parametrize("t_max,num_splits", [(20, 1), (150, None), (150, 3), (150, 10)])
def test_triton_decode_writes_every_element(t_max, num_splits):
    b, h, d = 2, 2, 16
    q, k, v = sequences(b, t_max, h, d, torch.float32, seed=9)
    seqlens = torch.tensor([t_max - 3, 1], dtype=torch.int32)
    pos = seqlens.long()[:, None] + torch.arange(3)[None, :2]  # Tq = 2
    q_new = rows_at(q, pos)
    out = decode.attention_with_kvcache_fwd(q_new, k, v, seqlens, d**-0.5, out=nan_like(q_new), num_splits=num_splits)
    check(out, rows_at(full_causal(q, k, v), pos), None, f"splits={num_splits}")


def test_bf16_triton(monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    b, h, d, t_max = 2, 1, 16, 150
    q, k, v = sequences(b, t_max, h, d, torch.bfloat16, seed=10)
    seqlens = torch.tensor([80, 2], dtype=torch.int32)
    pos = seqlens.long()[:, None]
    q_new = rows_at(q, pos)
    out = attention_with_kvcache(q_new, k.clone(), v.clone(), seqlens + 1)
    same = ref.attention_with_kvcache_ref(q_new, k, v, seqlens)
    check(out, rows_at(full_causal(q, k, v), pos), same, "bf16")


def _bad_cases():
    q = torch.randn(2, 1, 2, 16)
    c = torch.randn(2, 8, 2, 16)
    s = torch.tensor([3, 4], dtype=torch.int32)
    return [
        ("int overflow", (q, c, c.clone(), 8), {"k": q, "v": q}, "overflow"),
        ("int negative", (q, c, c.clone(), -1), {}, ">= 0"),
        ("Tnew > T_max", (q, c, c.clone(), s), {"k": torch.randn(2, 9, 2, 16), "v": torch.randn(2, 9, 2, 16)},
         "Tnew 9 > T_max 8"),
        ("k only", (q, c, c.clone(), s), {"k": q}, "both k and v"),
        ("k heads", (q, c, c.clone(), s), {"k": torch.randn(2, 1, 1, 16), "v": torch.randn(2, 1, 1, 16)},
         "differ in H"),
        ("v shape", (q, c, c.clone(), s), {"k": q, "v": torch.randn(2, 2, 2, 16)}, "k, v must be"),
        ("cache H", (q, torch.randn(2, 8, 3, 16), torch.randn(2, 8, 3, 16), s), {}, "not a multiple"),
        ("cache B", (q, c[:1], c[:1].clone(), s), {}, "fewer than the batch"),
        ("v_cache shape", (q, c, torch.randn(2, 9, 2, 16), s), {}, "v_cache shape"),
        ("cache dtype", (q, c.half(), c.half(), s), {}, "dtype"),
        ("seqlens dtype", (q, c, c.clone(), s.float()), {}, "int32/int64"),
        ("seqlens shape", (q, c, c.clone(), torch.tensor([1, 2, 3], dtype=torch.int32)), {}, "shape \\(2,\\)"),
        ("seqlens list", (q, c, c.clone(), [1, 2]), {}, "int32/int64"),
        ("q 3 dims", (q[0], c, c.clone(), s), {}, "4 dims"),
        ("device", (q, c, c.to("meta"), s), {}, "one device"),
        ("scale", (q, c, c.clone(), s), {"softmax_scale": float("inf")}, "softmax_scale"),
        ("causal int", (q, c, c.clone(), s), {"causal": 1}, "causal"),
        ("window", (q, c, c.clone(), s), {"window_size": (-2, 0)}, "window_size"),
        ("window len", (q, c, c.clone(), s), {"window_size": (3,)}, "window_size"),
        ("softcap", (q, c, c.clone(), s), {"softcap": -1.0}, "softcap"),
        ("num_splits", (q, c, c.clone(), s), {"num_splits": -1}, "num_splits"),
        ("batch idx dtype", (q, c, c.clone(), s), {"cache_batch_idx": s.float()}, "cache_batch_idx"),
        ("rotary alone", (q, c, c.clone(), s), {"rotary_cos": torch.ones(8, 4)}, "both rotary_cos and rotary_sin"),
        ("rotary no k", (q, c, c.clone(), s), {"rotary_cos": torch.ones(8, 4), "rotary_sin": torch.ones(8, 4)},
         "need k and v"),
        ("rotary dim", (q, c, c.clone(), s), {"k": q, "v": q, "rotary_cos": torch.ones(8, 9),
                                              "rotary_sin": torch.ones(8, 9)}, "rotary_dim <= D"),
        ("lse flag", (q, c, c.clone(), s), {"return_softmax_lse": 1}, "return_softmax_lse"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors(backend, case):
    _, args, kwargs, match = case
    k_cache_before = args[1].clone() if args[1].device.type != "meta" else None
    with pytest.raises(ValueError, match=match):
        attention_with_kvcache(*args, **kwargs)
    if k_cache_before is not None:
        assert torch.equal(args[1], k_cache_before), "a rejected call must not touch the cache"


# ---- no host sync, out-of-range policy, debug switch ---------------------------------------------------


def _value_cases():
    """(name, caches T_max, Tq, cache_seqlens) that are out of range, so only the debug switch rejects them."""
    return [
        ("overflow", 8, 1, [3, 8]),
        ("overflow chunk", 8, 5, [3, 4]),
        ("negative", 8, 1, [-1, 0]),
    ]


@pytest.mark.parametrize("case", _value_cases(), ids=lambda c: c[0])
def test_debug_switch_restores_value_errors(backend, monkeypatch, case):
    _, t_max, t_q, seqlens = case
    q, k, v = sequences(2, t_q, 2, 16, torch.float32, seed=11)
    k_cache, v_cache = torch.randn(2, t_max, 2, 16), torch.randn(2, t_max, 2, 16)
    seqlens = torch.tensor(seqlens, dtype=torch.int32)
    before = k_cache.clone()
    monkeypatch.setenv("SPECTRALAR_DEBUG_CHECKS", "1")
    with pytest.raises(ValueError, match="overflow|>= 0"):
        attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)
    assert torch.equal(k_cache, before), "a rejected call must not touch the cache"
    monkeypatch.delenv("SPECTRALAR_DEBUG_CHECKS")
    out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)  # masked on the device instead
    assert torch.isfinite(out).all()


def policy_oracle(q, k_cache, v_cache, seqlens, k, v, scale):
    """float64 loops spelling out the out-of-range policy: (output, caches after the call)."""
    kc, vc = k_cache.double().clone(), v_cache.double().clone()
    b, t_q, h, d = q.shape
    t_max = kc.shape[1]
    out = torch.empty(b, t_q, h, d, dtype=torch.float64)
    for i in range(b):
        for t in range(t_q):
            p = int(seqlens[i]) + t
            if 0 <= p < t_max:
                kc[i, p], vc[i, p] = k[i, t].double(), v[i, t].double()
    for i in range(b):
        for t in range(t_q):
            last = min(int(seqlens[i]) + t, t_max - 1)  # negative: sees nothing, output zero
            w = torch.einsum("hd,jhd->hj", q[i, t].double(), kc[i, : last + 1]) * scale
            out[i, t] = torch.einsum("hj,jhd->hd", w.softmax(-1), vc[i, : last + 1]) if last >= 0 else 0.0
    return out, kc, vc


@pytest.mark.parametrize("t_q", [1, 3])
def test_out_of_range_seqlens_are_masked_on_device(backend, t_q):
    """Negative, overflowing and far-out rows: nothing outside the cache is written (the rows around
    are compared), positions in range are, every query attends to what is in range, and one whose
    position is negative sees nothing and returns zeros (flash-attn's empty-row rule)."""
    b, t_max, h, d = 5, 6, 2, 16
    seqlens = torch.tensor([-2, t_max - 2, t_max + 5, 1, -40], dtype=torch.int32)
    q, k, v = sequences(b, t_q, h, d, torch.float32, seed=12)
    # caches with one guard row on each side: the call sees [:, 1:-1], the guards must stay untouched
    k_full, v_full = torch.randn(b, t_max + 2, h, d), torch.randn(b, t_max + 2, h, d)
    k_before, v_before = k_full.clone(), v_full.clone()
    k_cache, v_cache = k_full[:, 1:-1], v_full[:, 1:-1]
    want, k_want, v_want = policy_oracle(q, k_cache, v_cache, seqlens, k, v, d**-0.5)
    out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v, causal=True)
    check(out, want, None, f"{backend} out of range")
    torch.testing.assert_close(k_cache.double(), k_want, rtol=0, atol=0)
    torch.testing.assert_close(v_cache.double(), v_want, rtol=0, atol=0)
    for full, before in ((k_full, k_before), (v_full, v_before)):
        assert torch.equal(full[:, 0], before[:, 0]) and torch.equal(full[:, -1], before[:, -1])


def test_strided_seqlens_are_read_as_values(backend):
    """A strided cache_seqlens view (every other entry of a longer tensor) must be read by value: a kernel
    indexing `SEQLENS + b` on the raw storage would write row 1 at the wrong position."""
    b, t_max, h, d = 2, 8, 2, 16
    seqlens = torch.tensor([3, 0, t_max + 1, 0], dtype=torch.int32)[::2]  # [3, 9]: row 1 out of range
    assert not seqlens.is_contiguous()
    q, k, v = sequences(b, 1, h, d, torch.float32, seed=13)
    k_cache, v_cache = torch.zeros(b, t_max, h, d), torch.zeros(b, t_max, h, d)
    want, k_want, v_want = policy_oracle(q, k_cache, v_cache, seqlens, k, v, d**-0.5)
    out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)
    check(out, want, None, f"{backend} strided cache_seqlens")
    torch.testing.assert_close(k_cache.double(), k_want, rtol=0, atol=0)
    torch.testing.assert_close(v_cache.double(), v_want, rtol=0, atol=0)


def _step_cases():
    """(name, dtype, H, H_kv, Tq, with k/v, causal, T_max) for the small CPU step; T_max 300 is past its table."""
    return [
        ("fp32 decode causal", torch.float32, 4, 4, 1, True, True, 12),
        ("fp32 no kv", torch.float32, 4, 4, 1, False, False, 12),
        ("fp16 gqa", torch.float16, 4, 2, 1, True, False, 12),
        ("bf16 chunk causal", torch.bfloat16, 2, 2, 3, True, True, 12),
        ("fp32 chunk no kv causal", torch.float32, 2, 1, 3, False, True, 12),
        ("fp32 no table", torch.float32, 2, 2, 1, True, True, 300),
    ]


@pytest.mark.parametrize("case", _step_cases(), ids=lambda c: c[0])
def test_small_cpu_steps_match_the_general_reference(monkeypatch, case):
    """The CPU shortcuts must take exactly the in-range calls and give the general reference's result: `run_host`
    (ragged positions read on the host, cached mask table, plain index_put) bit for bit, `run_step` (one shared
    position, slices) within rounding; positions out of range must go to `run_ref` (its out-of-range policy)."""
    _, dtype, h, h_kv, t_q, new, causal, t_max = case
    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")  # CPU tensors under auto: the reference, shortcut or not
    b, d = 3, 16
    hi = t_max - (t_q if new else 0)  # the largest in-range cache_seqlens
    g = torch.Generator().manual_seed(t_max + t_q)
    forms = {
        "ragged": torch.tensor([0, hi, hi // 2], dtype=torch.int32),
        "random int64": torch.randint(0, hi + 1, (b,), generator=g),
        "shared": torch.full((b,), hi // 2, dtype=torch.int32),
        "[1]": torch.tensor([hi], dtype=torch.int32),
        "0-d zero": torch.tensor(0),
        "expanded": torch.tensor([1, 5], dtype=torch.int32)[:1].expand(b),
        "strided": torch.tensor([2, -1, 0, -1, hi, -1], dtype=torch.int32)[::2],
        "out of range": torch.tensor([-1, hi + 1, 0], dtype=torch.int32),
    }
    q, k, v = (torch.randn(b, t_q, n, d, generator=g).to(dtype) for n in (h, h_kv, h_kv))
    caches = [torch.randn(b, t_max, h_kv, d, generator=g).to(dtype) for _ in range(2)]
    select, taken = kvcache.select, []

    def spy(call):
        run, impl = select(call)
        taken.append(run)
        return run, impl

    for name, seqlens in forms.items():
        results = []
        for chooser in (spy, lambda call: (kvrun.run_ref, None)):  # as selected, then the general reference
            monkeypatch.setattr(kvcache, "select", chooser)
            k_cache, v_cache = (c.clone() for c in caches)
            out = attention_with_kvcache(q, k_cache, v_cache, seqlens, *((k, v) if new else ()), causal=causal)
            results.append((out, k_cache, v_cache))
        run = taken.pop()
        values = set(seqlens.reshape(-1).tolist())
        n_keys = min(values) + (t_q if new else 0)  # a shared position slices when every query sees a key
        sliced = len(values) == 1 and n_keys > 0 and (not causal or n_keys >= t_q)
        want_run = kvrun.run_ref if name == "out of range" else kvrun.run_step if sliced else kvrun.run_host
        assert run is want_run, f"{name}: took {run.__name__}, not {want_run.__name__}"
        for a, want, what in zip(results[0], results[1], ("out", "k_cache", "v_cache")):
            if run is kvrun.run_step and what == "out":  # fewer keys summed: the same up to rounding
                eps = torch.finfo(dtype).eps  # one rounding of the output in its dtype
                torch.testing.assert_close(a, want, atol=2 * eps, rtol=2 * eps)
            else:
                assert torch.equal(a, want), f"{name}: {what} differs from the general reference"


def test_small_cpu_step_constants_stay_bounded():
    """The host step's cached aranges and mask tables are keyed by shape: many shapes must not grow them."""
    for b in range(2, 2 * kvrun._STEP_CACHE_SIZE):
        q = torch.randn(b, 1, 1, 8)
        seqlens = torch.arange(b, dtype=torch.int32) % 3  # ragged (b > 1): the table path
        attention_with_kvcache(q, torch.randn(b, 4, 1, 8), torch.randn(b, 4, 1, 8), seqlens, q, q)
        assert 0 < len(kvrun._STEP_CACHE) <= kvrun._STEP_CACHE_SIZE


def test_no_host_sync_under_fake_tensors():
    """FakeTensorMode raises on .item() / int(tensor): the op must run without reading a device value.
    The debug switch is the one place that syncs, which is what this test would catch."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.randn(3, 1, 2, 16)
        k_cache, v_cache = torch.randn(3, 10, 2, 16), torch.randn(3, 10, 2, 16)
        seqlens = torch.tensor([0, 4, 9], dtype=torch.int32)
        out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=q, v=q)
        assert out.shape == q.shape
        out = attention_with_kvcache(q, k_cache, v_cache, seqlens)
        assert out.shape == q.shape


def test_fake_tensors_catch_a_host_sync(monkeypatch):
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    monkeypatch.setenv("SPECTRALAR_DEBUG_CHECKS", "1")
    with FakeTensorMode(), pytest.raises(DataDependentOutputException):
        q = torch.randn(3, 1, 2, 16)
        attention_with_kvcache(q, torch.randn(3, 10, 2, 16), torch.randn(3, 10, 2, 16),
                               torch.tensor([0, 4, 9], dtype=torch.int32), k=q, v=q)  # fmt: skip


def test_compiled_graph_keeps_the_custom_op(monkeypatch):
    """torch.compile(fullgraph) traces the op as one `spectralar::attention_with_kvcache` node with its
    cache mutation declared (not the reference's indexing ops) wherever a kernel could run (here the Triton
    kernel under the interpreter), the compiled call runs the kernel and matches eager."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    b, h, d, t_max = 2, 2, 16, 8
    q, k, v = sequences(b, 1, h, d, torch.float32, seed=13)
    seqlens = torch.tensor([0, 5], dtype=torch.int32)
    k_cache, v_cache = torch.randn(b, t_max, h, d), torch.randn(b, t_max, h, d)
    kc, vc = k_cache.clone(), v_cache.clone()
    step = torch.compile(attention_with_kvcache, fullgraph=True, dynamic=False, backend=backend)
    out = step(q, k_cache, v_cache, seqlens, k=k, v=v)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any(t.startswith("spectralar.attention_with_kvcache") for t in targets), targets
    assert not any("index_put" in t or "scaled_dot_product" in t for t in targets), targets
    want = attention_with_kvcache(q, kc, vc, seqlens, k=k, v=v)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert torch.equal(k_cache, kc) and torch.equal(v_cache, vc)
    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")  # CPU, auto: the reference traced inline
    graphs.clear()
    torch._dynamo.reset()
    step(q, k_cache, v_cache, seqlens, k=k, v=v)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert not any(t.startswith("spectralar.") for t in targets) and any("scaled_dot_product" in t for t in targets)


def test_custom_op_opcheck():
    """torch.library's own check of the registration: fake implementation, declared mutation, schema."""
    q, k, v = sequences(2, 1, 2, 16, torch.float32, seed=14)
    args = (q, torch.randn(2, 6, 2, 16), torch.randn(2, 6, 2, 16), torch.tensor([1, 3], dtype=torch.int32), k, v,
            0.25, True, "")
    torch.library.opcheck(torch.ops.spectralar.attention_with_kvcache.default, args,
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


# ---- decode-v2 (Triton, interpreter) against the float64 reference ------------------------------------

DECODE_CASES = [  # b, t_max, h, d, t_q, num_splits
    (3, 16, 2, 16, 1, None),
    (2, 24, 1, 24, 3, 2),
    (5, 40, 3, 40, 1, 3),
    (1, 64, 2, 64, 3, None),
    (2, 65, 1, 80, 1, 1),
    (3, 80, 2, 16, 3, 4),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: "b{}_t{}_h{}_d{}_q{}_s{}".format(*c))
def test_decode_v2_against_oracle(dtype, case):
    """Mixed per-row lengths (0 and T_max - Tq included), NaN-filled outputs, and the fused append writes
    exactly the new rows: the caches after the call equal the reference's write, bit for bit."""
    b, t_max, h, d, t_q, splits = case
    g = torch.Generator().manual_seed(b * t_max + d)
    k_cache, v_cache = (torch.randn(b, t_max, h, d, generator=g).to(dtype) for _ in range(2))
    q, k, v = (torch.randn(b, t_q, h, d, generator=g).to(dtype) for _ in range(3))
    seqlens = torch.randint(0, t_max - t_q + 1, (b,), generator=g, dtype=torch.int32)
    seqlens[0] = 0
    seqlens[-1] = t_max - t_q
    k_want, v_want = k_cache.clone(), v_cache.clone()
    ref.write_kvcache(k_want, v_want, seqlens, k, v)
    oracle = ref.attention_with_kvcache_ref(q.double(), k_want.double(), v_want.double(), seqlens)
    same = ref.attention_with_kvcache_ref(q, k_want, v_want, seqlens) if dtype != torch.float32 else None
    out = decode.attention_with_kvcache_fwd(q, k_cache, v_cache, seqlens, d**-0.5, k=k, v=v, out=nan_like(q),
                                            num_splits=splits)  # fmt: skip
    check(out, oracle, same, f"decode-v2 {case} {dtype}")
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)


def test_decode_v2_one_launch_per_call(monkeypatch):
    """The append is fused: one kernel launch per call without split-K, two (decode + combine) with it,
    and no indexing ops around them."""
    launches = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append((self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else "kernel", grid))
            return self.kernel[grid]

    monkeypatch.setattr(decode, "_attention_decode_kernel", Counting(decode._attention_decode_kernel))
    monkeypatch.setattr(decode, "_attention_decode_combine_kernel", Counting(decode._attention_decode_combine_kernel))
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    q, k, v = sequences(2, 1, 2, 16, torch.float32, seed=15)
    seqlens = torch.tensor([1, 4], dtype=torch.int32)
    attention_with_kvcache(q, torch.zeros(2, 6, 2, 16), torch.zeros(2, 6, 2, 16), seqlens, k=k, v=v)
    assert len(launches) == 1, launches
    launches.clear()
    decode.attention_with_kvcache_fwd(q, torch.zeros(2, 70, 2, 16), torch.zeros(2, 70, 2, 16), seqlens, 0.25,
                                      k=k, v=v, num_splits=2)  # fmt: skip
    assert len(launches) == 2, launches


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


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["triton", "ref"])
def test_decode_step_captured_in_cuda_graph(monkeypatch, kernels):
    """No host sync: one call (append + attention, tensor cache_seqlens) records into a CUDA graph and the
    replay matches the float64 reference; the cache rows written are the new ones."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", kernels)
    b, h, d, t_max, dtype = 4, 4, 64, 65, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    k_cache, v_cache = (torch.randn(b, t_max, h, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    q, k, v = (torch.randn(b, 1, h, d, device="cuda", generator=g).to(dtype) for _ in range(3))
    seqlens = torch.tensor([0, 10, 33, t_max - 1], dtype=torch.int32, device="cuda")
    k_want, v_want = k_cache.clone(), v_cache.clone()
    ref.write_kvcache(k_want, v_want, seqlens, k, v)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (compiles the kernel)
        attention_with_kvcache(q, k_cache.clone(), v_cache.clone(), seqlens, k=k, v=v)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)
    graph.replay()
    torch.cuda.synchronize()
    oracle = ref.attention_with_kvcache_ref(q.double(), k_want.double(), v_want.double(), seqlens)
    same = ref.attention_with_kvcache_ref(q, k_want, v_want, seqlens)
    check(out, oracle, same, f"CUDA graph {kernels}")
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)

