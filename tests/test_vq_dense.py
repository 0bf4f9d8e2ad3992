"""vq_nearest's dense path: small problems on CPU rank every (row, code) pair exactly, in numpy (vq/dense.py).

It must give the reference's results bit for bit (both follow the contract of test_vq.py: float64 distances,
coordinate after coordinate, rounded once to fp32, ties to the lowest index, non-finite codes last), and be
taken exactly where its threshold says.
"""

import tracemalloc

import numpy as np
import pytest
import test_vq
import torch
from test_vq import METRICS, contract, hard_codebooks

from spectralar_kernels import vq_nearest
from spectralar_kernels.vq import dense, ref

pytestmark = test_vq.pytestmark


def awkward_case(i: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Case i: random scales, integer ties, NaN/inf rows and codes, zero and near-zero vectors, fp16/bf16, copies."""
    M, K, d = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (30, 150, 20))
    scale = lambda: 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))  # noqa: E731
    z, c = torch.randn(M, d, generator=g) * scale(), torch.randn(K, d, generator=g) * scale()
    kind = i % 6
    if kind == 1:
        z, c = torch.randint(-2, 3, (M, d), generator=g).float(), torch.randint(-2, 3, (K, d), generator=g).float()
    elif kind == 2:
        z[0, 0], c[0, -1], c[K // 2, 0] = float("nan"), float("inf"), float("nan")
    elif kind == 3:
        z[0], c[0], c[-1] = 0.0, 0.0, 1e-14
    elif kind == 4:
        z, c = z.half(), c.bfloat16()
    elif kind == 5:
        z[-1, 0], c[K // 2] = float("inf"), c[0]
    return z, c


def test_dense_and_reference_give_the_same_bits():
    g = torch.Generator().manual_seed(11)
    for i in range(60):
        z, c = awkward_case(i, g)
        K = c.shape[0]
        for metric in METRICS:
            for k in sorted({1, min(2, K), min(5, K), K}):
                a = dense.vq_nearest_dense(z, c, metric, topk=k)
                b = ref.vq_nearest_ref(z, c, metric, topk=k)
                where = f"case {i} ({tuple(z.shape)} x {tuple(c.shape)}), {metric}, k={k}"
                assert torch.equal(a[0], b[0]), where
                assert torch.equal(a[1].view(torch.int32), b[1].view(torch.int32)), where  # NaN bits included
                want_idx, want_dist = contract(z, c, metric, k)
                assert np.array_equal(a[0].numpy(), want_idx), where
                np.testing.assert_array_equal(a[1].numpy(), want_dist, err_msg=where)
        nearest = dense.vq_nearest_dense(z, c, "l2")  # topk=None: [M] outputs, as the reference's
        assert nearest[0].shape == (z.shape[0],) and torch.equal(nearest[0], ref.vq_nearest_ref(z, c)[0])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", list(hard_codebooks()))
def test_dense_hard_codebooks_match_contract(case, metric):
    z, codebook = hard_codebooks()[case]
    for k in (1, 3):
        idx, dist = dense.vq_nearest_dense(z, codebook, metric, topk=k)
        want_idx, want_dist = contract(z, codebook, metric, k)
        assert np.array_equal(idx.numpy(), want_idx), (case, k)
        np.testing.assert_array_equal(dist.numpy(), want_dist)


def test_dense_path_is_taken_exactly_below_its_threshold(monkeypatch):
    """vq_nearest takes it when M x K x (d + 2) <= DENSE_ELEMS and M x K <= DENSE_PAIRS, on CPU with numpy; per
    group for a [G, K, d] codebook."""
    calls = []
    real = dense.vq_nearest_dense
    monkeypatch.setattr(dense, "vq_nearest_dense", lambda z, *a: calls.append(tuple(z.shape)) or real(z, *a))
    d = 14  # d + 2 = 16: DENSE_ELEMS / 16 pairs at most, fewer than DENSE_PAIRS
    c = torch.randn(dense.DENSE_ELEMS // (d + 2) // 4, d)
    want = ref.vq_nearest_ref(torch.zeros(4, d), c, topk=2)
    got = vq_nearest(torch.zeros(4, d), c, topk=2)
    assert calls == [(4, d)] and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    vq_nearest(torch.randn(5, d), c)  # one row more: the reference
    vq_nearest(torch.randn(2, 4, d), torch.stack([c, c]), topk=3)  # two groups, each within the threshold
    assert calls == [(4, d)] * 3
    c1 = torch.randn(dense.DENSE_PAIRS // 16, 1)  # d = 1: the pair limit binds first
    vq_nearest(torch.randn(16, 1), c1)
    vq_nearest(torch.randn(17, 1), c1)
    assert calls == [(4, d)] * 3 + [(16, 1)]
    monkeypatch.setattr(dense, "_np", None)  # no numpy: the reference
    vq_nearest(torch.randn(4, d), c)
    assert len(calls) == 4


@pytest.mark.parametrize(
    "metric, zero_row, arrays", [("l2", False, 2), ("cosine", False, 2), ("cosine", True, 3)], ids=str
)
def test_dense_path_temporaries_stay_small(metric, zero_row, arrays):
    """At its largest (DENSE_PAIRS pairs, d = 1) the dense path holds at most two float64 M x K arrays (three while
    cosine handles a norm below 1e-12)."""
    z, c = torch.randn(64, 1), torch.randn(dense.DENSE_PAIRS // 64, 1)
    if zero_row:
        z[5] = 0
    assert dense.fits(z, c)
    dense.vq_nearest_dense(z, c, metric, topk=3)  # warm up
    tracemalloc.start()
    try:
        dense.vq_nearest_dense(z, c, metric, topk=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pairs = z.shape[0] * c.shape[0]
    # slack: numpy's iterator buffers (8192 values per operand) and the small vectors, under half an M x K array
    assert peak <= arrays * 8 * pairs + (1 << 18), (metric, peak, pairs)
