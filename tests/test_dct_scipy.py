"""`dct`, `idct`, `dctn`, `idctn` as drop-ins for scipy.fft's, and `LinearDCT` as torch-dct's: a table of scipy's
documented behaviours (signatures, argument order, defaults, accepted inputs, exception types), each checked
against scipy itself on CPU, values against scipy in float64 at awkward sizes (1, 2, odd, 63)."""

import inspect

import numpy as np
import pytest
import scipy.fft
import torch

from spectralar_kernels import LinearDCT, dct, dctn, idct, idctn
from spectralar_kernels.testing import assert_close_to_oracle

PAIRS = {"dct": (dct, scipy.fft.dct), "idct": (idct, scipy.fft.idct), "dctn": (dctn, scipy.fft.dctn),
         "idctn": (idctn, scipy.fft.idctn)}  # fmt: skip
NORMS = [None, "backward", "ortho", "forward"]


def ours_vs_scipy(name: str, x: torch.Tensor, *args, **kwargs):
    """(ours, scipy's in float64 as a tensor) for the same call."""
    ours, theirs = PAIRS[name]
    return ours(x, *args, **kwargs), torch.from_numpy(np.asarray(theirs(x.double().numpy(), *args, **kwargs)))


def close(y: torch.Tensor, oracle: torch.Tensor, name: str = "") -> None:
    scale = max(1.0, oracle.abs().max().item())
    if y.dtype == torch.float64:
        assert_close_to_oracle(y, oracle, atol=1e-12 * scale, rtol=1e-12, name=name)
    else:
        assert_close_to_oracle(y, oracle, atol=2e-5 * scale, rtol=1e-4, name=name)


@pytest.mark.parametrize("name", list(PAIRS))
def test_signature_is_scipys(name):
    """Same parameter names, order, kinds and defaults: positional and keyword calls mean the same thing."""
    ours, theirs = PAIRS[name]
    assert list(inspect.signature(ours).parameters.values()) == list(inspect.signature(theirs).parameters.values())


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("name", list(PAIRS))
def test_every_type_norm_and_orthogonalize_matches_scipy(name, t):
    """Every type x norm (None, backward, ortho, forward) x orthogonalize (None, True, False), forward and
    inverse, at sizes 1 (types 2-4: scipy's DCT-I needs 2 points), 2, odd and 63, float64 and float32."""
    gen = torch.Generator().manual_seed(t)
    one_d = name in ("dct", "idct")
    shapes = [(3, n) for n in (1, 2, 7, 63)] + ([(4, 1, 3)] if one_d else [(2, 5, 3), (1, 63), (2, 2, 1)])
    for shape in shapes:
        if t == 1 and 1 in (shape[-1:] if one_d else shape):
            continue
        for dtype in (torch.float64, torch.float32):
            x = torch.randn(shape, generator=gen, dtype=dtype)
            for norm in NORMS:
                for orth in (None, True, False):
                    y, oracle = ours_vs_scipy(name, x, t, norm=norm, orthogonalize=orth)
                    assert y.dtype == dtype and y.shape == oracle.shape
                    close(y, oracle, f"{name} type={t} {shape} {dtype} norm={norm} orthogonalize={orth}")


def test_positional_order_and_defaults():
    """scipy's argument order (x, type, n, axis, norm / x, type, s, axes, norm) and defaults: type 2, norm None
    ("backward"), the last axis for dct, every axis for dctn, the last len(s) axes when only s is given."""
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cases = [("dct", ()), ("idct", ()), ("dctn", ()), ("idctn", ()), ("dct", (3, 7, 0, "ortho")),
             ("idct", (1, 3, 1, "forward")), ("dctn", (2, (6, 7))), ("dctn", (3, (6, 2), (0, 2), "ortho")),
             ("idctn", (4, None, (2, 0), "forward")), ("dctn", (2, (-1, 7))), ("idctn", (2, 6)), ("dctn", (2, None, 1)),
             ("dctn", (2, None, [0, 2]))]  # fmt: skip
    for name, args in cases:
        y, oracle = ours_vs_scipy(name, x, *args)
        close(y, oracle, f"{name}{args}")


def test_crop_and_zero_pad():
    """n / s shorter than the input crop it, longer ones zero-pad it at the end, as scipy does."""
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for n in (1, 5, 9, 16):
        for name in ("dct", "idct"):
            y, oracle = ours_vs_scipy(name, x, 2, n)
            close(y, oracle, f"{name} n={n}")
    y, oracle = ours_vs_scipy("dctn", x, 1, (7, 12))
    close(y, oracle, "dctn s=(7, 12)")


def test_accepted_inputs():
    """Integer and bool tensors are computed in float64 (as scipy does); float32 stays float32 (as scipy); float16 and
    bfloat16 stay in their dtype (scipy returns float32 for float16: a documented difference); strided inputs;
    overwrite_x and workers are accepted (x is never modified; torch's threads apply); axes=() copies x."""
    for x in (torch.arange(6), torch.tensor([True, False, True])):
        y, oracle = ours_vs_scipy("dct", x)
        assert y.dtype == torch.float64 == oracle.dtype
        close(y, oracle, f"{x.dtype} input")
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3)).t()  # strided
    assert not x.is_contiguous()
    for name in PAIRS:
        y, oracle = ours_vs_scipy(name, x, 3, norm="ortho")
        assert y.dtype == torch.float32
        close(y, oracle, f"{name} strided float32")
    for dtype in (torch.float16, torch.bfloat16):
        h = x.to(dtype)
        y, oracle = ours_vs_scipy("dctn", h, norm="ortho")
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), oracle, atol=0.05, rtol=0.05)
    before = x.clone()
    for workers in (None, 1, 2, -1):
        torch.testing.assert_close(dct(x, overwrite_x=True, workers=workers), dct(before), atol=0, rtol=0)
    assert torch.equal(x, before)
    z = dctn(x, axes=())
    assert torch.equal(z, x) and z.data_ptr() != x.data_ptr()


# (call on x, shared by both libraries): each must raise what scipy raises on the same arguments.
BAD_CALLS = [
    ("dct", (), {"type": 5}), ("dct", (), {"type": 0}), ("idct", (), {"type": 5}), ("dct", (), {"type": "2"}),
    ("dct", (), {"type": 2.0}), ("dct", (), {"n": 0}), ("dct", (), {"n": -1}), ("dct", (), {"n": 2.0}),
    ("dct", (), {"axis": 2}), ("dct", (), {"axis": -3}), ("dct", (), {"axis": 1.0}), ("dct", (), {"norm": "bad"}),
    ("idct", (), {"norm": "ORTHO"}), ("dct", (), {"workers": 0}), ("dct", (), {"workers": 1.5}),
    ("dctn", (), {"s": (6, 7), "axes": (0,)}), ("dctn", (), {"axes": (0, 0)}), ("dctn", (), {"axes": (1, -1)}),
    ("dctn", (), {"axes": (2,)}), ("dctn", (), {"s": (0, 2)}), ("dctn", (), {"s": (-2, 2)}),
    ("idctn", (), {"type": 7}), ("idctn", (), {"norm": "backwards"}),
]  # fmt: skip


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS, ids=lambda v: str(v) if not isinstance(v, str) else v)
def test_exception_types_are_scipys(name, args, kwargs):
    a = np.random.default_rng(0).random((4, 5))
    ours, theirs = PAIRS[name]
    with pytest.raises(Exception) as scipy_err:
        theirs(a, *args, **kwargs)
    with pytest.raises(scipy_err.type):
        ours(torch.from_numpy(a), *args, **kwargs)


def test_edge_inputs_raise_as_scipy():
    """An empty transform axis (ValueError), a 0-d input to dct (IndexError), a one-point DCT-I (RuntimeError),
    each as scipy; an empty batch axis is fine (an empty result)."""
    for ours, theirs, a in ((dct, scipy.fft.dct, np.ones((3, 0))), (dct, scipy.fft.dct, np.float64(3.0)),
                            (dct, scipy.fft.dct, np.ones(1)), (dctn, scipy.fft.dctn, np.ones((3, 1))),
                            (idct, scipy.fft.idct, np.ones((2, 1)))):  # fmt: skip
        kwargs = {} if a.size != 1 and a.shape[-1:] != (1,) else {"type": 1}
        with pytest.raises(Exception) as scipy_err:
            theirs(a, **kwargs)
        with pytest.raises(scipy_err.type):
            ours(torch.as_tensor(a), **kwargs)
    assert dct(torch.ones(0, 3)).shape == (0, 3) == scipy.fft.dct(np.ones((0, 3))).shape


def test_unsupported_inputs_are_named():
    """Not supported, said so: complex tensors (NotImplementedError; scipy transforms real and imaginary parts) and
    non-tensors (TypeError; scipy converts array-likes)."""
    with pytest.raises(NotImplementedError, match="complex"):
        dct(torch.ones(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        dctn([1.0, 2.0])


@pytest.mark.parametrize("t", [2, 3])
def test_types_2_and_3_run_the_kernels(backend, t, monkeypatch):
    """Types 2 and 3 with any norm go through the 2-D transform, so the Triton kernels take them (under the
    interpreter here): axes in pairs, a last single axis as planes of height 1; checked against scipy."""
    from spectralar_kernels.transforms import triton as plane

    calls = []
    real = plane.DCT2dFunction.apply
    monkeypatch.setattr(plane.DCT2dFunction, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 5, 2, 3, generator=torch.Generator().manual_seed(t))
    for norm in (None, "ortho"):
        for name, args in (("dct", (t, None, 1)), ("idct", (t, 9, 0)), ("dctn", (t,)), ("idctn", (t, None, (3, 0, 2)))):
            y, oracle = ours_vs_scipy(name, x, *args, norm=norm)
            close(y, oracle, f"{backend} {name}{args} norm={norm}")
    assert len(calls) == (2 * (1 + 1 + 2 + 2) if backend == "triton" else 0), calls


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_gradients(t):
    """Differentiable in every type and norm (gradcheck in float64), through cropping and padding."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(t), requires_grad=True)
    for norm in ("backward", "ortho"):
        assert torch.autograd.gradcheck(lambda v, norm=norm: dct(v, t, n=6, axis=1, norm=norm), (x,))
        assert torch.autograd.gradcheck(lambda v, norm=norm: idctn(v, t, s=(4, 3), axes=(0, 2), norm=norm), (x,))


LINEAR = {"dct": (dct, 2), "idct": (idct, 2), "dct1": (dct, 1), "idct1": (idct, 1), "dct3": (dct, 3),
          "idct4": (idct, 4)}  # fmt: skip


@pytest.mark.parametrize("kind", list(LINEAR))
@pytest.mark.parametrize("norm", [None, "ortho"])
def test_linear_dct(kind, norm):
    """torch-dct's LinearDCT(in_features, type, norm=None, bias=False): an nn.Linear whose fixed weight applies the
    1-D transform along the last dim (torch-dct defines it as dct(I).t()); here for every type and norm."""
    fn, t = LINEAR[kind]
    layer = LinearDCT(9, kind, norm=norm)
    assert isinstance(layer, torch.nn.Linear) and not layer.weight.requires_grad and layer.bias is None
    assert set(layer.state_dict()) == {"weight"}
    torch.testing.assert_close(layer.weight, fn(torch.eye(9, dtype=torch.float64), t, norm=norm).t().float())
    x = torch.randn(4, 2, 9, generator=torch.Generator().manual_seed(5))
    oracle = torch.from_numpy((scipy.fft.idct if fn is idct else scipy.fft.dct)(x.double().numpy(), t, norm=norm))
    close(layer(x), oracle, f"LinearDCT {kind} {norm}")
    assert set(LinearDCT(9, kind, norm=norm, bias=True).state_dict()) == {"weight", "bias"}


def test_linear_dct_rejects_unknown_types():
    with pytest.raises(ValueError, match="type must be one of"):
        LinearDCT(8, "dst")
