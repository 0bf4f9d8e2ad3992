"""attention_with_kvcache against flash-attn's `flash_attn_with_kvcache` contract, argument by argument, with
float64 loops written here as the oracle; cache_seqlens given as expanded / strided views, 0-d and `[1]` tensors.
"""

import pytest
import torch
from test_kvcache import check

from spectralar_kernels import attention_with_kvcache, flash_attn_with_kvcache
from spectralar_kernels.attn import decode, kvcache, ref
from spectralar_kernels.testing import nan_like

# ---- flash-attn's contract, argument by argument, against float64 loops ---------------------------------


def rotate_oracle(x, cos, sin, p, interleaved):
    """x [H, D] (float64) rotated at position p: pairs (2m, 2m + 1), or (m, m + R/2) GPT-NeoX style."""
    x = x.clone()
    half = cos.shape[1]
    for m in range(half):
        i, j = (2 * m, 2 * m + 1) if interleaved else (m, m + half)
        c, s = float(cos[p, m]), float(sin[p, m])
        xi, xj = x[:, i].clone(), x[:, j].clone()
        x[:, i], x[:, j] = xi * c - xj * s, xi * s + xj * c
    return x


def flash_oracle(q, k_cache, v_cache, seqlens, k=None, v=None, *, scale=None, causal=False, window=(-1, -1),
                 softcap=0.0, batch_idx=None, cos=None, sin=None, interleaved=True):  # fmt: skip
    """flash_attn_with_kvcache spelled out in float64 loops: (out, lse, k_cache after, v_cache after).

    With L valid keys (cache_seqlens, plus Tnew when k is given) query t sits at L - Tq + t and sees keys
    j < min(L, T_max) that pass causal (j <= its position) and the window; none: zero output, lse -inf."""
    q, kc, vc = q.double(), k_cache.double().clone(), v_cache.double().clone()
    b, t_q, h, d = q.shape
    t_max, h_kv = kc.shape[1], kc.shape[2]
    scale = d**-0.5 if scale is None else scale
    seqlens = torch.as_tensor(seqlens).expand(b)
    rows = [int(batch_idx[i]) if batch_idx is not None else i for i in range(b)]
    n_valid = [int(seqlens[i]) for i in range(b)]
    if k is not None:
        for i in range(b):
            for t in range(k.shape[1]):
                p = int(seqlens[i]) + t
                kt = k[i, t].double() if cos is None else rotate_oracle(k[i, t].double(), cos, sin, p, interleaved)
                if 0 <= p < t_max:
                    kc[rows[i], p], vc[rows[i], p] = kt, v[i, t].double()
            n_valid[i] += k.shape[1]
    out = torch.zeros(b, t_q, h, d, dtype=torch.float64)
    lse = torch.full((b, h, t_q), float("-inf"), dtype=torch.float64)
    for i in range(b):
        for t in range(t_q):
            pos = n_valid[i] - t_q + t
            keys = [j for j in range(min(n_valid[i], t_max))
                    if (not causal or j <= pos) and (window[0] < 0 or j >= pos - window[0])
                    and (causal or window[1] < 0 or j <= pos + window[1])]  # fmt: skip
            qt = q[i, t]
            if cos is not None:
                qt = rotate_oracle(qt, cos, sin, int(seqlens[i]) + (t if causal or window != (-1, -1) else 0),
                                   interleaved)  # fmt: skip
            if not keys:
                continue
            for hh in range(h):
                g = hh // (h // h_kv)
                logits = torch.stack([qt[hh] @ kc[rows[i], j, g] for j in keys]) * scale
                if softcap > 0:
                    logits = softcap * torch.tanh(logits / softcap)
                lse[i, hh, t] = torch.logsumexp(logits, 0)
                out[i, t, hh] = (logits.softmax(0)[:, None] * torch.stack([vc[rows[i], j, g] for j in keys])).sum(0)
    return out, lse, kc, vc


def test_flash_oracle_arguments_matter():
    """Guards the oracle: causal, window, softcap, GQA head mapping and rotary each change the answer."""
    g = torch.Generator().manual_seed(30)
    q, kc, vc = torch.randn(1, 3, 4, 16, generator=g), torch.randn(1, 8, 2, 16, generator=g), torch.randn(1, 8, 2, 16,
                                                                                                          generator=g)
    cos, sin = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    base = flash_oracle(q, kc, vc, [6])[0]
    for kw in ({"causal": True}, {"window": (1, 1)}, {"softcap": 0.3}, {"scale": 0.7}):
        assert (flash_oracle(q, kc, vc, [6], **kw)[0] - base).abs().max() > 1e-3, kw
    assert (flash_oracle(q, kc, vc.flip(2), [6])[0] - base).abs().max() > 1e-3  # query heads 0-1 read cache head 0
    k, v = torch.randn(1, 3, 2, 16, generator=g), torch.randn(1, 3, 2, 16, generator=g)
    plain = flash_oracle(q, kc, vc, [2], k, v)[0]
    for kw in ({"interleaved": True}, {"interleaved": False}):
        assert (flash_oracle(q, kc, vc, [2], k, v, cos=cos, sin=sin, **kw)[0] - plain).abs().max() > 1e-3, kw


# name, dict: t_q, t_new (0: no k/v), h_kv, b_cache, seqlens, and the call's keyword arguments
CONTRACT_CASES = [
    ("causal chunk", dict(t_q=3, t_new=3, causal=True)),
    ("non-causal chunk", dict(t_q=3, t_new=3)),
    ("no k causal", dict(t_q=2, t_new=0, causal=True)),
    ("no k non-causal", dict(t_q=2, t_new=0)),
    ("gqa 4:2", dict(t_q=1, t_new=1, h_kv=2)),
    ("gqa 4:1 causal no k split", dict(t_q=3, t_new=0, h_kv=1, causal=True, num_splits=2)),
    ("gqa 4:2 chunk split", dict(t_q=3, t_new=3, h_kv=2, causal=True, num_splits=3)),
    ("window left", dict(t_q=3, t_new=3, causal=True, window_size=(2, 0))),
    ("window both", dict(t_q=2, t_new=2, window_size=(1, 1))),
    ("window right", dict(t_q=2, t_new=0, window_size=(-1, 0))),
    ("softcap", dict(t_q=2, t_new=2, causal=True, softcap=0.5)),
    ("cache_batch_idx", dict(t_q=1, t_new=1, b_cache=5, cache_batch_idx=[4, 0, 2])),
    ("cache_batch_idx no k", dict(t_q=2, t_new=0, b_cache=4, cache_batch_idx=[3, 1, 0], causal=True)),
    ("cache larger than batch", dict(t_q=1, t_new=1, b_cache=5)),
    ("rotary interleaved", dict(t_q=2, t_new=2, causal=True, rotary=8, rotary_interleaved=True)),
    ("rotary neox", dict(t_q=2, t_new=2, causal=True, rotary=16, rotary_interleaved=False)),
    ("rotary non-causal", dict(t_q=2, t_new=2, rotary=8)),
    ("lse", dict(t_q=2, t_new=2, causal=True, return_softmax_lse=True)),
    ("lse gqa softcap", dict(t_q=1, t_new=1, h_kv=2, softcap=1.0, return_softmax_lse=True)),
    ("Tnew != Tq", dict(t_q=1, t_new=3, causal=True)),
    ("empty rows", dict(t_q=4, t_new=0, causal=True, seqlens=[2, 5, 0])),
    ("empty rows lse", dict(t_q=4, t_new=0, causal=True, seqlens=[2, 5, 0], return_softmax_lse=True)),
    ("scale", dict(t_q=2, t_new=2, causal=True, softmax_scale=-0.4)),
]
TRITON_CAPABLE = {"causal chunk", "non-causal chunk", "no k causal", "no k non-causal", "gqa 4:2",
                  "gqa 4:1 causal no k split", "gqa 4:2 chunk split", "empty rows", "scale"}  # fmt: skip
ORACLE_KW = {"causal": "causal", "window_size": "window", "softcap": "softcap", "softmax_scale": "scale",
             "rotary_interleaved": "interleaved"}  # fmt: skip


def call_entry(entry, q, k_cache, v_cache, seqlens, k=None, v=None, **kwargs):
    """One call through either public entry, each the way its callers write it."""
    if entry == "flash_attn_with_kvcache":  # flash-attn's order: k, v positional, cache_seqlens by name
        return flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=seqlens, **kwargs)
    return attention_with_kvcache(q, k_cache, v_cache, seqlens, k, v, **kwargs)


ENTRIES = ["flash_attn_with_kvcache", "attention_with_kvcache"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", CONTRACT_CASES, ids=lambda c: c[0])
def test_flash_attn_contract(backend, monkeypatch, case, entry):
    """Output, cache contents and softmax_lse vs the float64 loops, on both backends and through both entries.
    The Triton backend must really run the kernel for what it implements (counted launches), and fall back to
    the reference otherwise. An empty row's lse: +inf through flash-attn's entry, -inf through the old one."""
    name, spec = case
    spec = dict(spec)
    t_q, t_new, h_kv = spec.pop("t_q"), spec.pop("t_new"), spec.pop("h_kv", 4)
    b, t_max, h, d = 3, 12, 4, 16
    b_cache = spec.pop("b_cache", b)
    seqlens = torch.tensor(spec.pop("seqlens", [0, 4, t_max - max(t_new, t_q)]), dtype=torch.int32)
    g = torch.Generator().manual_seed(len(name))
    q = torch.randn(b, t_q, h, d, generator=g)
    k_cache, v_cache = (torch.randn(b_cache, t_max, h_kv, d, generator=g) for _ in range(2))
    k = v = None
    if t_new:
        k, v = (torch.randn(b, t_new, h_kv, d, generator=g) for _ in range(2))
    kwargs = {key: val for key, val in spec.items() if key != "rotary"}
    if "cache_batch_idx" in kwargs:
        kwargs["cache_batch_idx"] = torch.tensor(kwargs["cache_batch_idx"], dtype=torch.int32)
    oracle_kw = {ORACLE_KW[key]: val for key, val in kwargs.items() if key in ORACLE_KW}
    if "rotary" in spec:
        cos, sin = torch.randn(t_max, spec["rotary"] // 2, generator=g), torch.randn(t_max, spec["rotary"] // 2,
                                                                                     generator=g)  # fmt: skip
        kwargs |= {"rotary_cos": cos, "rotary_sin": sin}
        oracle_kw |= {"cos": cos, "sin": sin}
    want, want_lse, k_want, v_want = flash_oracle(q, k_cache, v_cache, seqlens, k, v,
                                                  batch_idx=kwargs.get("cache_batch_idx"), **oracle_kw)  # fmt: skip
    launches = []
    kernel = decode._attention_decode_kernel
    monkeypatch.setattr(decode, "_attention_decode_kernel", type("Counting", (), {
        "__getitem__": lambda self, grid: launches.append(grid) or kernel[grid]})())  # fmt: skip
    got = call_entry(entry, q, k_cache, v_cache, seqlens, k, v, **kwargs)
    assert bool(launches) == (backend == "triton" and name in TRITON_CAPABLE), launches
    out = got[0] if spec.get("return_softmax_lse") else got
    check(out, want, None, f"{backend} {name}")
    if spec.get("return_softmax_lse"):
        assert got[1].dtype == torch.float32 and got[1].shape == (b, h, t_q)
        if entry == "flash_attn_with_kvcache":
            want_lse = want_lse.masked_fill(want_lse == float("-inf"), float("inf"))
        torch.testing.assert_close(got[1].double(), want_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_cache.double(), k_want, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_cache.double(), v_want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["expanded", "strided", "0-d", "[1]", "int"])
@pytest.mark.parametrize("new_kv", [True, False], ids=["append", "no-append"])
def test_cache_seqlens_views_and_broadcast(backend, form, new_kv):
    """cache_seqlens as LlamaGen passes it (`input_pos[:1].expand(B)`), a `[::2]` view, a 0-d or `[1]` tensor
    (broadcast to B) or an int: read by value on both backends. A kernel indexing `SEQLENS + b` in the raw
    storage reads the wrong entries of the expanded and strided views."""
    b, t_max, h, d = 4, 10, 2, 16
    storage = torch.tensor([5, 0, 7, 2, 8, 1, 3, 6], dtype=torch.int32)
    seqlens = {"expanded": storage[:1].expand(b), "strided": storage[::2], "0-d": storage[0], "[1]": storage[:1],
               "int": 5}[form]  # fmt: skip
    g = torch.Generator().manual_seed(40)
    q = torch.randn(b, 1, h, d, generator=g)
    k_cache, v_cache = torch.randn(b, t_max, h, d, generator=g), torch.randn(b, t_max, h, d, generator=g)
    k, v = (torch.randn(b, 1, h, d, generator=g), torch.randn(b, 1, h, d, generator=g)) if new_kv else (None, None)
    want, _, k_want, v_want = flash_oracle(q, k_cache, v_cache, seqlens, k, v)
    out = attention_with_kvcache(q, k_cache, v_cache, seqlens, k=k, v=v)
    check(out, want, None, f"{backend} {form}")
    torch.testing.assert_close(k_cache.double(), k_want, rtol=0, atol=0)
    torch.testing.assert_close(v_cache.double(), v_want, rtol=0, atol=0)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("arg", ["cache_leftpad", "block_table", "alibi_slopes"])
def test_unsupported_flash_arguments_raise(backend, arg, entry):
    q = torch.randn(2, 1, 2, 16)
    c = torch.randn(2, 8, 2, 16)
    with pytest.raises(NotImplementedError, match=arg):
        call_entry(entry, q, c, c.clone(), 3, **{arg: torch.zeros(2, dtype=torch.int32)})


# ---- flash_attn_with_kvcache: flash-attn's signature and call forms -------------------------------------

# flash-attn 2.x, flash_attn_interface.flash_attn_with_kvcache, as documented
SIGNATURE = ("q", "k_cache", "v_cache", ("k", None), ("v", None), ("rotary_cos", None), ("rotary_sin", None),
             ("cache_seqlens", None), ("cache_batch_idx", None), ("cache_leftpad", None), ("block_table", None),
             ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)), ("softcap", 0.0),
             ("rotary_interleaved", True), ("alibi_slopes", None), ("num_splits", 0),
             ("return_softmax_lse", False))  # fmt: skip


def test_signature_is_flash_attns():
    import inspect

    params = list(inspect.signature(flash_attn_with_kvcache).parameters.values())
    got = tuple(p.name if p.default is inspect.Parameter.empty else (p.name, p.default) for p in params)
    assert got == SIGNATURE
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_flash_attn_call_forms(backend):
    """The calls flash-attn users write: k, v 4th and 5th positionally (the old entry took cache_seqlens there:
    'multiple values for argument'), cache_seqlens=None for a full cache, window_size as a list or a tensor."""
    b, t_max, h, d = 2, 9, 2, 16
    g = torch.Generator().manual_seed(50)
    q, k, v = (torch.randn(b, 1, h, d, generator=g) for _ in range(3))
    k_cache, v_cache = torch.randn(b, t_max, h, d, generator=g), torch.randn(b, t_max, h, d, generator=g)
    seqlens = torch.tensor([3, 6], dtype=torch.int32)
    want, _, k_want, v_want = flash_oracle(q, k_cache, v_cache, seqlens, k, v, causal=True)
    kc, vc = k_cache.clone(), v_cache.clone()
    check(flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, causal=True), want, None, "positional k, v")
    assert torch.equal(kc.double(), k_want) and torch.equal(vc.double(), v_want)
    full, _, _, _ = flash_oracle(q, k_cache, v_cache, [t_max])
    check(flash_attn_with_kvcache(q, k_cache, v_cache), full, None, "cache_seqlens=None: the whole cache")
    with pytest.raises(RuntimeError, match="cache_seqlens"):  # flash-attn: k without seqlens is an error
        flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v)
    windowed, _, _, _ = flash_oracle(q, k_cache, v_cache, seqlens, window=(2, 0))
    for form in ((2, 0), [2, 0], torch.tensor([2, 0]), torch.tensor([2, 0], dtype=torch.int32)):
        got = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, window_size=form)
        check(got, windowed, None, f"window_size as {type(form).__name__}")


@pytest.mark.parametrize("entry", ENTRIES)
def test_argument_errors_are_runtime_errors_too(backend, entry):
    """flash-attn's checks raise RuntimeError: ours (ValueErrors naming the value) are caught as that too."""
    q, c = torch.randn(2, 1, 2, 16), torch.randn(2, 8, 2, 16)
    for kwargs in ({"causal": 1}, {"softcap": -1.0}, {"window_size": (-2, 0)}):
        with pytest.raises(RuntimeError) as e:
            call_entry(entry, q, c, c.clone(), torch.tensor([3, 4], dtype=torch.int32), **kwargs)
        assert isinstance(e.value, ValueError)


# ---- D3: slots past cache_seqlens never reach the output --------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("garbage", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("positions", ["host", "device"])
@pytest.mark.parametrize("variant", ["append", "no-append", "softcap", "cache_batch_idx", "window"])
def test_unwritten_slots_never_reach_the_output(backend, monkeypatch, entry, garbage, positions, variant):
    """flash-attn's contract: slots at or past cache_seqlens are never read (a `torch.empty` cache holds garbage
    there). The user's case: `kc[1, 6:] = nan` with cache_seqlens [3, 5] made row 1 all NaN on the reference.
    "device" positions take the path of CUDA tensors (no host read) with the host shortcut switched off."""
    if positions == "device":
        monkeypatch.setattr(kvcache, "host_readable", lambda t: False)
        monkeypatch.setattr(ref, "host_readable", lambda t: False)
    b, t_max, h, d = 2, 10, 2, 16
    g = torch.Generator().manual_seed(51)
    q = torch.randn(b, 1, h, d, generator=g)
    k_cache, v_cache = torch.randn(b, t_max, h, d, generator=g), torch.randn(b, t_max, h, d, generator=g)
    seqlens = torch.tensor([3, 5], dtype=torch.int32)
    k = v = None
    kwargs = {}
    if variant != "no-append":
        k, v = torch.randn(b, 1, h, d, generator=g), torch.randn(b, 1, h, d, generator=g)
    if variant == "softcap":
        kwargs = {"softcap": 0.7, "return_softmax_lse": True}
    elif variant == "window":
        kwargs = {"window_size": (2, 0)}
    elif variant == "cache_batch_idx":
        kwargs = {"cache_batch_idx": torch.tensor([1, 0], dtype=torch.int32)}
    rows = kwargs.get("cache_batch_idx", torch.arange(b)).tolist()
    n_valid = (seqlens + (1 if k is not None else 0)).tolist()
    clean_k, clean_v = k_cache.clone(), v_cache.clone()
    for i, row in enumerate(rows):  # garbage in every slot past each sample's valid keys (after the append)
        k_cache[row, n_valid[i]:] = garbage
        v_cache[row, n_valid[i]:] = garbage
    oracle_kw = {"softcap": kwargs.get("softcap", 0.0), "window": kwargs.get("window_size", (-1, -1))}
    want = flash_oracle(q, clean_k, clean_v, seqlens, k, v, batch_idx=kwargs.get("cache_batch_idx"), **oracle_kw)[0]
    got = call_entry(entry, q, k_cache, v_cache, seqlens, k, v, **kwargs)
    out = got[0] if kwargs.get("return_softmax_lse") else got
    assert torch.isfinite(out).all(), f"garbage reached the output: {out}"
    check(out, want, None, f"{backend} {variant}")


# ---- D27: cache_batch_idx out of range ---------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("idx", [[0, 3], [-1, 1], [5, 0]])
def test_cache_batch_idx_out_of_range_is_a_clear_error(backend, entry, idx):
    """A row index outside the caches: a ValueError naming the indices before anything is written (it was a raw
    IndexError from the reference's indexing, a device-side assert on CUDA). CPU tensors are read on the host;
    on CUDA the same check runs with SPECTRALAR_DEBUG_CHECKS=1 (test_debug_checks_cache_batch_idx)."""
    q = torch.randn(2, 1, 2, 16)
    k_cache, v_cache = torch.randn(3, 8, 2, 16), torch.randn(3, 8, 2, 16)
    before = k_cache.clone()
    with pytest.raises(ValueError, match=r"cache_batch_idx must lie in \[0, 3\).*" + str(idx[0])):
        call_entry(entry, q, k_cache, v_cache, torch.tensor([1, 2], dtype=torch.int32), q, q,
                   cache_batch_idx=torch.tensor(idx, dtype=torch.int32))  # fmt: skip
    assert torch.equal(k_cache, before), "a rejected call must not touch the cache"


def test_debug_checks_cache_batch_idx(monkeypatch):
    """Values not in host memory (here: the host read switched off, as for CUDA tensors) are checked only with
    the debug switch, which costs a host sync."""
    monkeypatch.setattr(kvcache, "host_readable", lambda t: False)
    monkeypatch.setenv("SPECTRALAR_DEBUG_CHECKS", "1")
    q, c = torch.randn(2, 1, 2, 16), torch.randn(3, 8, 2, 16)
    with pytest.raises(ValueError, match="cache_batch_idx"):
        flash_attn_with_kvcache(q, c, c.clone(), cache_seqlens=torch.tensor([1, 2], dtype=torch.int32),
                                cache_batch_idx=torch.tensor([0, 3], dtype=torch.int32))  # fmt: skip


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("new_kv", [True, False], ids=["append", "no-append"])
def test_decode_v2_gqa_causal_flag(causal, new_kv):
    """The launcher's GQA head mapping and causal flag, NaN-poisoned output, split-K, negative first positions
    (a query that sees nothing returns zeros)."""
    b, t_max, h, h_kv, d, t_q = 3, 40, 4, 2, 24, 3
    g = torch.Generator().manual_seed(41)
    k_cache, v_cache = (torch.randn(b, t_max, h_kv, d, generator=g) for _ in range(2))
    q = torch.randn(b, t_q, h, d, generator=g)
    k, v = (torch.randn(b, t_q, h_kv, d, generator=g) for _ in range(2)) if new_kv else (None, None)
    first = torch.tensor([-2, 17, t_max - t_q], dtype=torch.int32)  # position of each sample's first query
    n_valid = first + t_q if not new_kv else first
    want, _, k_want, v_want = flash_oracle(q, k_cache, v_cache, n_valid, k, v, causal=causal)
    out = decode.attention_with_kvcache_fwd(q, k_cache, v_cache, first, d**-0.5, k=k, v=v, out=nan_like(q),
                                            num_splits=3, causal=causal)  # fmt: skip
    check(out, want, None, f"gqa causal={causal}")
    torch.testing.assert_close(k_cache.double(), k_want, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["auto", "ref", "triton"])
def test_unwritten_slots_on_gpu(kernels):
    """CUDA tensors (positions never read on the host): NaN in every slot past cache_seqlens stays out of the
    output on every backend."""
    from spectralar_kernels import use_backend

    b, t_max, h, d = 3, 40, 4, 64
    g = torch.Generator().manual_seed(52)
    q, k, v = (torch.randn(b, 1, h, d, generator=g).cuda() for _ in range(3))
    k_cache, v_cache = (torch.randn(b, t_max, h, d, generator=g) for _ in range(2))
    seqlens = torch.tensor([3, 17, 0], dtype=torch.int32)
    want = flash_oracle(q.cpu(), k_cache, v_cache, seqlens, k.cpu(), v.cpu())[0]
    for i, n in enumerate((seqlens + 1).tolist()):
        k_cache[i, n:] = float("nan")
        v_cache[i, n:] = float("nan")
    with use_backend(kernels):
        out = flash_attn_with_kvcache(q, k_cache.cuda(), v_cache.cuda(), k, v, cache_seqlens=seqlens.cuda())
    assert torch.isfinite(out).all()
    check(out.cpu(), want, None, f"gpu {kernels}")
