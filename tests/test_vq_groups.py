"""vq_nearest over batched codebooks, any leading dims and top-k, against a float64 brute force (both paths).

Shares the backend fixture and the oracles of test_vq.py.
"""

import numpy as np
import pytest
import test_vq
import torch
from test_vq import METRICS, MaxNumel, l2_atol, nearest, oracle_distances

from spectralar_kernels import vq_nearest
from spectralar_kernels.testing import assert_close_to_oracle
from spectralar_kernels.vq import ref

backend = test_vq.backend  # the same fixture: reference, vq-v1 and vq-v2

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


def check_topk(z, codebook, metric, idx, dist, topk, euclidean=False, exact_indices=False):
    """Shapes; per row the k returned codes are the k nearest of the float64 brute force (distances within
    tolerance, ascending); the returned distances are the oracle's; optionally exact (stable-order) indices."""
    k = topk or 1
    want = (*z.shape[:-1], k) if topk is not None else z.shape[:-1]
    assert idx.shape == want and dist.shape == want and idx.dtype == torch.int64 and dist.dtype == torch.float32
    if topk is None:
        idx, dist = idx[..., None], dist[..., None]
    for rows, cb, where in grouped(z, codebook):
        gi, gd = idx[where].reshape(-1, k), dist[where].reshape(-1, k)
        D = oracle_distances(rows, cb, metric)  # [M', K] float64
        if metric == "l2":  # the brute force twice: explicit numpy and torch.cdist, both in float64
            cd = torch.cdist(rows.double(), cb.double()).pow(2).numpy()
            np.testing.assert_allclose(D, cd, rtol=1e-9, atol=1e-9)
        assert ((gi >= 0) & (gi < cb.shape[0])).all()
        assert all(len(set(r)) == k for r in gi.tolist()), "a code returned twice in one row"
        best = torch.from_numpy(np.sort(D, axis=1)[:, :k])
        chosen = torch.from_numpy(np.take_along_axis(D, gi.numpy(), axis=1))
        atol = l2_atol(rows, cb) if metric == "l2" else 1e-5
        assert_close_to_oracle(chosen, best, atol=atol, name=f"{metric} oracle distances of the k chosen codes")
        got = gd.double().pow(2) if euclidean else gd
        assert_close_to_oracle(got.float(), best, atol=atol, name=f"{metric} returned distances")
        assert (gd[:, 1:] >= gd[:, :-1] - atol).all(), "top-k not in ascending order"
        if exact_indices:
            assert torch.equal(gi, torch.from_numpy(np.argsort(D, axis=1, kind="stable")[:, :k]))


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
    kernel_ran = backend != "ref" and (topk or 1) == 1
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
    check_topk(z, codebook, "l2", idx, dist, topk, exact_indices=True)
    if topk == 5:
        assert idx[0, 1, 0].tolist() == [0, 40, 41, 42, 43] and (dist[:, 1, 0] == 0).all()


def test_topk_nan_rows_and_codes(backend):
    g = torch.Generator().manual_seed(14)
    z, codebook = torch.randn(4, 6, generator=g), torch.randn(30, 6, generator=g)
    z[1, 2] = float("nan")
    idx, dist = vq_nearest(z, codebook, topk=3)
    assert idx[1].tolist() == [0, 1, 2] and torch.isnan(dist[1]).all()
    keep = torch.tensor([0, 2, 3])
    check_topk(z[keep], codebook, "l2", idx[keep], dist[keep], 3)
    codebook[17, 0] = float("nan")  # ranked first, so every row surfaces it with a NaN distance
    idx, dist = vq_nearest(z, codebook, topk=3)
    assert (idx[keep, 0] == 17).all() and torch.isnan(dist[keep, 0]).all()


@pytest.mark.parametrize("chunk_elems", [1, 7, 64, 1000])
@pytest.mark.parametrize("metric", METRICS)
def test_reference_topk_chunking_preserves_result(chunk_elems, metric):
    g = torch.Generator().manual_seed(15)
    codebook = torch.randint(-2, 3, (90, 4), generator=g).float()
    z = torch.randint(-3, 4, (31, 4), generator=g).float()
    full = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=1 << 30, topk=5)
    idx, dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=chunk_elems, topk=5)
    # l2 on small integers is exact whatever the chunking; cosine near-ties round per GEMM shape
    check_topk(z, codebook, metric, idx, dist, 5, exact_indices=metric == "l2")
    if metric == "l2":
        assert torch.equal(idx, full[0]) and torch.equal(dist, full[1])


def test_reference_topk_never_allocates_m_by_k():
    M, K, d = 2048, 4096, 12
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    with MaxNumel() as mode:
        ref.vq_nearest_ref(z, codebook, "l2", topk=8)
    assert mode.max_numel <= ref.CHUNK_ELEMS < M * K, mode.max_numel
    with MaxNumel() as mode:
        ref.vq_nearest_ref(z[:300], codebook, "l2", chunk_elems=5000, topk=8)
    assert mode.max_numel <= max(5000, K * d), mode.max_numel


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
