"""attention(q, k, v, causal, prefix_len): forward and gradients vs a float64 SDPA oracle.

The oracle builds its boolean mask straight from the definition (key j visible to query t iff
`j <= t or j < prefix_len`), independently of ref.py. Triton cases run under the interpreter on CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close_to_oracle, nan_like

from spectralar_kernels import attention
from spectralar_kernels.attention import ref

# (B, H, D) per sequence length: tiny for the interpreter, every T a non-multiple of the 64-row tile
# except where it crosses one (65).
SHAPES = {1: (2, 2, 16), 7: (2, 1, 32), 17: (1, 2, 16), 65: (1, 2, 32)}
MASKS = ["full", "causal", "prefix1", "prefix_mid", "prefix_t-1", "prefix_t"]


def mask_args(name: str, t: int) -> tuple[bool, int]:
    return {
        "full": (False, 0),
        "causal": (True, 0),
        "prefix1": (True, min(1, t)),
        "prefix_mid": (True, t // 2),
        "prefix_t-1": (True, t - 1),
        "prefix_t": (True, t),
    }[name]


def oracle(q, k, v, causal, prefix_len, scale=None):
    """float64 SDPA with an explicit boolean mask built from the definition."""
    t = q.shape[1]
    rows = torch.arange(t)[:, None]
    cols = torch.arange(t)[None, :]
    mask = (cols <= rows) | (cols < prefix_len) if causal else torch.ones(t, t, dtype=torch.bool)
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale).transpose(1, 2)


def make_qkv(b, t, h, d, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, d, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def check(out, want, same_precision_ref, name):
    return assert_close_to_oracle(out, want, same_precision_ref, atol=2e-6, rtol=1e-4, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("t", sorted(SHAPES))
def test_forward(backend, t, mask, dtype):
    b, h, d = SHAPES[t]
    causal, prefix_len = mask_args(mask, t)
    q, k, v = make_qkv(b, t, h, d, dtype, seed=t)
    out = attention(q, k, v, causal=causal, prefix_len=prefix_len)
    assert out.dtype == dtype and out.shape == q.shape
    same = ref.attention_ref(q, k, v, causal, prefix_len) if dtype != torch.float32 else None
    check(out, oracle(q, k, v, causal, prefix_len), same, f"{backend} T={t} {mask}")


def test_oracle_mask_matters():
    """Guards the oracle: the causal, prefix-LM and full results really differ."""
    q, k, v = make_qkv(1, 17, 1, 16, torch.float64)
    outs = [oracle(q, k, v, c, p) for c, p in [(False, 0), (True, 0), (True, 8)]]
    assert (outs[0] - outs[1]).abs().max() > 1e-2
    assert (outs[1] - outs[2]).abs().max() > 1e-2
    assert torch.equal(oracle(q, k, v, True, 17), outs[0])


@pytest.mark.parametrize("d", [64, 24])  # 24: padded to a 32-wide tile with masks
def test_forward_head_dims(backend, d):
    q, k, v = make_qkv(2, 17, 2, d, torch.float32, seed=d)
    out = attention(q, k, v, causal=True, prefix_len=5)
    check(out, oracle(q, k, v, True, 5), None, f"D={d}")


def test_head_dim_above_triton_limit_falls_back(backend):
    q, k, v = make_qkv(1, 7, 1, 160, torch.float32)
    out = attention(q, k, v, causal=True)
    check(out, oracle(q, k, v, True, 0), None, "D=160")


def test_softmax_scale_and_strided_inputs(backend):
    """q, k, v sliced out of one fused qkv tensor (row stride 3*H*D), and a non-default scale."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 17, 3, 2, 16, generator=g)
    q, k, v = qkv.unbind(2)
    out = attention(q, k, v, causal=True, prefix_len=4, softmax_scale=0.7)
    check(out, oracle(q, k, v, True, 4, scale=0.7), None, "strided")


GRAD_CASES = [(7, "causal"), (17, "prefix_mid"), (17, "full"), (65, "prefix_mid"), (65, "causal")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("t,mask", GRAD_CASES)
def test_gradients(backend, t, mask, dtype):
    b, h, d = SHAPES[t]
    causal, prefix_len = mask_args(mask, t)
    q, k, v = make_qkv(b, t, h, d, dtype, seed=t + 1, requires_grad=True)
    do = torch.randn(b, t, h, d, generator=torch.Generator().manual_seed(99)).to(dtype)
    out = attention(q, k, v, causal=causal, prefix_len=prefix_len)
    got = torch.autograd.grad(out, (q, k, v), do)

    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    want = torch.autograd.grad(oracle(q64, k64, v64, causal, prefix_len), (q64, k64, v64), do.double())
    same = [None] * 3
    if dtype != torch.float32:
        same = torch.autograd.grad(ref.attention_ref(q, k, v, causal, prefix_len), (q, k, v), do)
    for name, g_out, g_want, g_same in zip("qkv", got, want, same):
        assert_close_to_oracle(g_out, g_want, g_same, atol=1e-5, rtol=1e-4, name=f"d{name} T={t} {mask}")


def test_bf16_triton_forward_and_grad(monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    q, k, v = make_qkv(1, 17, 2, 16, torch.bfloat16, seed=5, requires_grad=True)
    do = torch.randn(1, 17, 2, 16, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    out = attention(q, k, v, causal=True, prefix_len=6)
    same = ref.attention_ref(q, k, v, True, 6)
    check(out, oracle(q, k, v, True, 6), same, "bf16 fwd")
    got = torch.autograd.grad(out, (q, k, v), do)
    same = torch.autograd.grad(same, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    want = torch.autograd.grad(oracle(q64, k64, v64, True, 6), (q64, k64, v64), do.double())
    for name, a, w, s in zip("qkv", got, want, same):
        assert_close_to_oracle(a, w, s, name=f"bf16 d{name}")


@pytest.mark.parametrize("t,causal,prefix_len", [(7, False, 0), (65, True, 0), (65, True, 40)])
def test_triton_launchers_write_every_element(t, causal, prefix_len):
    """NaN-poisoned outputs: forward out, and dq/dk/dv from the backward launcher."""
    from spectralar_kernels.attention.triton import attention_bwd, attention_fwd

    q, k, v = make_qkv(2, t, 2, 16, torch.float32, seed=11)
    do = torch.randn_like(q)
    scale = 16**-0.5
    out, lse = attention_fwd(q, k, v, causal, prefix_len, scale, out=nan_like(q))
    check(out, oracle(q, k, v, causal, prefix_len), None, "fwd out=")
    assert lse.shape == (2, 2, t) and torch.isfinite(lse).all()
    dq, dk, dv = attention_bwd(
        do, q, k, v, out, lse, causal, prefix_len, scale, dq=nan_like(q), dk=nan_like(k), dv=nan_like(v)
    )
    q64, k64, v64 = (x.double().requires_grad_(True) for x in (q, k, v))
    want = torch.autograd.grad(oracle(q64, k64, v64, causal, prefix_len), (q64, k64, v64), do.double())
    for name, a, w in zip("qkv", (dq, dk, dv), want):
        check(a, w, None, f"d{name}=")


def test_reference_upcast():
    q, k, v = make_qkv(1, 7, 1, 16, torch.float16)
    out = ref.attention_ref(q, k, v, causal=True, upcast=True)
    assert out.dtype == torch.float32
    check(out, oracle(q, k, v, True, 0), None, "upcast")


# --- argument checks: both backends must reject the same inputs ------------------------------------


def _bad_cases():
    x = torch.randn(1, 5, 2, 16)
    return [
        ("3 dims", (torch.randn(5, 2, 16), x, x), {}, "4 dims"),
        ("5 dims", (torch.randn(1, 5, 2, 16, 1), x, x), {}, "must be \\[B, T, H, D\\]"),
        ("B", (x, torch.randn(2, 5, 2, 16), x), {}, "differ in B"),
        ("H", (x, torch.randn(1, 5, 3, 16), x), {}, "differ in H"),
        ("D", (x, x, torch.randn(1, 5, 2, 32)), {}, "differ in D"),
        ("dtype", (x, x.half(), x), {}, "dtype"),
        ("int dtype", (x.long(), x.long(), x.long()), {}, "float32, float16 or bfloat16"),
        ("T", (x, torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16)), {}, "equal sequence lengths"),
        ("prefix < 0", (x, x, x), {"causal": True, "prefix_len": -1}, "prefix_len"),
        ("prefix > T", (x, x, x), {"causal": True, "prefix_len": 6}, "prefix_len"),
        ("prefix float", (x, x, x), {"causal": True, "prefix_len": 2.0}, "prefix_len"),
        ("prefix bool", (x, x, x), {"causal": True, "prefix_len": True}, "prefix_len"),
        ("causal int", (x, x, x), {"causal": 1}, "causal"),
        ("D > 256", (torch.randn(1, 2, 1, 264),) * 3, {}, "exceeds 256"),
        ("empty", (torch.randn(1, 0, 2, 16),) * 3, {}, "empty"),
        ("scale", (x, x, x), {"softmax_scale": "1"}, "softmax_scale"),
        ("scale nan", (x, x, x), {"softmax_scale": float("nan")}, "softmax_scale"),
        ("device", (x, x.to("meta"), x), {}, "one device"),
        ("not a tensor", (x, x, x.numpy()), {}, "torch.Tensor"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors(backend, case):
    _, args, kwargs, match = case
    with pytest.raises(ValueError, match=match):
        attention(*args, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("t,d,causal,prefix_len", [(65, 64, True, 0), (320, 64, True, 256), (257, 128, False, 0)])
def test_triton_on_gpu(monkeypatch, dtype, t, d, causal, prefix_len):
    """Compiled kernels (not the interpreter): forward and gradients at the model's shapes."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, t, 4, d, device="cuda", generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    do = torch.randn(2, t, 4, d, device="cuda", generator=g).to(dtype)
    out = attention(q, k, v, causal=causal, prefix_len=prefix_len)
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    want_out = oracle(q64.cpu(), k64.cpu(), v64.cpu(), causal, prefix_len).cuda()
    want = torch.autograd.grad(ref.attention_ref(q64, k64, v64, causal, prefix_len), (q64, k64, v64), do.double())
    same_out, same = None, [None] * 3
    if dtype != torch.float32:
        same_out = ref.attention_ref(q, k, v, causal, prefix_len)
        same = torch.autograd.grad(same_out, (q, k, v), do)
    assert_close_to_oracle(out, want_out, same_out, atol=1e-5, rtol=1e-4, name="gpu out")
    for name, a, w, s in zip("qkv", got, want, same):
        assert_close_to_oracle(a, w, s, atol=1e-5, rtol=1e-4, name=f"gpu d{name}")
