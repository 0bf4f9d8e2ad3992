"""scaled_dot_product_attention: the drop-in for torch's, checked against torch's own function in float64.

Every case runs on both backends (`backend` fixture). What the Triton kernel implements (full, causal and
prefix-LM attention with Tq == Tk, GQA) must really run it under SPECTRALAR_KERNELS=triton (launches are
counted); masks, dropout, Tq != Tk and block-causal run torch's SDPA on both. Gradients are compared too.
"""

import re

import pytest
import torch
import torch.nn.functional as F

import spectralar_kernels
from spectralar_kernels import scaled_dot_product_attention as sdpa
from spectralar_kernels.attn import sdpa as sdpa_module
from spectralar_kernels.attn import triton as attn_triton
from spectralar_kernels.testing import assert_close_to_oracle


def qkv(b, h_q, h_kv, t_q, t_k, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h_q, t_q, d, generator=g).to(dtype).requires_grad_(True)
    k, v = (torch.randn(b, h_kv, t_k, d, generator=g).to(dtype).requires_grad_(True) for _ in range(2))
    return q, k, v


def torch64(q, k, v, **kw):
    """torch's SDPA in float64 on detached copies: (out, (q, k, v) leaves for gradients)."""
    x = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    mask = kw.pop("attn_mask", None)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    return F.scaled_dot_product_attention(*x, attn_mask=mask, **kw), x


def explicit_mask(t_q, t_k, prefix_len=None, block_sizes=None):
    """The extensions' masks from their definitions, for torch's SDPA (True = attend)."""
    t = torch.arange(t_q)[:, None]
    j = torch.arange(t_k)[None, :]
    if block_sizes is not None:
        block = torch.tensor([i for i, n in enumerate(block_sizes) for _ in range(n)])
        return block[None, :] <= block[:, None]
    return (j <= t) | (j < prefix_len)


def compare(backend, monkeypatch, q, k, v, want, leaves, kernel_expected, name, **kw):
    """Our output and gradients vs float64 torch; counts Triton forward launches."""
    launches = []
    fwd = attn_triton.attention_fwd
    monkeypatch.setattr(attn_triton, "attention_fwd", lambda *a, **k_: launches.append(1) or fwd(*a, **k_))
    out = sdpa(q, k, v, **kw)
    assert bool(launches) == (backend == "triton" and kernel_expected), f"{name}: {len(launches)} launches"
    assert out.shape == want.shape and out.dtype == q.dtype
    assert_close_to_oracle(out.detach(), want, None, atol=2e-6, rtol=1e-4, name=name)
    do = torch.randn(want.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(out, (q, k, v), do)
    grads = torch.autograd.grad(want, leaves, do.double())
    for n, a, w in zip("qkv", got, grads):
        assert_close_to_oracle(a, w, None, atol=1e-5, rtol=1e-4, name=f"d{n} {name}")


# name, (B, Hq, Hkv, Tq, Tk, D), keyword arguments for both, whether the Triton kernel takes it
STRUCTURAL = [
    ("full", (2, 2, 2, 9, 9, 16), {}, True),
    ("causal", (2, 2, 2, 9, 9, 16), {"is_causal": True}, True),
    ("causal Tq<Tk", (1, 2, 2, 5, 9, 16), {"is_causal": True}, False),
    ("causal Tq>Tk", (1, 2, 2, 9, 5, 16), {"is_causal": True}, False),
    ("full Tq!=Tk", (1, 2, 2, 3, 7, 16), {}, False),
    ("gqa causal", (1, 4, 2, 7, 7, 16), {"is_causal": True, "enable_gqa": True}, True),
    ("gqa 4:1 Tq<Tk", (1, 4, 1, 3, 7, 16), {"is_causal": True, "enable_gqa": True}, False),
    ("scale", (1, 2, 2, 7, 7, 24), {"is_causal": True, "scale": 0.3}, True),
    ("head dim 40", (1, 1, 1, 7, 7, 40), {}, True),
]


@pytest.mark.parametrize("case", STRUCTURAL, ids=lambda c: c[0])
def test_matches_torch(backend, monkeypatch, case):
    name, (b, h_q, h_kv, t_q, t_k, d), kw, kernel = case
    q, k, v = qkv(b, h_q, h_kv, t_q, t_k, d, seed=len(name))
    want, leaves = torch64(q, k, v, **kw)
    compare(backend, monkeypatch, q, k, v, want, leaves, kernel, name, **kw)


@pytest.mark.parametrize("shape", [(6, 8), (2, 1, 6, 8), (1, 3, 1, 8), (1, 8)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_random_masks(backend, monkeypatch, kind, shape):
    """Random boolean (True = attend) and additive masks in broadcastable shapes, with some rows fully masked
    in the boolean case: torch returns zeros there, and so must we."""
    q, k, v = qkv(2, 3, 3, 6, 8, 16, seed=11)
    g = torch.Generator().manual_seed(12)
    if kind == "bool":
        mask = torch.rand(shape, generator=g) < 0.6
        if shape[-2] > 1:
            mask[..., 0, :] = False  # a row that sees nothing
    else:
        mask = torch.randn(shape, generator=g)
        mask = mask.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))
        mask[..., 0] = 0.0  # every row keeps a finite logit
    want, leaves = torch64(q, k, v, attn_mask=mask)
    compare(backend, monkeypatch, q, k, v, want, leaves, False, f"{kind} {shape}", attn_mask=mask)
    if kind == "bool" and shape[-2] > 1:
        assert torch.equal(sdpa(q, k, v, attn_mask=mask)[..., 0, :].detach(), torch.zeros(2, 3, 16))


@pytest.mark.parametrize("prefix_len", [0, 1, 4, 9])
def test_prefix_len(backend, monkeypatch, prefix_len):
    q, k, v = qkv(1, 2, 2, 9, 9, 16, seed=20 + prefix_len)
    want, leaves = torch64(q, k, v, attn_mask=explicit_mask(9, 9, prefix_len=prefix_len))
    compare(backend, monkeypatch, q, k, v, want, leaves, True, f"prefix {prefix_len}", prefix_len=prefix_len)


def test_prefix_len_with_padding_mask(backend, monkeypatch):
    """An extension combined with attn_mask: a key must pass both (torch path)."""
    q, k, v = qkv(2, 2, 2, 9, 9, 16, seed=24)
    pad = torch.arange(9)[None, None, None, :] < torch.tensor([9, 6])[:, None, None, None]  # key padding per sample
    want, leaves = torch64(q, k, v, attn_mask=explicit_mask(9, 9, prefix_len=3) & pad)
    compare(backend, monkeypatch, q, k, v, want, leaves, False, "prefix + padding", prefix_len=3, attn_mask=pad)


@pytest.mark.parametrize("block_sizes", [[1, 4, 4], [3, 3, 3], [9]])
def test_block_causal(backend, monkeypatch, block_sizes):
    q, k, v = qkv(1, 2, 2, 9, 9, 16, seed=30)
    want, leaves = torch64(q, k, v, attn_mask=explicit_mask(9, 9, block_sizes=block_sizes))
    compare(backend, monkeypatch, q, k, v, want, leaves, False, f"blocks {block_sizes}", block_sizes=block_sizes)


@pytest.mark.parametrize("scale", [0.0, -0.5])
@pytest.mark.parametrize("t_q", [7, 4])
def test_zero_and_negative_scale_stay_finite(backend, monkeypatch, scale, t_q):
    """torch's CPU is_causal scales the masked logits (NaN for these scales); the explicit mask does not."""
    q, k, v = qkv(1, 2, 2, t_q, 7, 16, seed=40)
    want, leaves = torch64(q, k, v, attn_mask=explicit_mask(t_q, 7, prefix_len=0), scale=scale)
    compare(backend, monkeypatch, q, k, v, want, leaves, t_q == 7, f"scale {scale}", is_causal=True, scale=scale)


def test_dropout_is_torchs(backend):
    """dropout_p > 0 runs torch's SDPA: the same seed gives torch's exact output."""
    q, k, v = qkv(1, 2, 2, 6, 6, 16, seed=50)
    torch.manual_seed(0)
    got = sdpa(q, k, v, dropout_p=0.3, is_causal=True)
    torch.manual_seed(0)
    want = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision(backend, dtype):
    q, k, v = qkv(1, 2, 2, 17, 17, 32, seed=60, dtype=dtype)
    out = sdpa(q, k, v, is_causal=True)
    want, _ = torch64(q, k, v, is_causal=True)
    same = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close_to_oracle(out.detach(), want, same.detach(), name=f"{dtype}")


def test_float64_runs_torch(backend):
    q, k, v = qkv(1, 2, 2, 5, 5, 16, seed=61, dtype=torch.float64)
    assert torch.equal(sdpa(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_exported():
    assert spectralar_kernels.scaled_dot_product_attention is sdpa


def _bad_cases():
    """Inputs torch rejects: ours must raise what torch raises (type and message), on both backends."""
    x = torch.randn(1, 2, 5, 16)
    return [
        ("int", (x.long(), x.long(), x.long()), {}),
        ("dtype", (x, x.half(), x.half()), {}),
        ("D", (x, torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)), {}),
        ("gqa multiple", (torch.randn(1, 3, 5, 16), x, x), {"enable_gqa": True}),
        ("mask shape", (x, x, x), {"attn_mask": torch.ones(5, 4, dtype=torch.bool)}),
        ("mask dtype", (x, x, x), {"attn_mask": torch.ones(5, 5, dtype=torch.int32)}),
        ("mask float64 for float32", (x, x, x), {"attn_mask": torch.zeros(5, 5, dtype=torch.float64)}),
        ("mask 1-D", (x, x, x), {"attn_mask": torch.ones(5, dtype=torch.bool)}),
        ("dropout > 1", (x, x, x), {"dropout_p": 1.5}),
        ("scale str", (x, x, x), {"scale": "a"}),
        ("causal int", (x, x, x), {"is_causal": 1}),
        ("gqa int", (x, x, x), {"enable_gqa": 1}),
        ("device", (x, x.to("meta"), x), {}),
        ("not a tensor", (x.numpy(), x, x), {}),
        ("scale positional", (x, x, x, None, 0.0, False, 0.5), {}),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors_are_torchs(backend, case):
    _, args, kwargs = case
    with pytest.raises(Exception) as want:
        F.scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(want.type) as got:
        sdpa(*args, **kwargs)
    # the same message, but for torch's note of a positional argument's index (we pass them on positionally)
    assert type(got.value) is want.type
    assert re.sub(r" \(position \d+\)", "", str(got.value)) == re.sub(r" \(position \d+\)", "", str(want.value))


def _extension_cases():
    x = torch.randn(1, 2, 5, 16)
    return [
        ("prefix", (x, x, x), {"prefix_len": 6}, "prefix_len"),
        ("prefix bool", (x, x, x), {"prefix_len": True}, "prefix_len"),
        ("blocks sum", (x, x, x), {"block_sizes": [2, 2]}, "block_sizes"),
        ("blocks Tq!=Tk", (x, torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)), {"block_sizes": [5]}, "block_sizes"),
        ("both", (x, x, x), {"prefix_len": 2, "block_sizes": [5]}, "not both"),
    ]


@pytest.mark.parametrize("case", _extension_cases(), ids=lambda c: c[0])
def test_extension_errors(backend, case):
    _, args, kwargs, match = case
    with pytest.raises(ValueError, match=match):
        sdpa(*args, **kwargs)


# ---- torch's input domain: the same results, whatever path takes the call ------------------------------------


@pytest.fixture(params=["ref", "triton", "user"])
def mode(request, monkeypatch):
    """ref / triton: `use_backend` under the Triton interpreter (how the tests run); user: the module as a process
    without the interpreter imports it (a CPU-only torch: every call is torch's own, no check at all)."""
    if request.param == "user":
        monkeypatch.setattr(sdpa_module, "_INTERPRETER", False)
        monkeypatch.setattr(sdpa_module, "_NO_KERNELS", not torch.backends.cuda.is_built())
        yield request.param
    else:
        with spectralar_kernels.use_backend(request.param):
            yield request.param


def _r(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _domain_cases():
    """(name, args, kwargs) torch 2.13's SDPA accepts, beyond the 4-D structural calls above."""
    q, k = _r(1, 2, 5, 16, seed=1), _r(1, 2, 7, 16, seed=2)
    q64, k64 = q.double(), k.double()
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(3)) < 0.7
    mask[:, 0] = True
    return [
        ("2-D", (_r(5, 16), _r(7, 16), _r(7, 16)), {}),
        ("3-D", (_r(4, 5, 16), _r(4, 7, 16), _r(4, 7, 16)), {"is_causal": True}),
        ("5-D", (_r(2, 2, 3, 5, 16), _r(2, 2, 3, 7, 16), _r(2, 2, 3, 7, 16)), {}),
        ("empty batch", (_r(0, 2, 5, 16), _r(0, 2, 7, 16), _r(0, 2, 7, 16)), {}),
        ("zero-length query", (_r(1, 2, 0, 16), k, k), {"is_causal": True}),
        ("zero-length keys", (q, _r(1, 2, 0, 16), _r(1, 2, 0, 16)), {}),
        ("float32 mask, float64 q", (q64, k64, k64), {"attn_mask": _r(5, 7, seed=4)}),
        ("bool mask [Tq, Tk]", (q, k, k), {"attn_mask": mask}),
        ("dropout_p=1.0", (q, k, k), {"dropout_p": 1.0}),
        ("scale float", (q, k, k), {"scale": 0.3}),
        ("scale inf", (q, k, k), {"scale": float("inf")}),
        ("scale 0-d tensor", (q, k, k), {"scale": torch.tensor(0.3)}),
        ("is_causal with bool mask", (q, k, k), {"attn_mask": mask, "is_causal": True}),
        ("is_causal with float mask", (q, k, k), {"attn_mask": _r(5, 7, seed=5), "is_causal": True}),
        ("is_causal Tq<Tk (top-left)", (q, k, k), {"is_causal": True}),
        ("is_causal Tq=Tk", (q, q, q), {"is_causal": True}),
        ("gqa", (_r(1, 4, 5, 16), k, k), {"enable_gqa": True, "is_causal": True}),
        ("gqa Tq=Tk", (_r(1, 4, 7, 16), k, k), {"enable_gqa": True}),
        ("value head dim 8", (q, k, _r(1, 2, 7, 8)), {}),
        ("fp16", (q.half(), k.half(), k.half()), {"is_causal": True}),
        ("bf16", (q.bfloat16(), k.bfloat16(), k.bfloat16()), {}),
        ("float64 Tq=Tk", (q64, q64, q64), {"is_causal": True}),
        ("transposed views", (_r(1, 5, 2, 16).transpose(1, 2), _r(1, 5, 2, 16).transpose(1, 2),
                              _r(1, 5, 2, 16).transpose(1, 2)), {}),
        ("all by name", (), {"query": q, "key": k, "value": k, "is_causal": True}),
        ("positional mask, dropout 0, causal", (q, k, k, mask, 0.0, True), {}),
    ]


@pytest.mark.parametrize("case", _domain_cases(), ids=lambda c: c[0])
def test_torch_input_domain(mode, monkeypatch, case):
    """Every input torch accepts gives torch's result: bit for bit where torch's own call runs, within rounding
    where our kernel takes it (4-D Tq == Tk without a mask, under SPECTRALAR_KERNELS=triton)."""
    name, args, kwargs = case
    launches = []
    fwd = attn_triton.attention_fwd
    monkeypatch.setattr(attn_triton, "attention_fwd", lambda *a, **k_: launches.append(1) or fwd(*a, **k_))
    want = F.scaled_dot_product_attention(*args, **kwargs)
    got = sdpa(*args, **kwargs)
    assert got.shape == want.shape and got.dtype == want.dtype
    if launches:
        assert mode == "triton" and name in ("is_causal Tq=Tk", "gqa Tq=Tk", "transposed views"), name
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_dropout_draws_torchs_mask(mode):
    """The same seed gives torch's exact dropout pattern, on every path."""
    q, k = _r(1, 2, 5, 16, seed=6), _r(1, 2, 7, 16, seed=7)
    for kw in ({"dropout_p": 0.3}, {"dropout_p": 0.3, "is_causal": True}, {"dropout_p": 0.5, "scale": 0.2}):
        torch.manual_seed(0)
        got = sdpa(q, k, k, **kw)
        torch.manual_seed(0)
        assert torch.equal(got, F.scaled_dot_product_attention(q, k, k, **kw)), kw


def test_gradients_are_torchs(mode):
    q, k, v = (x.requires_grad_(True) for x in (_r(2, 3, 5, 16, seed=8), _r(2, 3, 7, 16, seed=9),
                                                _r(2, 3, 7, 16, seed=10)))  # fmt: skip
    mask = _r(5, 7, seed=11)
    do = _r(2, 3, 5, 16, seed=12)
    got = torch.autograd.grad(sdpa(q, k, v, attn_mask=mask, is_causal=True), (q, k, v), do)
    want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True), (q, k, v), do)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors_are_torchs_in_a_user_process(monkeypatch, case):
    """The pass-through (no interpreter, a CPU-only torch): torch's exception, type and message."""
    monkeypatch.setattr(sdpa_module, "_INTERPRETER", False)
    monkeypatch.setattr(sdpa_module, "_NO_KERNELS", True)
    _, args, kwargs = case
    with pytest.raises(Exception) as want:
        F.scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(want.type) as got:
        sdpa(*args, **kwargs)
    assert str(got.value) == str(want.value)


def test_signature_is_torchs():
    """torch's parameters in torch's order with torch's defaults (scale and enable_gqa keyword-only), then the
    two keyword-only extensions."""
    import inspect

    params = inspect.signature(sdpa).parameters.values()
    got = [(p.name, p.kind, p.default) for p in params]
    pk, kw, empty = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty
    assert got == [("query", pk, empty), ("key", pk, empty), ("value", pk, empty), ("attn_mask", pk, None),
                   ("dropout_p", pk, 0.0), ("is_causal", pk, False), ("scale", kw, None), ("enable_gqa", kw, False),
                   ("prefix_len", kw, None), ("block_sizes", kw, None)]  # fmt: skip
