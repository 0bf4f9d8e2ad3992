"""vq_nearest against a float64 numpy brute force, through the reference and both Triton implementations.

The distance of the chosen code is always compared (ties and near-ties make indices ambiguous);
indices are compared exactly where codes are well separated or all arithmetic is exact (small
integers). fp16/bf16 inputs are compared against the oracle of the same rounded values: the op
computes in fp32 whatever the input dtype, so fp32 tolerances apply to every dtype.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spectralar_kernels import vq_nearest
from spectralar_kernels.testing import assert_close_to_oracle
from spectralar_kernels.vq import ref

# (M, K, d): M = 1, d = 1, d = 12 (the real code dim), K not a multiple of the code block (32/64),
# d > 16 (several 16-wide chunks in the kernel), K = 1. Tiny: the interpreter is slow.
SHAPES = [(1, 1, 1), (1, 7, 12), (5, 33, 1), (33, 7, 12), (64, 100, 12), (70, 257, 12), (17, 65, 3), (9, 40, 40)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
METRICS = ["l2", "cosine"]
IMPLS = ["vq-v1", "vq-v2"]
# vq-v2 pads its codebook with +inf scores that its 3xTF32 split turns into NaN (never chosen): the
# interpreter's numpy says so
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(params=["ref", "triton:vq-v1", "triton:vq-v2"])
def backend(request, monkeypatch):
    """The reference, then each Triton implementation (under the interpreter on a machine without CUDA)."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", request.param)
    return request.param


def oracle_distances(z: torch.Tensor, codebook: torch.Tensor, metric: str) -> np.ndarray:
    """All M x K distances in float64 (brute force; tests use tiny shapes)."""
    a = z.double().numpy()
    c = codebook.double().numpy()
    if metric == "l2":
        return ((a[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    na = np.maximum(np.linalg.norm(a, axis=1), ref.EPS)
    nc = np.maximum(np.linalg.norm(c, axis=1), ref.EPS)
    return 1.0 - (a @ c.T) / (na[:, None] * nc[None, :])


def nearest(z, codebook, metric, backend, split=None):
    """Run one backend; a Triton launcher writes into poisoned outputs (index -1, distance NaN)."""
    if backend.startswith("triton"):
        from spectralar_kernels.vq.triton import vq_nearest_fwd

        impl = backend.partition(":")[2] or "vq-v2"
        out = (torch.full((z.shape[0],), -1, dtype=torch.int64), torch.full((z.shape[0],), float("nan")))
        idx, dist = vq_nearest_fwd(z, codebook, metric, impl=impl, out=out, split=split)
        assert idx is out[0] and dist is out[1]
        return idx, dist
    return vq_nearest(z, codebook, metric)


def l2_atol(z, codebook) -> float:
    # ||c||^2 - 2 z.c in fp32 ranks codes with error ~ eps32 * (|z|^2 + |c|^2)
    scale = z.double().pow(2).sum(1).max().item() + codebook.double().pow(2).sum(1).max().item()
    return 1e-5 * max(1.0, scale)


def check(z, codebook, metric, idx, dist, exact_indices=False):
    """Returned distance = oracle min; chosen code is a nearest one; optionally exact indices."""
    M = z.shape[0]
    assert idx.dtype == torch.int64 and idx.shape == (M,)
    assert dist.dtype == torch.float32 and dist.shape == (M,)
    assert not idx.requires_grad and not dist.requires_grad
    assert ((idx >= 0) & (idx < codebook.shape[0])).all(), f"index out of range: {idx}"
    D = oracle_distances(z, codebook, metric)
    best = torch.from_numpy(D.min(axis=1))
    atol = l2_atol(z, codebook) if metric == "l2" else 1e-5
    chosen = torch.from_numpy(D[np.arange(M), idx.numpy()])
    assert_close_to_oracle(chosen, best, atol=atol, name=f"{metric} oracle distance of the chosen code")
    assert_close_to_oracle(dist, best, atol=atol, name=f"{metric} returned distance")
    if exact_indices:
        assert torch.equal(idx, torch.from_numpy(D.argmin(axis=1))), "indices differ from the brute force"
    return (dist.double() - best).abs().max().item()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_vs_bruteforce(backend, shape, dtype, metric):
    M, K, d = shape
    g = torch.Generator().manual_seed(M * 1000 + K + d)
    z = torch.randn(M, d, generator=g).to(dtype)
    codebook = torch.randn(K, d, generator=g).to(dtype)
    idx, dist = nearest(z, codebook, metric, backend)
    check(z, codebook, metric, idx, dist)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_well_separated_exact_indices(backend, dtype, metric):
    g = torch.Generator().manual_seed(1)
    K, d = 150, 12
    codebook = torch.randn(K, d, generator=g) * 3
    target = torch.randint(0, K, (77,), generator=g)
    z = codebook[target] + 0.01 * torch.randn(77, d, generator=g)
    z, codebook = z.to(dtype), codebook.to(dtype)
    # the planted code must really be the unique nearest one by a margin, or the test proves nothing
    D = oracle_distances(z, codebook, metric)
    part = np.partition(D, 1, axis=1)
    assert (part[:, 1] - part[:, 0] > 1e-3).all() and (D.argmin(1) == target.numpy()).all()
    idx, dist = nearest(z, codebook, metric, backend)
    check(z, codebook, metric, idx, dist, exact_indices=True)
    assert torch.equal(idx, target)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_data_exact_ties(backend, dtype):
    """Small integers: every l2 score is exact in fp32, so indices must equal numpy's first argmin."""
    g = torch.Generator().manual_seed(2)
    codebook = torch.randint(-2, 3, (200, 3), generator=g).to(dtype)  # many exact duplicates and ties
    z = torch.randint(-3, 4, (50, 3), generator=g).to(dtype)
    idx, dist = nearest(z, codebook, "l2", backend)
    check(z, codebook, "l2", idx, dist, exact_indices=True)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_codes_lowest_index(backend, metric):
    g = torch.Generator().manual_seed(3)
    K, d = 130, 12
    codebook = torch.randn(K, d, generator=g)
    # duplicates inside one code block, across block boundaries (32/64) and in the last partial block
    pairs = [(3, 4), (10, 70), (31, 32), (63, 64), (100, 129)]
    for lo, hi in pairs:
        codebook[hi] = codebook[lo]
    z = torch.stack([codebook[hi] for _, hi in pairs] + [codebook[lo] for lo, _ in pairs])
    idx, dist = nearest(z, codebook, metric, backend)
    lows = torch.tensor([lo for lo, _ in pairs])
    assert torch.equal(idx, torch.cat([lows, lows]))
    assert (dist.abs() <= 1e-5).all(), dist


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", [2, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_codebook_splits(impl, split, dtype):
    """Several programs per row block along the codebook: ties across split boundaries stay lowest."""
    g = torch.Generator().manual_seed(8)
    codebook = torch.randint(-2, 3, (300, 3), generator=g).to(dtype)  # exact ties everywhere
    for lo, hi in [(10, 70), (63, 64), (127, 128), (100, 299)]:
        codebook[hi] = codebook[lo]
    z = torch.cat([torch.randint(-3, 4, (40, 3), generator=g).to(dtype), codebook[[70, 64, 128, 299]]])
    idx, dist = nearest(z, codebook, "l2", f"triton:{impl}", split=split)
    check(z, codebook, "l2", idx, dist, exact_indices=True)
    # a planted duplicate is never chosen over its lower copy (which may itself repeat an earlier code)
    assert (idx[-4:] <= torch.tensor([10, 63, 127, 100])).all(), idx[-4:]
    zr, cr = torch.randn(20, 12, generator=g).to(dtype), torch.randn(300, 12, generator=g).to(dtype)
    idx, dist = nearest(zr, cr, "cosine", f"triton:{impl}", split=split)
    check(zr, cr, "cosine", idx, dist)


@pytest.mark.parametrize("chunk_elems", [1, 7, 64, 1000])
@pytest.mark.parametrize("metric", METRICS)
def test_reference_chunking_preserves_result(chunk_elems, metric):
    g = torch.Generator().manual_seed(4)
    codebook = torch.randint(-2, 3, (90, 4), generator=g).float()
    codebook[50] = codebook[7]
    z = torch.cat([torch.randint(-3, 4, (30, 4), generator=g).float(), codebook[50:51]])
    full_idx, full_dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=1 << 30)
    idx, dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=chunk_elems)
    assert torch.equal(idx, full_idx) and torch.equal(dist, full_dist)
    assert idx[-1] == 7
    if metric == "l2":
        check(z, codebook, metric, idx, dist, exact_indices=True)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor (elements and bytes) any aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.max_nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
                self.max_nbytes = max(self.max_nbytes, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("metric", METRICS)
def test_reference_never_allocates_m_by_k(metric):
    M, K, d = 2048, 4096, 12  # M * K = 2^23 > the default chunk of 2^22 scores
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    with MaxNumel() as mode:
        idx, dist = ref.vq_nearest_ref(z, codebook, metric)
    assert mode.max_numel <= ref.CHUNK_ELEMS < M * K, mode.max_numel
    # a small chunk: scores stay within it; input-sized copies (codebook upcast, ||c||^2) are allowed
    with MaxNumel() as mode:
        small_idx, small_dist = ref.vq_nearest_ref(z[:300], codebook, metric, chunk_elems=5000)
    assert mode.max_numel <= max(5000, K * d), mode.max_numel
    assert torch.equal(small_idx, idx[:300])
    torch.testing.assert_close(small_dist, dist[:300], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_triton_launcher_allocates_only_vectors(impl):
    from spectralar_kernels.vq import triton as vq_triton

    M, K, d = 100, 300, 3
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    vq_triton._CACHE.clear()
    with MaxNumel() as mode:
        idx, dist = vq_triton.vq_nearest_fwd(z, codebook, "l2", impl)
    # [K, d] copies (float64 codebook prep), the padded [K, 16] fp32 codebook and [M] vectors:
    # nothing near M x K
    assert mode.max_nbytes <= 8 * K * 16 < M * K * 4, mode.max_nbytes
    check(z, codebook, "l2", idx, dist)


@pytest.mark.parametrize("metric", METRICS)
def test_nan_rows_and_codes(backend, metric):
    g = torch.Generator().manual_seed(5)
    z, codebook = torch.randn(6, 12, generator=g), torch.randn(70, 12, generator=g)
    z[2, 5] = float("nan")
    idx, dist = nearest(z, codebook, metric, backend)
    assert torch.isnan(dist[2]), "a NaN row must give a NaN distance"
    keep = torch.tensor([0, 1, 3, 4, 5])
    check(z[keep], codebook, metric, idx[keep], dist[keep])
    z[2, 5] = 0.0
    codebook[66, 0] = float("nan")  # in the last partial block
    codebook[67, 3] = float("nan")
    idx, dist = nearest(z, codebook, metric, backend)
    assert torch.isnan(dist).all(), "a NaN code must not leave finite distances"
    assert (idx == 66).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("metric", METRICS)
def test_nan_with_codebook_splits(impl, metric):
    """NaN rows and codes when several programs share a row block (vq-v2: through the atomic min)."""
    g = torch.Generator().manual_seed(11)
    z, codebook = torch.randn(70, 12, generator=g), torch.randn(300, 12, generator=g)
    z[[3, 66], 2] = float("nan")
    idx, dist = nearest(z, codebook, metric, f"triton:{impl}", split=3)
    assert torch.isnan(dist[[3, 66]]).all() and (idx[[3, 66]] == 0).all()
    keep = torch.ones(70, dtype=torch.bool)
    keep[[3, 66]] = False
    check(z[keep], codebook, metric, idx[keep], dist[keep])
    codebook[[290, 150], 4] = float("nan")  # the lower NaN code wins, from a later split than row blocks start
    idx, dist = nearest(z, codebook, metric, f"triton:{impl}", split=3)
    assert torch.isnan(dist).all()
    assert (idx[keep] == 150).all() and (idx[[3, 66]] == 0).all()


@pytest.mark.parametrize("metric", METRICS)
def test_v2_large_code_dim_runs_v1(metric):
    """vq-v2 keeps z tiles in registers up to d = 63; larger d takes vq-v1's chunked loop."""
    g = torch.Generator().manual_seed(12)
    z, codebook = torch.randn(5, 70, generator=g), torch.randn(40, 70, generator=g)
    idx, dist = nearest(z, codebook, metric, "triton:vq-v2")
    check(z, codebook, metric, idx, dist)


def test_zero_vectors_cosine(backend):
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    codebook = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    idx, dist = nearest(z, codebook, "cosine", backend)
    # zero row: cos = 0 to every code, tie -> index 0, distance 1; row 1: the parallel code, distance 0
    assert idx.tolist() == [0, 2]
    torch.testing.assert_close(dist, torch.tensor([1.0, 0.0]), rtol=0, atol=1e-6)


def test_public_function_dispatch_and_mixed_inputs(backend):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(20, 24, generator=g)
    z = base[:, ::2]  # non-contiguous [20, 12]
    codebook = torch.randn(45, 12, generator=g, dtype=torch.float32).to(torch.bfloat16)
    z_fp16 = z.to(torch.float16).requires_grad_()
    idx, dist = vq_nearest(z_fp16, codebook)  # fp16 rows against a bf16 codebook: computed in fp32
    check(z_fp16.detach(), codebook, "l2", idx, dist)
    idx2, dist2 = vq_nearest(z, codebook.float(), "cosine")
    check(z, codebook.float(), "cosine", idx2, dist2)


def test_reference_upcast_is_float64():
    g = torch.Generator().manual_seed(7)
    z, codebook = torch.randn(30, 12, generator=g), torch.randn(50, 12, generator=g)
    for metric in METRICS:
        idx, dist = ref.vq_nearest_ref(z, codebook, metric, upcast=True)
        D = oracle_distances(z, codebook, metric)
        assert dist.dtype == torch.float64
        assert torch.equal(idx, torch.from_numpy(D.argmin(1)))
        torch.testing.assert_close(dist, torch.from_numpy(D.min(1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "z, codebook, metric, match",
    [
        (torch.randn(12), torch.randn(5, 12), "l2", "z must be"),
        (torch.randn(4, 12), torch.randn(12), "l2", "codebook must be"),
        (torch.randn(4, 12), torch.randn(5, 11), "l2", "code dim mismatch"),
        (torch.ones(4, 12, dtype=torch.int64), torch.randn(5, 12), "l2", "float32, float16 or bfloat16"),
        (torch.randn(4, 12), torch.ones(5, 12, dtype=torch.int32), "l2", "float32, float16 or bfloat16"),
        (torch.randn(4, 12, dtype=torch.float64), torch.randn(5, 12), "l2", "float32, float16 or bfloat16"),
        (torch.randn(0, 12), torch.randn(5, 12), "l2", "empty"),
        (torch.randn(4, 12), torch.randn(0, 12), "l2", "empty"),
        (torch.randn(4, 0), torch.randn(5, 0), "l2", "empty"),
        (torch.randn(4, 12), torch.randn(5, 12, device="meta"), "l2", "one device"),
        (torch.randn(4, 12), torch.randn(5, 12), "dot", "metric must be one of"),
        ([[1.0, 2.0]], torch.randn(5, 2), "l2", "torch.Tensor"),
    ],
)
def test_value_errors(backend, z, codebook, metric, match):
    with pytest.raises(ValueError, match=match):
        vq_nearest(z, codebook, metric)


def far_data(offset: float, dtype, seed: int = 0, M: int = 48, K: int = 64, d: int = 12):
    """Codes N(0, 1) plus near-duplicates (distances 3e-4 .. 0.3), shifted by `offset`; z = a code + 1e-3 noise.

    Built in float64 so the planted structure survives to the rounding into `dtype`.
    """
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(K, d, generator=g, dtype=torch.float64)
    half = K // 2
    step = torch.logspace(-3.5, -0.5, half, dtype=torch.float64)[:, None]
    direction = torch.nn.functional.normalize(torch.randn(half, d, generator=g, dtype=torch.float64), dim=1)
    codebook[half:] = codebook[:half] + step * direction
    codebook += offset
    z = codebook[torch.randint(0, K, (M,), generator=g)] + 1e-3 * torch.randn(M, d, generator=g, dtype=torch.float64)
    return z.to(dtype), codebook.to(dtype)


def ranking_resolution(z, codebook, metric, centred_cosine=True) -> float:
    """What fp32 can resolve when ranking centred data, in distance units (a few hundred ulps of the spread).

    l2: relative to ||z - m||^2 + ||c - m||^2 with m the codebook mean, not to the data's distance from the
    origin; cosine: relative to the spread of the unit codes around their mean direction, or (vq-v1, which
    ranks cosine on the raw vectors) 1e-6, a few ulps of 1 - cos.
    """
    zz, c = z.double(), codebook.double()
    if metric == "cosine" and not centred_cosine:
        return 1e-6
    if metric == "l2":
        m = c.mean(0)
        return 1e-5 * max(1.0, ((zz - m) ** 2).sum(1).max().item() + ((c - m) ** 2).sum(1).max().item())
    u = c / c.norm(dim=1, keepdim=True).clamp_min(ref.EPS)
    return 2e-6 * (u - u.mean(0)).norm(dim=1).max().item()


def check_ranking(z, codebook, metric, idx, dist, centred_cosine=True):
    """Exact index wherever the float64 best-second gap exceeds the resolution; else a code within it."""
    D = oracle_distances(z, codebook, metric)
    part = np.partition(D, 1, axis=1)
    best, gap = part[:, 0], part[:, 1] - part[:, 0]
    res = ranking_resolution(z, codebook, metric, centred_cosine)
    clear = gap > res
    chosen = D[np.arange(D.shape[0]), idx.numpy()]
    wrong = clear & (idx.numpy() != D.argmin(axis=1))
    assert not wrong.any(), f"{wrong.sum()} of {clear.sum()} well-resolved rows got the wrong code (res {res:.1e})"
    excess = (chosen - best).max()
    assert excess <= res, f"chosen code {excess:.2e} above the nearest (resolution {res:.1e})"
    # the returned distance is the fp32 formula itself: 1 - cos cancels to ~1e-7 absolute
    dist_atol = res if metric == "l2" else res + 1e-6
    assert_close_to_oracle(dist, torch.from_numpy(best), atol=dist_atol, name=f"{metric} returned distance")
    return clear.sum()


@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_far_from_origin_and_near_duplicates(backend, dtype, metric, offset):
    """The textbook ||c||^2 - 2 z.c loses the argmin at offset 100 in fp32; the centred ranking must not."""
    z, codebook = far_data(offset, dtype)
    idx, dist = nearest(z, codebook, metric, backend)
    resolved = check_ranking(z, codebook, metric, idx, dist, centred_cosine=backend != "triton:vq-v1")
    if dtype == torch.float32 and metric == "l2":
        assert resolved >= 15  # enough near-ties above the resolution for the test to mean something


@pytest.mark.parametrize("impl", IMPLS)
def test_far_from_origin_with_splits(impl):
    z, codebook = far_data(100.0, torch.float32, seed=1, M=40, K=200)
    idx, dist = nearest(z, codebook, "l2", f"triton:{impl}", split=3)
    check_ranking(z, codebook, "l2", idx, dist)


def test_codebook_cache_follows_in_place_changes():
    """vq-v2 reuses its prepared codebook until the codebook changes, and only then."""
    from spectralar_kernels.vq import triton as vq_triton

    calls = []
    real = vq_triton.ranking_operands

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    g = torch.Generator().manual_seed(9)
    z, codebook = torch.randn(30, 12, generator=g), torch.randn(70, 12, generator=g)
    vq_triton._CACHE.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vq_triton, "ranking_operands", counting)
        for metric in METRICS:
            calls.clear()
            first = nearest(z, codebook, metric, "triton:vq-v2")
            again = nearest(z, codebook.detach(), metric, "triton:vq-v2")  # same storage, same version: a hit
            assert len(calls) == 1 and torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
            codebook[5:9] = z[:4] + 1e-3  # in place: rows 0-3 now have a new nearest code
            idx, dist = nearest(z, codebook, metric, "triton:vq-v2")
            assert len(calls) == 2
            assert idx[:4].tolist() == [5, 6, 7, 8]
            check(z, codebook, metric, idx, dist)
            codebook.mul_(-1.0)
            idx, dist = nearest(z, codebook, metric, "triton:vq-v2")
            assert len(calls) == 3
            check(z, codebook, metric, idx, dist)
        # a non-contiguous codebook is prepared from the caller's tensor, so it hits too
        strided = torch.randn(12, 70, generator=g).T
        calls.clear()
        for _ in range(2):
            idx, dist = nearest(z, strided, "l2", "triton:vq-v2")
            check(z, strided, "l2", idx, dist)
        assert len(calls) == 1
        # a new tensor (possibly at a recycled address, same shape and version) is never a stale hit
        for _ in range(3):
            fresh = torch.randn(70, 12, generator=g)
            idx, dist = nearest(z, fresh, "l2", "triton:vq-v2")
            check(z, fresh, "l2", idx, dist)
            del fresh


@pytest.mark.parametrize("split", [1, 3])
def test_v2_workspace_left_clean(split):
    """The last program of each row block resets the keys and the ticket, so no launch needs a memset."""
    from spectralar_kernels.vq import triton as vq_triton

    g = torch.Generator().manual_seed(10)
    z, codebook = torch.randn(150, 12, generator=g), torch.randn(300, 12, generator=g)
    for _ in range(2):
        idx, dist = nearest(z, codebook, "l2", "triton:vq-v2", split=split)
        check(z, codebook, "l2", idx, dist, exact_indices=True)
        keys, tickets = vq_triton._workspace(z.device, z.shape[0], 3)
        assert (keys == vq_triton.INT64_MAX).all() and (tickets == 0).all()


def test_public_function_runs_the_chosen_impl(monkeypatch):
    from spectralar_kernels.vq import triton as vq_triton

    seen = []
    real = vq_triton.vq_nearest_fwd
    monkeypatch.setattr(vq_triton, "vq_nearest_fwd", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    z, codebook = torch.randn(4, 12), torch.randn(9, 12)
    for env, want in [("triton:vq-v1", "vq-v1"), ("triton:vq-v2", "vq-v2"), ("triton", "vq-v2")]:
        monkeypatch.setenv("SPECTRALAR_KERNELS", env)
        vq_nearest(z, codebook, "l2")
        assert seen[-1] == want


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7, 12), (70, 257, 12), (9, 40, 40), (4096, 16384, 12)], ids=str)
def test_cuda_kernel_vs_bruteforce(shape, dtype, metric, impl):
    """The compiled kernel on a real GPU (tf32 must not leak in, tensor-core paths must match)."""
    from spectralar_kernels.vq.triton import vq_nearest_fwd

    M, K, d = shape
    g = torch.Generator().manual_seed(M + K + d)
    z = torch.randn(M, d, generator=g).to(dtype)
    codebook = torch.randn(K, d, generator=g).to(dtype)
    out = (torch.full((M,), -1, dtype=torch.int64, device="cuda"), torch.full((M,), float("nan"), device="cuda"))
    idx, dist = vq_nearest_fwd(z.cuda(), codebook.cuda(), metric, impl, out=out)
    idx, dist = idx.cpu(), dist.cpu()
    if M * K <= 1 << 20:
        check(z, codebook, metric, idx, dist)
    else:  # too big for the brute force: the float64 reference is the oracle
        best_idx, best = ref.vq_nearest_ref(z, codebook, metric, upcast=True)
        chosen = ref._direct_distance(z.double(), codebook.double()[idx], metric == "cosine")
        atol = l2_atol(z, codebook) if metric == "l2" else 1e-5
        assert_close_to_oracle(chosen, best, atol=atol, name="float64 distance of the chosen code")
        assert_close_to_oracle(dist, best, atol=atol, name="cuda distance")
        assert (idx == best_idx).float().mean() > 0.999
    # ties and NaN on the device
    dup = codebook.clone()
    dup[K - 1] = dup[0]
    tie_idx, _ = vq_nearest_fwd(dup[K - 1 :].cuda(), dup.cuda(), metric, impl)
    assert tie_idx.item() == 0
    znan = torch.randn(3, d, generator=g).to(dtype)
    znan[1, 0] = float("nan")
    _, nan_dist = vq_nearest_fwd(znan.cuda(), codebook.cuda(), metric, impl)
    assert torch.isnan(nan_dist[1]) and not torch.isnan(nan_dist[[0, 2]]).any()
    # far from the origin, with near-duplicate codes (3xTF32 / tensor-core rounding on the device)
    zf, cf = far_data(100.0, dtype, M=300, K=2000)
    idx, dist = vq_nearest_fwd(zf.cuda(), cf.cuda(), metric, impl)
    check_ranking(zf, cf, metric, idx.cpu(), dist.cpu(), centred_cosine=impl != "vq-v1")

