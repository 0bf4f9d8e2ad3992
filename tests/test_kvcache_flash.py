"""attention_with_kvcache against flash-attn's `flash_attn_with_kvcache` contract, argument by argument, with
float64 loops written here as the oracle; cache_seqlens given as expanded / strided views, 0-d and `[1]` tensors.
"""

import pytest
import torch
from test_kvcache import check

from spectralar_kernels import attention_with_kvcache
from spectralar_kernels.attn import decode
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


@pytest.mark.parametrize("case", CONTRACT_CASES, ids=lambda c: c[0])
def test_flash_attn_contract(backend, monkeypatch, case):
    """Output, cache contents and softmax_lse vs the float64 loops, on both backends. The Triton backend must
    really run the kernel for what it implements (counted launches), and fall back to the reference otherwise."""
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
    got = attention_with_kvcache(q, k_cache, v_cache, seqlens, k, v, **kwargs)
    assert bool(launches) == (backend == "triton" and name in TRITON_CAPABLE), launches
    out = got[0] if spec.get("return_softmax_lse") else got
    check(out, want, None, f"{backend} {name}")
    if spec.get("return_softmax_lse"):
        assert got[1].dtype == torch.float32 and got[1].shape == (b, h, t_q)
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


@pytest.mark.parametrize("arg", ["cache_leftpad", "block_table", "alibi_slopes"])
def test_unsupported_flash_arguments_raise(backend, arg):
    q = torch.randn(2, 1, 2, 16)
    c = torch.randn(2, 8, 2, 16)
    with pytest.raises(NotImplementedError, match=arg):
        attention_with_kvcache(q, c, c.clone(), 3, **{arg: torch.zeros(2, dtype=torch.int32)})


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
