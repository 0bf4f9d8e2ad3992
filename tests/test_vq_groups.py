"""vq_nearest over batched codebooks, any leading dims and top-k, against the ranking contract (both paths).

Shares the backend fixture and the brute-force contract of test_vq.py: top-k is the k smallest (distance, index)
pairs, so indices and distances are compared exactly.
"""

import numpy as np
import pytest
import test_vq
import torch
from test_vq import METRICS, MaxNumel, contract, nearest

from spectralar_kernels import vq_nearest
from spectralar_kernels.vq import ref

backend = test_vq.backend  # the same fixture: reference (bound and dense paths), vq-v1 and vq-v2
bound_path = test_vq.bound_path  # autouse here too: the bound path unless the backend is "ref-dense"
pytestmark = test_vq.pytestmark

# Batched codebooks and top-k. (z shape, codebook shape): leading dims on z with a shared codebook, G = 3 codebooks
# with z [G, M, d] and [..., G, M, d]; M not a multiple of any row block, K not a power of two, d odd.
GROUP_CASES = [((2, 3, 11, 5), (37, 5)), ((3, 13, 7), (3, 37, 7)), ((2, 3, 5, 3), (3, 20, 3))]


def grouped(z: torch.Tensor, codebook: torch.Tensor):
    """(z rows [M', d], codebook [K, d], index of its [..., M, k] outputs) per group (outputs carry k last)."""
    if codebook.dim() == 2:
        return [(z.reshape(-1, z.shape[-1]), codebook, (...,))]
    zg = z.movedim(-3, 0)
    every = (slice(None), slice(None))
    return [(zg[g].reshape(-1, z.shape[-1]), codebook[g], (..., g, *every)) for g in range(codebook.shape[0])]


def check_topk(z, codebook, metric, idx, dist, topk, euclidean=False):
    """Shapes, then per group: the k returned (index, distance) pairs are the contract's k smallest, in order."""
    k = topk or 1
    want = (*z.shape[:-1], k) if topk is not None else z.shape[:-1]
    assert idx.shape == want and dist.shape == want and idx.dtype == torch.int64 and dist.dtype == torch.float32
    if topk is None:
        idx, dist = idx[..., None], dist[..., None]
    for rows, cb, where in grouped(z, codebook):
        gi, gd = idx[where].reshape(-1, k), dist[where].reshape(-1, k)
        want_idx, want_dist = contract(rows, cb, metric, k)
        assert np.array_equal(gi.numpy(), want_idx), f"indices differ in {(gi.numpy() != want_idx).any(1).sum()} rows"
        got = gd.pow(2) if euclidean else gd  # sqrt then square: within an ulp of the squared distance
        if euclidean:
            np.testing.assert_allclose(got.numpy(), want_dist, rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(got.numpy(), want_dist)


@pytest.fixture
def kernel_launches(backend, monkeypatch):
    """Calls into the Triton launcher (one per group for the nearest code; none for top-k > 1)."""
    from spectralar_kernels.vq import triton as vq_triton

    calls = []
    real = vq_triton.vq_nearest_fwd
    monkeypatch.setattr(vq_triton, "vq_nearest_fwd", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("topk", [None, 1, 5])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("zshape,cshape", GROUP_CASES, ids=str)
def test_groups_leading_dims_topk_vs_bruteforce(backend, kernel_launches, zshape, cshape, metric, topk):
    g = torch.Generator().manual_seed(sum(zshape) + sum(cshape))
    z, codebook = torch.randn(zshape, generator=g), torch.randn(cshape, generator=g)
    idx, dist = vq_nearest(z, codebook, metric, topk=topk)
    check_topk(z, codebook, metric, idx, dist, topk)
    groups = cshape[0] if len(cshape) == 3 else 1
    kernel_ran = backend.startswith("triton") and (topk or 1) == 1
    assert kernel_launches == ([backend.partition(":")[2]] * groups if kernel_ran else [])
    if metric == "l2":
        e_idx, e_dist = vq_nearest(z, codebook, metric, topk=topk, return_distances="euclidean")
        assert torch.equal(e_idx, idx) and torch.equal(e_dist, dist.sqrt())
        check_topk(z, codebook, metric, e_idx, e_dist, topk, euclidean=True)


@pytest.mark.parametrize("topk", [1, 5])
def test_groups_topk_exact_ties(backend, topk):
    """Small integers (every l2 score exact): the k indices are the float64 stable argsort, per group."""
    g = torch.Generator().manual_seed(13)
    codebook = torch.randint(-2, 3, (3, 70, 3), generator=g).float()  # many exact duplicates and ties
    codebook[1, 40:50] = codebook[1, 0]  # ten copies of one code: a top-5 of equal distances
    z = torch.randint(-3, 4, (2, 3, 9, 3), generator=g).float()
    z[:, 1, 0] = codebook[1, 0]
    idx, dist = vq_nearest(z, codebook, "l2", topk=topk)
    check_topk(z, codebook, "l2", idx, dist, topk)
    if topk == 5:
        assert idx[0, 1, 0].tolist() == [0, 40, 41, 42, 43] and (dist[:, 1, 0] == 0).all()


def test_topk_nan_rows_and_codes(backend):
    """Top-k follows the contract with non-finite values too: codes holding NaN come after every finite code,
    a NaN row lists the finite codes in index order (distance NaN)."""
    g = torch.Generator().manual_seed(14)
    z, codebook = torch.randn(4, 6, generator=g), torch.randn(30, 6, generator=g)
    z[1, 2] = float("nan")
    codebook[0, 0] = float("nan")
    codebook[17, 1] = float("inf")
    idx, dist = vq_nearest(z, codebook, topk=3)
    assert idx[1].tolist() == [1, 2, 3] and torch.isnan(dist[1]).all()
    check_topk(z, codebook, "l2", idx, dist, 3)
    idx, dist = vq_nearest(z[:2], codebook[[0, 17, 5]], topk=3)  # one finite code: the non-finite ones follow
    assert idx[0].tolist() == [2, 0, 1] and torch.isnan(dist[0, 1:]).all()


@pytest.mark.parametrize("chunk_elems", [16, 200, 1000])
@pytest.mark.parametrize("metric", METRICS)
def test_reference_topk_chunking_preserves_result(chunk_elems, metric):
    g = torch.Generator().manual_seed(15)
    codebook = torch.randint(-2, 3, (90, 4), generator=g).float()
    z = torch.randint(-3, 4, (31, 4), generator=g).float()
    full = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=1 << 30, topk=5)
    idx, dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=chunk_elems, topk=5)
    check_topk(z, codebook, metric, idx, dist, 5)
    assert torch.equal(idx, full[0]) and torch.equal(dist, full[1])


def test_reference_topk_never_allocates_m_by_k():
    M, K, d = 1100, 4096, 12
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    with MaxNumel(z, codebook) as mode:
        ref.vq_nearest_ref(z, codebook, "l2", topk=8)
    assert mode.max_numel <= ref.CHUNK_ELEMS < M * K, mode.max_numel
    with MaxNumel(z, codebook) as mode:
        ref.vq_nearest_ref(z[:300], codebook, "l2", chunk_elems=5000, topk=8)
    assert mode.max_numel <= max(5000, K), mode.max_numel


def test_shared_2d_calls_unchanged(backend):
    """The [M, d] x [K, d] call (the tokenizer's) gives exactly what the launcher / reference give."""
    g = torch.Generator().manual_seed(16)
    z, codebook = torch.randn(40, 12, generator=g), torch.randn(70, 12, generator=g)
    for metric in METRICS:
        idx, dist = vq_nearest(z, codebook, metric)
        want = nearest(z, codebook, metric, backend)
        assert torch.equal(idx, want[0]) and torch.equal(dist, want[1])
        k1_idx, k1_dist = vq_nearest(z, codebook, metric, topk=1)
        assert torch.equal(k1_idx, idx[:, None]) and torch.equal(k1_dist, dist[:, None])


@pytest.mark.parametrize(
    "z, codebook, kwargs, match",
    [
        (torch.randn(4, 12), torch.randn(3, 5, 12), {}, r"z must be \[\.\.\., G, M, d\]"),
        (torch.randn(2, 4, 12), torch.randn(3, 5, 12), {}, "G = 3 at dim -3"),
        (torch.randn(3, 4, 12), torch.randn(3, 5, 11), {}, "code dim mismatch"),
        (torch.randn(3, 4, 12), torch.randn(1, 3, 5, 12), {}, "codebook must be"),
        (torch.randn(4, 12), torch.randn(5, 12), {"topk": 0}, "topk must be"),
        (torch.randn(4, 12), torch.randn(5, 12), {"topk": 6}, r"topk must be None or an int in \[1, K=5\]"),
        (torch.randn(4, 12), torch.randn(5, 12), {"topk": True}, "topk must be"),
        (torch.randn(4, 12), torch.randn(5, 12), {"topk": 2.0}, "topk must be"),
        (torch.randn(4, 12), torch.randn(5, 12), {"return_distances": "l2"}, "return_distances must be one of"),
        (torch.randn(4, 12), torch.randn(5, 12), {"metric": "cosine", "return_distances": "euclidean"}, "needs metric"),
    ],
)
def test_group_topk_value_errors(backend, z, codebook, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vq_nearest(z, codebook, **kwargs)
