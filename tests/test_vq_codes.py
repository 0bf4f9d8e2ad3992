"""The codebook state the reference keeps between calls on CPU (vq/codes.py): used again only for a codebook of the
same bits, so a codebook changed in any way (in place, through `.data`, by an optimizer) is ranked as it is now.

Every ranking is compared exactly with the brute-force contract of test_vq.py.
"""

import math
import warnings

import pytest
import test_vq
import torch
from test_vq import METRICS
from test_vq_groups import check_topk

from spectralar_kernels import vq_nearest
from spectralar_kernels.vq import codes as vq_codes
from spectralar_kernels.vq import ref

pytestmark = test_vq.pytestmark
CHUNK = ref.CHUNK_ELEMS // 13  # code_chunk of a d = 12 codebook at the default chunk


@pytest.fixture(autouse=True)
def fresh_cache():
    vq_codes.clear_cache()
    yield
    vq_codes.clear_cache()


def test_state_is_shared_only_by_codebooks_of_the_same_bits():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(1024, 12, generator=g)
    first = vq_codes.codes_for(c, False, CHUNK)
    assert vq_codes.codes_for(c.clone(), False, CHUNK) is first  # another tensor, same bits
    assert vq_codes.codes_for(c.T.contiguous().T, False, CHUNK) is first  # strides do not matter
    assert vq_codes.codes_for(c, True, CHUNK) is not first  # the metric does
    assert vq_codes.codes_for(c.half(), False, CHUNK) is not first  # and the dtype
    one_bit = c.clone()
    one_bit.view(torch.int32)[700, 5] ^= 1  # the last bit of one value
    assert vq_codes.codes_for(one_bit, False, CHUNK) is not first
    zeros, negative = torch.zeros(64, 3), torch.zeros(64, 3)
    negative[10, 1] = -0.0  # equal as numbers, not as bits
    assert vq_codes.codes_for(zeros, False, CHUNK) is not vq_codes.codes_for(negative, False, CHUNK)
    nan = c.clone()
    nan[3, 3] = math.nan  # NaN != NaN, but the same bits are the same codebook
    assert vq_codes.codes_for(nan, False, CHUNK) is vq_codes.codes_for(nan.clone(), False, CHUNK)
    big = torch.randn(vq_codes.CACHE_ELEMS // 13 + 1, 12, generator=g)
    assert vq_codes.codes_for(big, False, CHUNK) is not vq_codes.codes_for(big, False, CHUNK)
    several_chunks = torch.randn(300, 12, generator=g)  # a caller's small chunk: no copy kept beyond it
    assert vq_codes.codes_for(several_chunks, False, 100) is not vq_codes.codes_for(several_chunks, False, 100)
    vq_codes.clear_cache()
    assert vq_codes.codes_for(c, False, CHUNK) is not first


def test_state_keeps_a_copy_of_its_own():
    """The kept state must not follow the caller's tensor: after an in-place change, the old bits are still what
    the entry holds (a new call with the old values finds it; one with the new values does not)."""
    c = torch.randn(512, 12)
    old = c.clone()
    first = vq_codes.codes_for(c, False, CHUNK)
    c.data[0, 0] += 1.0  # through .data: no version bump
    assert vq_codes.codes_for(c, False, CHUNK) is not first
    assert torch.equal(first.codebook, old)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [None, 4])
def test_a_codebook_changed_between_calls_is_ranked_as_it_is_now(metric, k):
    """In place through .data, by an optimizer step, by a copy_ of new values, back to the old values: each call
    equals the contract for the codebook's values at that call."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1024, 12, generator=g)
    codebook = torch.nn.Parameter(torch.randn(1024, 12, generator=g))
    saved = codebook.detach().clone()
    opt = torch.optim.SGD([codebook], lr=0.5)

    def step(change):
        change()
        idx, dist = vq_nearest(z, codebook, metric, topk=k)
        c = codebook.detach()
        if k is None:
            idx, dist = idx[:, None], dist[:, None]
        check_topk(z, c, metric, idx, dist, k or 1)

    def sgd():
        codebook.grad = torch.randn(1024, 12, generator=g)
        opt.step()

    step(lambda: None)
    step(lambda: codebook.data.mul_(-1.0))  # every code moves: yesterday's nearest code is now the farthest
    step(sgd)
    step(lambda: codebook.data[::2].copy_(z[:512]))  # half the codes become rows of z: distance 0 exactly
    step(lambda: codebook.data.copy_(saved))  # back to the first values
    step(lambda: codebook.data[7].fill_(math.inf))  # a code turns non-finite


@pytest.mark.parametrize("metric", METRICS)
def test_rows_past_the_bound_raise_no_numpy_warnings(metric):
    """Rows holding inf or NaN or values near the fp32 range (ranked exactly) with codes of 1e19: no warning
    escapes from the numpy steps, and the ranking is the contract's."""
    g = torch.Generator().manual_seed(2)
    z, c = torch.randn(200, 16, generator=g) * 1e15, torch.randn(2100, 16, generator=g) * 1e15
    c = c[c[:, 0].argsort()]  # the first chunks of codes all below the centre in coordinate 0: with z_0 = +inf
    #   every score of the chunk is +inf, so the bound's arithmetic meets inf - inf
    z[3, 0], z[9, 2], z[11, 5], z[20] = math.inf, -math.inf, math.nan, 3e38
    c[1400], c[1401, 3] = 1e19, math.inf
    for k in (1, 4, 20):
        for chunk in (ref.CHUNK_ELEMS, 4096):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                idx, dist = ref.vq_nearest_ref(z, c, metric, topk=k, chunk_elems=chunk)
            check_topk(z, c, metric, idx, dist, k)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_rows_far_from_the_codes_centre_rank_exactly(k):
    """The l2 scores are centred on the codes' mean: rows far from it (data offset from the codebook, a codebook
    whose mean an outlier drags away) get a looser bound, never a wrong answer."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(1100, 12, generator=g)
    z = torch.randn(300, 12, generator=g) * 0.1 + 1e4  # every row far from every code
    idx, dist = ref.vq_nearest_ref(z, c, topk=k)
    check_topk(z, c, "l2", idx, dist, k)
    c[17] = 1e6  # one outlier code: the centre moves by about 900
    z = c[torch.randint(0, 1100, (300,), generator=g)] + 1e-3 * torch.randn(300, 12, generator=g)
    idx, dist = ref.vq_nearest_ref(z, c, topk=k)
    check_topk(z, c, "l2", idx, dist, k)
