"""`flash_attn_func` against flash-attn's documented contract, with a float64 oracle written here.

flash-attn cannot be installed on these machines (CUDA only), so its documented behaviours are the table: the
signature (order and defaults), the bottom-right causal alignment (the two mask pictures of its docstring),
sliding windows with its bound conversions, soft-capping, grouped/multi-query head mapping, dropout, the
(out, softmax_lse, S_dmask) return, gradients, and the exception types. The oracle spells the mask out query by
query and computes the softmax in float64; gradients come from autograd through it.
"""

import inspect

import pytest
import torch

import spectralar_kernels
from spectralar_kernels import flash_attn_func
from spectralar_kernels.attn import ref
from spectralar_kernels.attn import triton as attn_triton
from spectralar_kernels.testing import assert_close_to_oracle

# flash-attn 2.x, flash_attn_interface.flash_attn_func, as documented
SIGNATURE = ("q", "k", "v", ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False),
             ("window_size", (-1, -1)), ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False),
             ("return_attn_probs", False))  # fmt: skip


def visible_oracle(t_q, t_k, causal=False, window=(-1, -1)) -> torch.Tensor:
    """`[Tq, Tk]` bool from flash-attn's docstring: query i sits at i + Tk - Tq; causal keeps keys at or before
    it; a window keeps [pos - left, pos + right]; a bound >= Tk is no bound; causal sets right to 0."""
    left, right = window
    left, right = (-1 if left >= t_k else left), (-1 if right >= t_k else right)
    if causal and t_q > 1:
        right = 0
    mask = torch.zeros(t_q, t_k, dtype=torch.bool)
    for i in range(t_q):
        pos = i + t_k - t_q
        for j in range(t_k):
            mask[i, j] = (left < 0 or j >= pos - left) and (right < 0 or j <= pos + right)
    return mask


def oracle(q, k, v, causal=False, window=(-1, -1), scale=None, softcap=0.0):
    """float64 (out [B, Tq, H, D], lse [B, H, Tq]); a row that sees nothing: zeros and lse +inf."""
    q, k, v = q.double(), k.double(), v.double()
    h, h_kv = q.shape[2], k.shape[2]
    k, v = k.repeat_interleave(h // h_kv, dim=2), v.repeat_interleave(h // h_kv, dim=2)  # head h reads h // group
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    mask = visible_oracle(q.shape[1], k.shape[1], causal, window)
    s = s.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(-1)  # [Tq]
    lse = torch.logsumexp(s, -1).masked_fill(empty, float("inf"))
    p = torch.softmax(s.masked_fill(empty[:, None], 0.0), -1).masked_fill(empty[:, None], 0.0)
    return torch.einsum("bhij,bjhd->bihd", p, v), lse


def inputs(b, t_q, t_k, h, h_kv, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t_q, h, d, generator=g).to(dtype).requires_grad_(True)
    k, v = (torch.randn(b, t_k, h_kv, d, generator=g).to(dtype).requires_grad_(True) for _ in range(2))
    return q, k, v


def test_signature_is_flash_attns():
    params = list(inspect.signature(flash_attn_func).parameters.values())
    got = tuple(p.name if p.default is inspect.Parameter.empty else (p.name, p.default) for p in params)
    assert got == SIGNATURE
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    assert spectralar_kernels.flash_attn_func is flash_attn_func


def test_docstring_mask_pictures():
    """flash-attn's two pictures (1 = keep): Tq=2, Tk=5 and Tq=5, Tk=2, causal."""
    assert visible_oracle(2, 5, causal=True).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert visible_oracle(5, 2, causal=True).int().tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]
    q, k, v = inputs(1, 5, 2, 2, 2, 16, seed=1)
    out = flash_attn_func(q, k, v, causal=True)
    assert torch.equal(out[:, :3].detach(), torch.zeros(1, 3, 2, 16)), "rows that see no key must be zeros"
    want, _ = oracle(q, k, v, causal=True)
    assert_close_to_oracle(out.detach(), want, name="Tq=5 Tk=2 causal")


# name, (B, Tq, Tk, H, H_kv, D), keyword arguments, whether the Triton kernel takes it
CASES = [
    ("full", (2, 9, 9, 2, 2, 16), {}, True),
    ("causal", (2, 9, 9, 2, 2, 16), {"causal": True}, True),
    ("causal Tq<Tk", (1, 2, 5, 2, 2, 16), {"causal": True}, False),
    ("causal Tq>Tk", (1, 5, 2, 2, 2, 16), {"causal": True}, False),
    ("causal Tq=1", (2, 1, 7, 2, 2, 16), {"causal": True}, False),
    ("full Tq!=Tk", (1, 3, 7, 2, 2, 24), {}, False),
    ("gqa 4:2 causal", (1, 7, 7, 4, 2, 16), {"causal": True}, True),
    ("mqa 4:1", (1, 7, 7, 4, 1, 16), {}, True),
    ("mqa 4:1 causal Tq<Tk", (1, 3, 8, 4, 1, 16), {"causal": True}, False),
    ("window left", (1, 9, 9, 2, 2, 16), {"window_size": (3, -1)}, False),
    ("window both", (1, 6, 9, 2, 2, 16), {"window_size": (2, 1)}, False),
    ("window right 0", (1, 9, 9, 2, 2, 16), {"window_size": (-1, 0)}, True),  # = causal on a square mask
    ("window causal", (1, 9, 9, 2, 2, 16), {"window_size": (2, 5), "causal": True}, False),
    ("window >= Tk", (1, 9, 4, 2, 2, 16), {"window_size": (4, 4)}, False),  # bounds of Tk or more: none
    ("window list", (1, 7, 7, 2, 2, 16), {"window_size": [1, 2]}, False),
    ("window tensor", (1, 7, 7, 2, 2, 16), {"window_size": torch.tensor([1, 2])}, False),
    ("softcap", (1, 7, 7, 2, 2, 16), {"softcap": 0.4, "causal": True}, False),
    ("scale", (1, 7, 7, 2, 2, 16), {"softmax_scale": -0.3, "causal": True}, True),
    ("head dim 40 deterministic", (1, 7, 7, 1, 1, 40), {"deterministic": True}, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_matches_the_oracle(backend, monkeypatch, case):
    """Output and gradients of q, k, v vs float64; the Triton kernel runs exactly what it implements."""
    name, (b, t_q, t_k, h, h_kv, d), kw, kernel = case
    q, k, v = inputs(b, t_q, t_k, h, h_kv, d, seed=len(name))
    launches = []
    fwd = attn_triton.attention_fwd
    monkeypatch.setattr(attn_triton, "attention_fwd", lambda *a, **k_: launches.append(1) or fwd(*a, **k_))
    out = flash_attn_func(q, k, v, **kw)
    assert bool(launches) == (backend == "triton" and kernel), f"{name}: {len(launches)} launches"
    window = tuple(kw["window_size"].tolist()) if isinstance(kw.get("window_size"), torch.Tensor) else tuple(
        kw.get("window_size", (-1, -1)))  # fmt: skip
    x64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    want, _ = oracle(*x64, kw.get("causal", False), window, kw.get("softmax_scale"), kw.get("softcap", 0.0))
    assert out.shape == (b, t_q, h, d) and out.dtype == q.dtype
    assert_close_to_oracle(out.detach(), want.detach(), atol=2e-6, rtol=1e-4, name=name)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(out, (q, k, v), do)
    grads = torch.autograd.grad(want, x64, do.double())
    for n, a, w in zip("qkv", got, grads):
        assert_close_to_oracle(a, w, atol=1e-5, rtol=1e-4, name=f"d{n} {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("t_q,t_k", [(17, 17), (3, 17)])
def test_low_precision(backend, dtype, t_q, t_k):
    """flash-attn's own dtypes: within 2x the error of the same-precision reference (and its gradients)."""
    q, k, v = inputs(1, t_q, t_k, 4, 2, 32, dtype=dtype, seed=t_q)
    out = flash_attn_func(q, k, v, causal=True)
    x64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    want, _ = oracle(*x64, causal=True)
    same = ref.flash_attn_ref(q, k, v, causal=t_q > 1)
    assert_close_to_oracle(out.detach(), want.detach(), same.detach(), name=f"{dtype} out")
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    grads = torch.autograd.grad(want, x64, do.double())
    same_grads = torch.autograd.grad(same, (q, k, v), do)
    for n, a, w, s in zip("qkv", got, grads, same_grads):
        assert_close_to_oracle(a, w, s, name=f"{dtype} d{n}")


@pytest.mark.parametrize("t_q,t_k,kw", [(3, 3, {"causal": True}), (5, 2, {"causal": True}),
                                         (4, 6, {"softcap": 0.5, "window_size": (1, 0)})])  # fmt: skip
def test_return_attn_probs(backend, t_q, t_k, kw):
    """(out, softmax_lse, S_dmask): lse of the scaled (soft-capped) logits, +inf where a row sees nothing;
    S_dmask empty without dropout, as flash-attn returns it."""
    q, k, v = inputs(2, t_q, t_k, 2, 1, 16, seed=7)
    out, lse, s_dmask = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    want, want_lse = oracle(q, k, v, kw.get("causal", False), kw.get("window_size", (-1, -1)),
                            softcap=kw.get("softcap", 0.0))  # fmt: skip
    assert_close_to_oracle(out.detach(), want.detach(), name="out")
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, t_q)
    torch.testing.assert_close(lse.detach().double(), want_lse.detach(), atol=1e-5, rtol=1e-5)
    assert s_dmask.numel() == 0 and s_dmask.dtype == q.dtype


def test_dropout_is_unbiased():
    """dropout_p drops attention weights and rescales the kept ones: the mean over draws is the output without
    dropout; p = 1 drops everything."""
    q, k, v = (x.detach() for x in inputs(1, 6, 6, 1, 1, 8, seed=9))
    torch.manual_seed(0)
    draws = torch.stack([flash_attn_func(q, k, v, dropout_p=0.3, causal=True) for _ in range(4000)])
    want = flash_attn_func(q, k, v, causal=True)
    assert not torch.equal(draws[0], want)
    torch.testing.assert_close(draws.mean(0), want, atol=0.05, rtol=0)
    assert torch.equal(flash_attn_func(q, k, v, dropout_p=1.0), torch.zeros_like(q))


def _bad_cases():
    q = torch.randn(1, 5, 4, 16)
    kv = torch.randn(1, 5, 2, 16)
    return [
        ("heads", (q, torch.randn(1, 5, 3, 16), torch.randn(1, 5, 3, 16)), {}, "multiple"),
        ("batch", (q, torch.randn(2, 5, 2, 16), torch.randn(2, 5, 2, 16)), {}, "differ in B"),
        ("head dim", (q, torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)), {}, "differ in D"),
        ("v length", (q, kv, torch.randn(1, 6, 2, 16)), {}, "same length"),
        ("dtype", (q, kv.half(), kv.half()), {}, "dtype"),
        ("3 dims", (q[0], kv, kv), {}, "4 dims"),
        ("D > 256", (torch.randn(1, 2, 1, 264),) * 3, {}, "exceeds 256"),
        ("device", (q, kv.to("meta"), kv), {}, "one device"),
        ("dropout", (q, kv, kv), {"dropout_p": 1.5}, "dropout_p"),
        ("scale", (q, kv, kv), {"softmax_scale": float("nan")}, "softmax_scale"),
        ("causal int", (q, kv, kv), {"causal": 1}, "causal"),
        ("window", (q, kv, kv), {"window_size": (-2, 0)}, "window_size"),
        ("window len", (q, kv, kv), {"window_size": (3,)}, "window_size"),
        ("window float", (q, kv, kv), {"window_size": torch.tensor([1.0, 2.0])}, "window_size"),
        ("softcap", (q, kv, kv), {"softcap": -1.0}, "softcap"),
        ("softcap with dropout", (q, kv, kv), {"softcap": 1.0, "dropout_p": 0.1}, "dropout"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_errors_are_flash_attns_type(backend, case):
    """flash-attn's checks raise RuntimeError; ours name the value and are both ValueError and RuntimeError."""
    _, args, kwargs, match = case
    with pytest.raises(RuntimeError, match=match) as e:
        flash_attn_func(*args, **kwargs)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("kwargs,name", [({"alibi_slopes": torch.zeros(4)}, "alibi_slopes"),
                                         ({"return_attn_probs": True, "dropout_p": 0.1}, "return_attn_probs")])
def test_unsupported_arguments_raise(backend, kwargs, name):
    q = torch.randn(1, 5, 4, 16)
    with pytest.raises(NotImplementedError, match=name):
        flash_attn_func(q, q, q, **kwargs)


def test_oracle_alignment_matters():
    """Guards the table: torch's top-left `is_causal` differs from flash-attn's bottom-right when Tq != Tk, and
    the bottom-right oracle is what `flash_attn_func` matches (test_matches_the_oracle)."""
    q, k, v = (x.detach() for x in inputs(1, 3, 7, 2, 2, 16, seed=11))
    top_left = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                                is_causal=True).transpose(1, 2)  # fmt: skip
    want, _ = oracle(q, k, v, causal=True)
    assert (top_left.double() - want).abs().max() > 0.1
    assert (flash_attn_func(q, k, v, causal=True).double() - want).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["auto", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("t_q,t_k,h_kv", [(65, 65, 4), (17, 65, 2), (65, 17, 1)])
def test_on_gpu(kernels, dtype, t_q, t_k, h_kv):
    """CUDA tensors, flash-attn's dtypes, causal bottom-right with GQA: output and gradients within 2x the
    same-precision reference's error (compiled kernel where it applies, else the reference or flash-attn)."""
    with spectralar_kernels.use_backend(kernels):
        q, k, v = (x.detach().cuda().requires_grad_(True) for x in inputs(2, t_q, t_k, 4, h_kv, 64, dtype, seed=13))
        out = flash_attn_func(q, k, v, causal=True)
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(14)).to(dtype).cuda()
        got = torch.autograd.grad(out, (q, k, v), do)
    x64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    want, _ = oracle(*x64, causal=True)
    grads = torch.autograd.grad(want, x64, do.double())
    same = ref.flash_attn_ref(q, k, v, causal=True)
    same_grads = torch.autograd.grad(same, (q, k, v), do)
    assert_close_to_oracle(out.detach(), want.detach(), same.detach(), name=f"gpu {kernels} out")
    for n, a, w, s in zip("qkv", got, grads, same_grads):
        assert_close_to_oracle(a, w, s, name=f"gpu {kernels} d{n}")
