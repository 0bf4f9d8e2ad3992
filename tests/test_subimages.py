"""spectral_subimages against an explicit scipy/numpy construction (float64), both backends."""

import numpy as np
import pytest
import scipy.fft
import torch

from spectralar_kernels import _common, spectral_subimages, spectral_windows
from spectralar_kernels.subimages import ref
from spectralar_kernels.testing import assert_close_to_oracle, nan_like

# (B, C, S): 1, odd, primes. Tiny: the interpreter is slow.
CASES = [(2, 3, 8), (3, 1, 17), (1, 2, 1)]
LOWP = [torch.float16, torch.bfloat16]


def numpy_subimage(img: np.ndarray, w: int) -> np.ndarray:
    """x_w = idctn(dctn(x) * M_w) for one [C, S, S] image, in float64."""
    coeffs = scipy.fft.dctn(img.astype(np.float64), type=2, norm="ortho", axes=(-2, -1))
    coeffs[..., w:, :] = 0.0
    coeffs[..., :, w:] = 0.0
    return scipy.fft.idctn(coeffs, type=2, norm="ortho", axes=(-2, -1))


def numpy_oracle(x: torch.Tensor, windows, all_prefixes: bool) -> torch.Tensor:
    a = x.double().numpy()
    if all_prefixes:
        return torch.from_numpy(np.stack([np.stack([numpy_subimage(img, w) for w in windows]) for img in a]))
    return torch.from_numpy(np.stack([numpy_subimage(img, int(w)) for img, w in zip(a, windows)]))


def run(x: torch.Tensor, windows, all_prefixes: bool, backend: str) -> torch.Tensor:
    """Public function; on Triton also the launcher into a NaN-filled `out` (must agree with it)."""
    y = spectral_subimages(x, windows, all_prefixes=all_prefixes)
    if backend == "triton":
        from spectralar_kernels.subimages.triton import spectral_subimages_fwd

        out = spectral_subimages_fwd(x, windows, all_prefixes, out=nan_like(y))
        assert not torch.isnan(out).any(), "launcher left elements unwritten"
        assert torch.equal(out, y)
    return y


def sample_windows(b: int, s: int, seed: int) -> torch.Tensor:
    w = torch.randint(1, s + 1, (b,), generator=torch.Generator().manual_seed(seed))
    w[0] = s  # always include the full window (must give x back)
    return w


@pytest.mark.parametrize("b,c,s", CASES + [(2, 1, 33)], ids=str)
def test_one_window_per_sample(backend, b, c, s):
    x = torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(0))
    w = sample_windows(b, s, seed=s)
    y = run(x, w, False, backend)
    assert y.shape == (b, c, s, s) and y.dtype == torch.float32
    assert_close_to_oracle(y, numpy_oracle(x, w.tolist(), False), atol=1e-5, name=f"{backend} {s} {w.tolist()}")
    assert_close_to_oracle(y[0], x[0].double(), atol=1e-5, name="full window is the identity")


def test_strided_windows_are_read_as_values(backend):
    """An int32 windows view with a stride (every other entry) must give each sample its own window."""
    x = torch.randn(3, 2, 17, 17, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([17, 1, 3, 1, 9, 1], dtype=torch.int32)[::2]  # [17, 3, 9]
    assert not w.is_contiguous()
    y = spectral_subimages(x, w)
    assert_close_to_oracle(y, numpy_oracle(x, w.tolist(), False), atol=1e-5, name=f"{backend} strided windows")


@pytest.mark.parametrize("b,c,s", CASES, ids=str)
def test_all_prefixes(backend, b, c, s):
    x = torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(1))
    windows = spectral_windows(s, min(s, 3), "power", 2.0)
    y = run(x, windows, True, backend)
    assert y.shape == (b, len(windows), c, s, s)
    assert_close_to_oracle(y, numpy_oracle(x, windows, True), atol=1e-5, name=f"{backend} {s} {windows}")
    if backend == "ref":
        as_tensor = spectral_subimages(x, torch.tensor(windows), all_prefixes=True)  # a tensor of windows works alike
        assert torch.equal(as_tensor, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_several_tiles_strips_and_shells(backend, dtype):
    """S = 70: two or three output tiles / strips per axis with ragged last ones; the all-prefixes
    windows put several outputs in one 16-wide shell (3, 4, 5), none in others, one on a shell edge
    (48) and the last at S; the per-sample windows include 64 and 65 (either side of a strip edge)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 1, 70, 70, generator=gen).to(dtype)
    for windows, all_prefixes in (([3, 4, 5, 40, 48, 70], True), (torch.tensor([70, 5, 64, 65]), False)):
        y = run(x[:1] if all_prefixes else x, windows, all_prefixes, backend)
        xs = x[:1] if all_prefixes else x
        w_list = windows if all_prefixes else windows.tolist()
        oracle = numpy_oracle(xs, w_list, all_prefixes)
        if dtype == torch.float32:
            assert_close_to_oracle(y, oracle, atol=1e-5, name=f"{backend} S=70 {w_list}")
        else:
            same_precision = ref.spectral_subimages(xs, windows, all_prefixes)
            assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"{backend} S=70 {dtype}")


def test_band_differences_reconstruct_and_stay_in_band(backend):
    """x_{w_i} - x_{w_{i-1}} holds exactly the DCT band B_i, and the bands sum back to x."""
    s = 12
    x = torch.randn(1, 2, s, s, generator=torch.Generator().manual_seed(2))
    windows = spectral_windows(s, 5, "power", 2.0)
    prefixes = run(x, windows, True, backend).double()  # [B, N, C, S, S]
    bands = prefixes - torch.cat([torch.zeros_like(prefixes[:, :1]), prefixes[:, :-1]], dim=1)
    assert_close_to_oracle(bands.sum(1).float(), x.double(), atol=2e-5, name="sum of bands")
    coeffs = torch.from_numpy(scipy.fft.dctn(bands.numpy(), type=2, norm="ortho", axes=(-2, -1)))
    u = torch.arange(s)
    radius = torch.maximum(u[:, None], u[None, :])
    for i, (lo, hi) in enumerate(zip([0] + windows[:-1], windows)):
        outside = (radius < lo) | (radius >= hi)
        assert coeffs[:, i][..., outside].abs().max() < 1e-5, f"band {i} leaks outside [{lo}, {hi})"
        assert coeffs[:, i][..., ~outside].abs().max() > 1e-2, f"band {i} is empty"


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision(backend, dtype):
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3)).to(dtype)
    w = torch.tensor([5, 12])
    for windows, all_prefixes in ((w, False), ([2, 7, 12], True)):
        y = run(x, windows, all_prefixes, backend)
        assert y.dtype == dtype
        oracle = numpy_oracle(x, windows.tolist() if torch.is_tensor(windows) else windows, all_prefixes)
        same_precision = ref.spectral_subimages(x, windows, all_prefixes)  # computed in fp16 / bf16
        assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"{backend} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_benchmark_shape(dtype, monkeypatch):
    """On a real GPU at 256 x 256 x 3 (fp32 runs 3xTF32 there): one window per sample and 64 prefixes."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 256, 256, generator=gen).to(dtype)
    prefixes = spectral_windows(256, 64, "power", 2.0)
    for windows, all_prefixes in ((torch.tensor([256, 37]), False), (prefixes, True)):
        w_dev = windows.cuda() if torch.is_tensor(windows) else windows
        y = spectral_subimages(x.cuda(), w_dev, all_prefixes=all_prefixes).cpu()
        oracle = ref.spectral_subimages(x, windows, all_prefixes, upcast=True)
        if dtype == torch.float32:
            assert_close_to_oracle(y, oracle, atol=2e-5, name="gpu fp32")
        else:
            same_precision = ref.spectral_subimages(x.cuda(), w_dev, all_prefixes).cpu()
            assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"gpu {dtype}")


def test_large_image_reference(monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "ref")
    x = torch.randn(1, 1, 257, 257, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([100])
    assert_close_to_oracle(run(x, w, False, "ref"), numpy_oracle(x, [100], False), atol=2e-5, name="257")


def test_triton_large_image_falls_back_with_warning(monkeypatch):
    from spectralar_kernels.transforms import triton as dct_triton

    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    monkeypatch.setattr(dct_triton, "FUSED_MAX", 16)  # so a 17 x 17 image counts as "large"
    monkeypatch.setattr(_common, "_warned", set())
    x = torch.randn(2, 1, 17, 17, generator=torch.Generator().manual_seed(5), requires_grad=True)
    w = torch.tensor([3, 17])
    with pytest.warns(RuntimeWarning, match="no Triton path"):
        y = spectral_subimages(x, w)
    assert_close_to_oracle(y, numpy_oracle(x.detach(), [3, 17], False), atol=1e-5, name="fallback")
    g = torch.randn(2, 1, 17, 17, generator=torch.Generator().manual_seed(6))
    y.backward(g)
    assert_close_to_oracle(x.grad, numpy_oracle(g, [3, 17], False), atol=1e-5, name="fallback grad")


def test_gradcheck_reference_float64():
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ref.spectral_subimages(t, torch.tensor([2, 3])), (x,))
    assert torch.autograd.gradcheck(lambda t: ref.spectral_subimages(t, [1, 3, 4], all_prefixes=True), (x,))


@pytest.mark.parametrize("all_prefixes,s", [(False, 9), (True, 9), (True, 40)])
def test_gradient(backend, all_prefixes, s):
    """Gradient = the same projection applied to the upstream gradient (summed over prefixes)."""
    gen = torch.Generator().manual_seed(7)
    b, c = 2, 2
    x = torch.randn(b, c, s, s, generator=gen, requires_grad=True)
    windows = [2, s // 2 + 1, s] if all_prefixes else torch.tensor([4, 7])
    g = torch.randn((b, 3, c, s, s) if all_prefixes else (b, c, s, s), generator=gen)
    run(x, windows, all_prefixes, backend).backward(g)
    if all_prefixes:
        expected = sum(numpy_oracle(g[:, i], [w] * b, False) for i, w in enumerate(windows))
    else:
        expected = numpy_oracle(g, windows.tolist(), False)
    assert_close_to_oracle(x.grad, expected, atol=2e-5, name=f"grad {backend}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_gradient(backend, dtype):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 1, 10, 10, generator=gen).to(dtype).requires_grad_()
    g = torch.randn(2, 1, 10, 10, generator=gen).to(dtype)
    w = torch.tensor([3, 8])
    spectral_subimages(x, w).backward(g)
    expected = numpy_oracle(g, [3, 8], False)
    same_precision = ref.spectral_subimages(g, w)
    assert_close_to_oracle(x.grad, expected, same_precision_ref=same_precision, name=f"grad {backend} {dtype}")


def test_nan_propagates(backend):
    x = torch.randn(2, 1, 6, 6)
    x[1, 0, 5, 5] = float("nan")
    y = spectral_subimages(x, torch.tensor([2, 2]))
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


X = torch.zeros(2, 1, 8, 8)
W = torch.tensor([3, 8])


@pytest.mark.parametrize(
    "x,windows,all_prefixes,match",
    [
        (torch.zeros(1, 8, 8), W[:1], False, r"\[B, C, H, W\]"),
        (torch.zeros(1, 1, 1, 8, 8), W[:1], False, r"\[B, C, H, W\]"),
        (torch.zeros(2, 1, 8, 9), W, False, "square"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int32), W, False, "int32"),
        (torch.zeros(0, 1, 8, 8), W, False, "empty"),
        (X, W.float(), False, "integer tensor"),
        (X, torch.tensor([True, False]), False, "integer tensor"),
        (X, torch.tensor([3, 4, 5]), False, r"shape \(2,\)"),
        (X, torch.tensor([[3, 4]]), False, r"shape \(2,\)"),
        (X, [3, 4], False, "int tensor"),
        (X, torch.tensor([0, 8]), False, "window 0 outside"),
        (X, torch.tensor([3, 9]), False, "window 9 outside"),
        (X, W.to("meta"), False, "meta"),
        (X, [], True, "empty"),
        (X, [2, 2, 8], True, "strictly increasing"),
        (X, [5, 3], True, "strictly increasing"),
        (X, [0, 4], True, "window 0 outside"),
        (X, [4, 9], True, "window 9 outside"),
        (X, [2.0, 4.0], True, "ints"),
        (X, [True, 4], True, "ints"),
        (X, torch.tensor([[2, 4]]), True, "1-D"),
        (X, torch.tensor([2.0, 4.0]), True, "1-D int"),
        (X, 4, True, "list, tuple or 1-D int tensor"),
    ],
)
def test_value_errors(backend, x, windows, all_prefixes, match):
    with pytest.raises(ValueError, match=match):
        spectral_subimages(x, windows, all_prefixes=all_prefixes)
