"""attention(q, k, v, causal, prefix_len): forward and gradients vs a float64 SDPA oracle.

The oracle builds its boolean mask straight from the definition (key j visible to query t iff
`j <= t or j < prefix_len`), independently of ref.py. Triton cases run under the interpreter on CPU.
"""

import pytest
import torch
import torch.nn.functional as F

from spectralar_kernels import attention
from spectralar_kernels.attn import ref
from spectralar_kernels.testing import assert_close_to_oracle, nan_like

# (B, H, D) per sequence length: tiny for the interpreter. 65 is one 128-row block plus one row beyond 64,
# 130 crosses a 128-row block by two rows.
SHAPES = {1: (2, 2, 16), 7: (2, 1, 32), 17: (1, 2, 16), 65: (1, 2, 32), 130: (1, 1, 16)}
MASKS = ["full", "causal", "prefix1", "prefix_mid", "prefix_t-1", "prefix_t"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def mask_args(name: str, t: int) -> tuple[bool, int]:
    if name.startswith("prefix="):
        return True, int(name.split("=")[1])
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


def oracle_grads(q, k, v, do, causal, prefix_len, scale=None):
    x64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    return torch.autograd.grad(oracle(*x64, causal, prefix_len, scale), x64, do.double())


def make_qkv(b, t, h, d, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, d, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def seeded_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A random upstream gradient shaped like x, independent of the global RNG (so of test order)."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.dtype)


def check(out, want, same_precision_ref, name):
    return assert_close_to_oracle(out, want, same_precision_ref, atol=2e-6, rtol=1e-4, name=name)


def check_grads(got, q, k, v, do, causal, prefix_len, name, scale=None):
    """Gradients vs the float64 oracle; fp16/bf16 against 2x the error of the same-precision reference."""
    want = oracle_grads(q, k, v, do, causal, prefix_len, scale)
    same = [None] * 3
    if q.dtype != torch.float32:
        x = [t.detach().requires_grad_(True) for t in (q, k, v)]
        same = torch.autograd.grad(ref.attention_ref(*x, causal, prefix_len, scale), x, do)
    for n, g_out, g_want, g_same in zip("qkv", got, want, same):
        assert_close_to_oracle(g_out, g_want, g_same, atol=1e-5, rtol=1e-4, name=f"d{n} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
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


GRAD_CASES = [(1, "causal"), (7, "causal"), (17, "prefix_mid"), (17, "full"), (65, "prefix_mid"), (65, "causal"),
              (130, "full"), (130, "causal")]  # fmt: skip
# Prefixes at and around the 16/32/64/128-row block boundaries of the tiles (Triton only: the reference has none).
BOUNDARY_CASES = [(130, f"prefix={p}") for p in (31, 64, 65, 127, 128, 129)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("t,mask", GRAD_CASES)
def test_gradients(backend, t, mask, dtype):
    _forward_and_gradients(t, mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("t,mask", BOUNDARY_CASES)
def test_gradients_at_block_boundaries(monkeypatch, t, mask, dtype):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    _forward_and_gradients(t, mask, dtype)


def _forward_and_gradients(t, mask, dtype):
    b, h, d = SHAPES[t]
    causal, prefix_len = mask_args(mask, t)
    q, k, v = make_qkv(b, t, h, d, dtype, seed=t + 1, requires_grad=True)
    do = torch.randn(b, t, h, d, generator=torch.Generator().manual_seed(99)).to(dtype)
    out = attention(q, k, v, causal=causal, prefix_len=prefix_len)
    check(out.detach(), oracle(q, k, v, causal, prefix_len),
          ref.attention_ref(q, k, v, causal, prefix_len) if dtype != torch.float32 else None, f"T={t} {mask}")
    check_grads(torch.autograd.grad(out, (q, k, v), do), q, k, v, do, causal, prefix_len, f"T={t} {mask}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("d", [16, 24, 40, 64, 80])  # 24, 40, 80: padded to 32, 64, 128 with masks
def test_head_dims(backend, d, dtype):
    t, prefix_len = 130, 65
    q, k, v = make_qkv(1, t, 1, d, dtype, seed=d, requires_grad=True)
    do = torch.randn(1, t, 1, d, generator=torch.Generator().manual_seed(7)).to(dtype)
    out = attention(q, k, v, causal=True, prefix_len=prefix_len)
    same = ref.attention_ref(q, k, v, True, prefix_len) if dtype != torch.float32 else None
    check(out.detach(), oracle(q, k, v, True, prefix_len), same, f"D={d}")
    check_grads(torch.autograd.grad(out, (q, k, v), do), q, k, v, do, True, prefix_len, f"D={d}")


def test_head_dim_above_triton_limit_falls_back(backend):
    q, k, v = make_qkv(1, 7, 1, 160, torch.float32)
    out = attention(q, k, v, causal=True)
    check(out, oracle(q, k, v, True, 0), None, "D=160")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_softmax_scale_and_strided_inputs(backend, dtype):
    """q, k, v as views of one fused qkv projection (row stride 3*H*D, as the model's layers make them), a
    non-default scale, and gradients flowing back into the fused tensor."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 70, 3, 2, 16, generator=g).to(dtype).requires_grad_(True)
    q, k, v = qkv.unbind(2)
    do = torch.randn(2, 70, 2, 16, generator=g).to(dtype)
    out = attention(q, k, v, causal=True, prefix_len=4, softmax_scale=0.7)
    same = ref.attention_ref(q, k, v, True, 4, 0.7) if dtype != torch.float32 else None
    check(out.detach(), oracle(q, k, v, True, 4, scale=0.7), same, "strided")
    (dqkv,) = torch.autograd.grad(out, qkv, do)
    check_grads(dqkv.unbind(2), q, k, v, do, True, 4, "strided", scale=0.7)


@pytest.mark.parametrize("causal,prefix_len", [(True, 0), (True, 3), (False, 0)], ids=["causal", "prefix", "full"])
def test_negative_and_zero_scale(backend, causal, prefix_len):
    """The mask must hold for any finite scale: -inf logits stay -inf after scaling by a negative number or zero
    (plain causal once went through SDPA's is_causal, which on CPU gave NaN for both)."""
    q, k, v = make_qkv(1, 17, 1, 16, torch.float32, seed=4, requires_grad=True)
    do = torch.randn(1, 17, 1, 16, generator=torch.Generator().manual_seed(8))
    for scale in (-0.5, 0.0):
        name = f"scale={scale} causal={causal} prefix={prefix_len}"
        out = attention(q, k, v, causal=causal, prefix_len=prefix_len, softmax_scale=scale)
        check(out.detach(), oracle(q, k, v, causal, prefix_len, scale=scale), None, name)
        grads = torch.autograd.grad(out, (q, k, v), do)
        check_grads(grads, q, k, v, do, causal, prefix_len, name, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("t,d,causal,prefix_len", [(7, 16, False, 0), (65, 16, True, 0), (130, 24, True, 40),
                                                   (130, 16, False, 0)])  # fmt: skip
def test_triton_launchers_write_every_element(t, d, causal, prefix_len, dtype):
    """NaN-poisoned outputs: forward out, and dq/dk/dv from the (single-kernel) backward launcher."""
    from spectralar_kernels.attn.triton import attention_bwd, attention_fwd

    q, k, v = make_qkv(2, t, 1, d, dtype, seed=11)
    do = seeded_like(q, 12)
    scale = d**-0.5
    out, lse = attention_fwd(q, k, v, causal, prefix_len, scale, out=nan_like(q))
    lowp = dtype != torch.float32
    check(out, oracle(q, k, v, causal, prefix_len), ref.attention_ref(q, k, v, causal, prefix_len) if lowp else None,
          "fwd out=")  # fmt: skip
    assert lse.shape == (2, 1, t) and torch.isfinite(lse).all()
    dq, dk, dv = attention_bwd(
        do, q, k, v, out, lse, causal, prefix_len, scale, dq=nan_like(q), dk=nan_like(k), dv=nan_like(v)
    )
    check_grads((dq, dk, dv), q, k, v, do, causal, prefix_len, "launcher")


def _table_configs(kernel):
    from spectralar_kernels.attn import triton as attn_triton

    table = attn_triton._FWD_CONFIGS if kernel == "fwd" else attn_triton._BWD_CONFIGS
    return [pytest.param(key, cfg, id=f"{key[0]}-D{key[1]}-{'x'.join(map(str, cfg))}")
            for key, cfgs in table.items() for cfg in cfgs]  # fmt: skip


def _config_case(key, seed):
    """Inputs for one tile-config check: the config's dtype class and head-dim block, T crossing 128 rows."""
    dtype = torch.float32 if key[0] == "fp32" else torch.float16
    q, k, v = make_qkv(1, 130, 1, key[1], dtype, seed=seed)
    return q, k, v, seeded_like(q, seed + 1), key[1] ** -0.5


@pytest.mark.parametrize("key,config", _table_configs("fwd"))
def test_every_forward_config(key, config):
    """Each tile configuration a GPU may autotune to, run under the interpreter (prefix 65 crosses blocks)."""
    from spectralar_kernels.attn.triton import attention_fwd

    q, k, v, _, scale = _config_case(key, 21)
    out, _ = attention_fwd(q, k, v, True, 65, scale, out=nan_like(q), config=config)
    same = ref.attention_ref(q, k, v, True, 65) if q.dtype != torch.float32 else None
    check(out, oracle(q, k, v, True, 65), same, f"fwd {key} {config}")


@pytest.mark.parametrize("key,config", _table_configs("bwd"))
def test_every_backward_config(key, config):
    from spectralar_kernels.attn.triton import attention_bwd, attention_fwd

    q, k, v, do, scale = _config_case(key, 22)
    out, lse = attention_fwd(q, k, v, True, 65, scale)
    grads = attention_bwd(do, q, k, v, out, lse, True, 65, scale, dq=nan_like(q), dk=nan_like(k), dv=nan_like(v),
                          config=config)  # fmt: skip
    check_grads(grads, q, k, v, do, True, 65, f"bwd {key} {config}")


def test_backward_without_a_kernel_tile_uses_the_reference():
    """fp32 at head dims above 64 has no fused-backward tile (`_BWD_CONFIGS`): the launcher recomputes."""
    from spectralar_kernels.attn import triton as attn_triton

    assert attn_triton._configs(attn_triton._BWD_CONFIGS, torch.float32, 128, 130) == []
    q, k, v = make_qkv(1, 9, 1, 80, torch.float32, seed=5)
    do = seeded_like(q, 6)
    out, lse = attn_triton.attention_fwd(q, k, v, True, 3, 80**-0.5)
    grads = attn_triton.attention_bwd(do, q, k, v, out, lse, True, 3, 80**-0.5, dq=nan_like(q), dk=nan_like(k),
                                      dv=nan_like(v))  # fmt: skip
    check_grads(grads, q, k, v, do, True, 3, "fp32 D=80")


def test_unknown_implementation_is_rejected():
    from spectralar_kernels.attn.triton import attention_fwd

    q, k, v = make_qkv(1, 3, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="attention-v1"):
        attention_fwd(q, k, v, False, 0, 0.25, impl="attention-v1")


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
