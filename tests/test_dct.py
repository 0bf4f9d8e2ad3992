"""dct2d / idct2d against scipy.fft (float64), through the reference and the Triton kernels."""

import numpy as np
import pytest
import scipy.fft
import torch

from spectralar_kernels import dct, dct2d, idct, idct2d
from spectralar_kernels.testing import assert_close_to_oracle, max_err, nan_like
from spectralar_kernels.transforms import ref

# Shapes [..., H, W]: 1, odd, primes, non-square, tall/wide, batch dims. Tiny: the interpreter is slow.
SHAPES = [(1, 1), (3, 3), (1, 7), (7, 1), (5, 12), (2, 17, 17), (2, 3, 33, 9), (40, 3)]
BLOCK_CASES = [((16, 24), 8), ((2, 12, 12), 4), ((32, 16), 16), ((9, 15), 3), ((1, 10, 5), 5)]
LOWP = [torch.float16, torch.bfloat16]


def scipy_oracle(x: torch.Tensor, inverse: bool, block: int | None = None) -> torch.Tensor:
    """float64 scipy (i)dctn of x, per b x b block when `block` is given (explicit loop over blocks)."""
    a = x.double().numpy()
    fn = scipy.fft.idctn if inverse else scipy.fft.dctn
    if block is None:
        return torch.from_numpy(fn(a, type=2, norm="ortho", axes=(-2, -1)))
    out = np.empty_like(a)
    for i in range(0, a.shape[-2], block):
        for j in range(0, a.shape[-1], block):
            tile = a[..., i : i + block, j : j + block]
            out[..., i : i + block, j : j + block] = fn(tile, type=2, norm="ortho", axes=(-2, -1))
    return torch.from_numpy(out)


def run(x: torch.Tensor, inverse: bool, block: int | None, backend: str) -> torch.Tensor:
    """The public function; on the Triton backend also the launcher into a NaN-filled `out`, which
    must agree with it (so an element the kernel never writes fails)."""
    y = (idct2d if inverse else dct2d)(x, block=block)
    if backend == "triton":
        from spectralar_kernels.transforms.blockwise import blockwise_dct_fwd
        from spectralar_kernels.transforms.triton import dct2d_fwd

        if block is None:
            out = dct2d_fwd(x, None, inverse, out=nan_like(x.contiguous()))
        else:
            out = blockwise_dct_fwd(x, block, inverse, out=nan_like(x.contiguous()))
        assert not torch.isnan(out).any(), "launcher left elements unwritten"
        assert torch.equal(out, y)
    return y


def fp32_tol(oracle: torch.Tensor) -> dict:
    return dict(atol=1e-5 * max(1.0, oracle.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("inverse", [False, True], ids=["dct", "idct"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_scipy_fp32(backend, shape, inverse):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    y = run(x, inverse, None, backend)
    oracle = scipy_oracle(x, inverse)
    assert y.dtype == torch.float32
    assert_close_to_oracle(y, oracle, **fp32_tol(oracle), name=f"{backend} {shape}")


@pytest.mark.parametrize("inverse", [False, True], ids=["dct", "idct"])
@pytest.mark.parametrize("shape,block", BLOCK_CASES, ids=str)
def test_blockwise_matches_scipy(backend, shape, block, inverse):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y = run(x, inverse, block, backend)
    oracle = scipy_oracle(x, inverse, block)
    assert_close_to_oracle(y, oracle, **fp32_tol(oracle), name=f"{backend} {shape} block={block}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape,block", [((2, 17, 17), None), ((5, 12), None), ((16, 24), 8), ((9, 15), 3)], ids=str)
def test_low_precision(backend, shape, block, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    for inverse in (False, True):
        y = run(x, inverse, block, backend)
        assert y.dtype == dtype
        oracle = scipy_oracle(x, inverse, block)  # of the rounded input, so input rounding is no error
        same_precision = (ref.idct2d if inverse else ref.dct2d)(x, block)  # computed in fp16 / bf16
        assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"{backend} {dtype} {shape}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 64, 128), (2, 70, 130), (1, 129, 40)], ids=str)
def test_triton_tile_configurations(backend, shape, dtype):
    """Several strips and chunks per plane, at each BLOCK_M (64, 128, 256): whole tiles with the
    unmasked main path (64 x 128) and ragged last tiles in both dims (70 x 130, 129 x 40)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    for inverse in (False, True):
        y = run(x, inverse, None, backend)
        oracle = scipy_oracle(x, inverse)
        if dtype == torch.float32:
            assert_close_to_oracle(y, oracle, **fp32_tol(oracle), name=f"{backend} {shape}")
        else:
            same_precision = (ref.idct2d if inverse else ref.dct2d)(x)
            assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"{backend} {shape} {dtype}")


def test_triton_tall_planes_and_big_blocks(backend, monkeypatch):
    """Planes taller or wider than FUSED_MAX run the reference (warned once), blocks above BLOCKWISE_MAX the
    whole-plane launcher on gathered blocks; both limits are lowered so tiny shapes reach those paths."""
    from spectralar_kernels import _common
    from spectralar_kernels.transforms import blockwise as dct_blockwise
    from spectralar_kernels.transforms import triton as dct_triton

    monkeypatch.setattr(dct_triton, "FUSED_MAX", 64)
    monkeypatch.setattr(dct_blockwise, "BLOCKWISE_MAX", 4)
    for shape in ((2, 66, 22), (2, 11, 66)):  # too tall, too wide (R_s [64, W] must fit on chip too)
        monkeypatch.setattr(_common, "_warned", set())
        x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        for inverse in (False, True):
            for block in (None, 11):
                oracle = scipy_oracle(x, inverse, block)
                if backend == "triton" and block is None and not inverse:
                    with pytest.warns(RuntimeWarning, match=rf"\[{shape[1]}, {shape[2]}\] exceeds 64"):
                        y = run(x, inverse, block, backend)
                else:
                    y = run(x, inverse, block, backend)
                assert_close_to_oracle(y, oracle, **fp32_tol(oracle), name=f"{backend} {shape} block={block}")


def tf32(t: torch.Tensor) -> torch.Tensor:
    """Round fp32 to TF32 (10 explicit mantissa bits, to nearest, ties away) as cvt.rna.tf32.f32 does."""
    bits = t.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_3xtf32_split_meets_the_fp32_tolerance():
    """Why fp32 products are never plain TF32 (the DCT kernels use IEEE fp32; the all-prefixes sub-image kernel
    3xTF32, which the interpreter computes as plain fp32, so this emulates it): head/tail TF32 operands, three
    products (each exact in fp32) with fp32 accumulation, as input_precision="tf32x3" does, pass the fp32
    tolerance at 256 x 256; one TF32 product does not."""
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(10))
    d = ref.dct_basis(256, torch.float32)

    def dot(a, b, passes):
        a_hi, b_hi = tf32(a), tf32(b)
        if passes == 1:
            return a_hi @ b_hi
        a_lo, b_lo = tf32(a - a_hi), tf32(b - b_hi)
        return a_hi @ b_lo + a_lo @ b_hi + a_hi @ b_hi

    oracle = scipy_oracle(x, False)
    three = dot(d, dot(x, d.T.contiguous(), 3), 3)
    assert_close_to_oracle(three, oracle, **fp32_tol(oracle), name="3xTF32")
    one = dot(d, dot(x, d.T.contiguous(), 1), 1)
    with pytest.raises(AssertionError):
        assert_close_to_oracle(one, oracle, **fp32_tol(oracle), name="1xTF32")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_benchmark_shape(dtype, monkeypatch):
    """On a real GPU, at the benchmark plane size: fp32 (3xTF32 there, unlike the interpreter) must
    pass the fp32 tolerance; fp16/bf16 the same-precision rule."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    x = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(11)).to(dtype)
    for inverse in (False, True):
        y = (idct2d if inverse else dct2d)(x.cuda()).cpu()
        oracle = scipy_oracle(x, inverse)
        if dtype == torch.float32:
            assert_close_to_oracle(y, oracle, **fp32_tol(oracle), name="gpu fp32")
        else:
            same_precision = (ref.idct2d if inverse else ref.dct2d)(x.cuda()).cpu()
            assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"gpu {dtype}")


@pytest.mark.parametrize("shape,block", [((257, 257), None), ((2, 512, 512), None), ((3, 300, 257), None),
                                         ((130, 65), 65)], ids=str)
def test_large_planes_reference(shape, block, monkeypatch):
    monkeypatch.setenv("SPECTRALAR_KERNELS", "ref")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    for inverse in (False, True):
        oracle = scipy_oracle(x, inverse, block)
        assert_close_to_oracle(run(x, inverse, block, "ref"), oracle, **fp32_tol(oracle), name=f"ref {shape}")


@pytest.mark.parametrize("n", [1, 2, 3, 8, 17, 33])
def test_fft_form_matches_matmul_form(n, monkeypatch):
    """Both reference formulations at awkward sizes (the size threshold forced each way)."""
    x = torch.randn(3, n, n + 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for inverse in (False, True):
        oracle = scipy_oracle(x, inverse)
        for threshold in (1, 10**9):
            monkeypatch.setattr(ref, "FFT_MIN_SIZE", threshold)
            monkeypatch.setattr(ref, "IFFT_MIN_SIZE", threshold)
            y = (ref.idct2d if inverse else ref.dct2d)(x)
            assert max_err(y, oracle) < 1e-12, (threshold, inverse)


def test_roundtrip_and_non_contiguous(backend):
    x = torch.randn(2, 12, 20, generator=torch.Generator().manual_seed(6)).transpose(-1, -2)  # [2, 20, 12] strided
    assert not x.is_contiguous()
    y = run(x, False, None, backend)
    assert_close_to_oracle(y, scipy_oracle(x, False), atol=2e-5, name="non-contiguous")
    assert_close_to_oracle(run(y, True, None, backend), x.double(), atol=2e-5, name="roundtrip")
    assert_close_to_oracle(run(run(x, False, 4, backend), True, 4, backend), x.double(), atol=2e-5, name="block rt")


def test_gradcheck_reference_float64():
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ref.dct2d(t), (x,))
    assert torch.autograd.gradcheck(lambda t: ref.idct2d(t[:, :3], block=3), (x,))


@pytest.mark.parametrize("block", [None, 4])
def test_gradient_is_the_inverse_transform(backend, block):
    """d/dx <g, dct2d(x)> = idct2d(g) and vice versa, for a random upstream gradient g."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 12, generator=gen, requires_grad=True)
    g = torch.randn(2, 8, 12, generator=gen)
    for inverse in (False, True):
        x.grad = None
        run(x, inverse, block, backend).backward(g)
        expected = scipy_oracle(g, not inverse, block)
        assert_close_to_oracle(x.grad, expected, atol=1e-5, name=f"grad {backend} inverse={inverse}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_gradient_matches_reference(backend, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 9, 10, generator=gen).to(dtype)
    g = torch.randn(3, 9, 10, generator=gen).to(dtype)
    xa = x.clone().requires_grad_()
    dct2d(xa).backward(g)
    monkeypatch.setenv("SPECTRALAR_KERNELS", "ref")
    xr = x.clone().requires_grad_()
    dct2d(xr).backward(g)
    same_precision = ref.idct2d(g)
    assert_close_to_oracle(xa.grad, scipy_oracle(g, True), same_precision_ref=same_precision, name="grad lowp")
    assert_close_to_oracle(xr.grad, scipy_oracle(g, True), same_precision_ref=same_precision, name="grad lowp ref")


def test_nan_propagates(backend):
    x = torch.randn(2, 6, 7)
    x[1, 2, 3] = float("nan")
    for block in (None, 1):
        y = dct2d(x, block=block)
        assert torch.isnan(y[1]).any() and not torch.isnan(y[0]).any()


def test_basis_is_cached_and_orthonormal():
    d = ref.dct_basis(13, torch.float64)
    assert ref.dct_basis(13, torch.float64) is d
    torch.testing.assert_close(d @ d.T, torch.eye(13, dtype=torch.float64), atol=1e-14, rtol=0)


@pytest.mark.parametrize(
    "make,block,match",
    [
        (lambda: torch.randn(8), None, "at least 2 dims"),
        (lambda: torch.zeros(4, 4, dtype=torch.int64), None, "int64"),
        (lambda: torch.zeros(4, 4, dtype=torch.complex64), None, "complex64"),
        (lambda: torch.zeros(0, 4), None, "empty"),
        (lambda: np.zeros((4, 4), dtype=np.float32), None, "ndarray"),
        (lambda: torch.zeros(8, 12), 5, "block=5 must divide"),
        (lambda: torch.zeros(8, 12), 0, "block must be a positive int"),
        (lambda: torch.zeros(8, 12), True, "block must be a positive int"),
        (lambda: torch.zeros(8, 12), 4.0, "block must be a positive int"),
    ],
)
def test_value_errors(backend, make, block, match):
    for fn in (dct2d, idct2d):
        with pytest.raises(ValueError, match=match):
            fn(make(), block=block)


NORMS = ["ortho", "backward", "forward"]
# (shape, dims): odd and prime sizes, dims not last, positive, negative and in either order
DIM_CASES = [((3, 5, 7), (-2, -1)), ((3, 5, 7), (0, 2)), ((4, 2, 3, 5), (3, 1)), ((6, 1, 9), (-3, -1))]


def scipy_norm_oracle(x, inverse: bool, norm: str, axes, block: int | None = None) -> torch.Tensor:
    """float64 scipy (i)dctn with `norm` over `axes`, per b x b block when `block` is given."""
    moved = torch.from_numpy(x.detach().double().numpy()).movedim(axes, (-2, -1))
    a = moved.numpy()
    fn = scipy.fft.idctn if inverse else scipy.fft.dctn
    b = block or a.shape[-1]
    bh = block or a.shape[-2]
    tiles = a.reshape(*a.shape[:-2], a.shape[-2] // bh, bh, a.shape[-1] // b, b).swapaxes(-3, -2)
    out = fn(tiles, type=2, norm=norm, axes=(-2, -1)).swapaxes(-3, -2).reshape(a.shape)
    return torch.from_numpy(np.ascontiguousarray(out)).movedim((-2, -1), axes)


def tol(oracle: torch.Tensor, dtype: torch.dtype) -> dict:
    if dtype == torch.float64:
        return dict(atol=1e-12 * max(1.0, oracle.abs().max().item()), rtol=1e-12)
    return fp32_tol(oracle)


@pytest.fixture
def kernel_calls(backend, monkeypatch):
    """Counts launches of the Triton autograd functions (which must never see float64)."""
    from spectralar_kernels.transforms import blockwise as dct_blockwise
    from spectralar_kernels.transforms import triton as dct_triton

    calls = []
    for cls in (dct_triton.DCT2dFunction, dct_blockwise.BlockwiseDCTFunction):
        real = cls.apply

        def counted(x, *args, real=real):
            assert x.dtype != torch.float64, "float64 reached a Triton kernel"
            calls.append(x.dtype)
            return real(x, *args)

        monkeypatch.setattr(cls, "apply", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape,dims", DIM_CASES, ids=str)
def test_norm_and_dim_match_scipy(backend, kernel_calls, shape, dims, norm, dtype):
    """dctn / idctn with every scipy norm over any two dims; float64 runs the reference on every backend."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(20), dtype=dtype)
    for inverse in (False, True):
        y = (idct2d if inverse else dct2d)(x, norm=norm, dim=dims)
        oracle = scipy_norm_oracle(x, inverse, norm, dims)
        assert y.dtype == dtype
        assert_close_to_oracle(y, oracle, **tol(oracle, dtype), name=f"{backend} {norm} {dims} inverse={inverse}")
    assert len(kernel_calls) == (2 if backend == "triton" and dtype == torch.float32 else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_1d_matches_scipy(backend, kernel_calls, norm, dtype):
    x = torch.randn(4, 9, 6, generator=torch.Generator().manual_seed(21), dtype=dtype)
    for dim in (-1, 0, 1):
        for inverse in (False, True):
            y = (idct if inverse else dct)(x, axis=dim, norm=norm)
            a = x.double().numpy()
            oracle = torch.from_numpy((scipy.fft.idct if inverse else scipy.fft.dct)(a, type=2, norm=norm, axis=dim))
            assert y.dtype == dtype
            assert_close_to_oracle(y, oracle, **tol(oracle, dtype), name=f"{backend} 1-D {norm} dim={dim}")
    one = torch.randn(11, generator=torch.Generator().manual_seed(22), dtype=dtype)  # a plain 1-D tensor
    oracle = torch.from_numpy(scipy.fft.dct(one.double().numpy(), type=2, norm=norm))
    assert_close_to_oracle(dct(one, norm=norm), oracle, **tol(oracle, dtype), name=f"{backend} 1-D vector {norm}")
    assert len(kernel_calls) == (7 if backend == "triton" and dtype == torch.float32 else 0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape,block,dims", [((2, 8, 12), 4, (-2, -1)), ((9, 2, 15), 3, (0, 2))], ids=str)
def test_blockwise_norms(backend, kernel_calls, shape, block, dims, norm):
    """Each b x b block is transformed with `norm` as its own b x b plane (scipy per block)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(23), dtype=dtype)
        for inverse in (False, True):
            y = (idct2d if inverse else dct2d)(x, block=block, norm=norm, dim=dims)
            oracle = scipy_norm_oracle(x, inverse, norm, dims, block)
            assert_close_to_oracle(y, oracle, **tol(oracle, dtype), name=f"{backend} block={block} {norm} {dtype}")
    assert len(kernel_calls) == (2 if backend == "triton" else 0)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("norm", ["backward", "forward"])
def test_low_precision_norms(backend, dtype, norm):
    """fp16/bf16 with a non-orthonormal norm: within 2x the same-precision reference's error (that reference
    scales the orthonormal transform in the input dtype)."""
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(24)).to(dtype)
    factor = {True: lambda n: ref.axis_factors(2, n, norm, False, True)[1],  # idct: the input's
              False: lambda n: ref.axis_factors(2, n, norm, False, False)[2]}  # dct: the output's  # fmt: skip
    for inverse in (False, True):
        y = (idct2d if inverse else dct2d)(x, norm=norm)
        assert y.dtype == dtype
        oracle = scipy_norm_oracle(x, inverse, norm, (-2, -1))
        scale = torch.outer(factor[inverse](5), factor[inverse](12)).to(dtype)
        same_precision = ref.idct2d(x * scale) if inverse else ref.dct2d(x) * scale
        assert_close_to_oracle(y, oracle, same_precision_ref=same_precision, name=f"{backend} {dtype} {norm}")


@pytest.mark.parametrize("norm", NORMS)
def test_norm_gradients(backend, norm):
    """Gradients through the scaling, non-last dims and the 1-D form: fp32 (kernel or reference) against the
    float64 reference's autograd, which gradcheck verifies."""
    gen = torch.Generator().manual_seed(25)
    x64 = torch.randn(5, 2, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(5, 2, 6, dtype=torch.float64, generator=gen)
    fns = [
        lambda t: dct2d(t, norm=norm, dim=(0, 2)),
        lambda t: idct2d(t, norm=norm, dim=(2, 0)),
        lambda t: dct(t, axis=0, norm=norm),
        lambda t: idct(t, axis=-1, norm=norm),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (x64,))
        (expected,) = torch.autograd.grad(fn(x64), x64, g)
        x32 = x64.detach().float().requires_grad_()
        fn(x32).backward(g.float())
        assert_close_to_oracle(x32.grad, expected, **fp32_tol(expected), name=f"{backend} grad {norm}")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: dct2d(torch.zeros(4, 4), norm="ortho "), "Invalid norm value"),
        (lambda: dct2d(torch.zeros(4, 4), dim=(1, 1)), "same dim twice"),
        (lambda: dct2d(torch.zeros(4, 4), dim=(1, -1)), "same dim twice"),
        (lambda: dct2d(torch.zeros(4, 4), dim=(0, 2)), "each entry must be an int in"),
        (lambda: idct2d(torch.zeros(4, 4), dim=-1), "dim must be a pair"),
        (lambda: dct2d(torch.zeros(4, 4), dim=(0, 1.0)), "each entry must be an int"),
        (lambda: dct2d(torch.zeros(4, 6, 3), block=2, dim=(0, 2)), "block=2 must divide both H=4 and W=3"),
        (lambda: dct(torch.zeros(4), norm="backwards"), "Invalid norm value"),
        (lambda: idct(torch.zeros(0)), "invalid number of data points"),
    ],
)
def test_norm_dim_value_errors(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_norm_none_is_backward(backend):
    """norm=None is scipy's default, "backward" (it used to raise), in dct2d / idct2d as in dct / dctn."""
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(26))
    for fn in (dct2d, idct2d):
        torch.testing.assert_close(fn(x, norm=None), fn(x, norm="backward"), atol=0, rtol=0)
    oracle = torch.from_numpy(scipy.fft.dctn(x.double().numpy(), axes=(-2, -1)))
    assert_close_to_oracle(dct2d(x, norm=None), oracle, **fp32_tol(oracle), name=f"{backend} norm=None")
