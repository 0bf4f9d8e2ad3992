"""What only a coarse-to-fine sampler does: stop after k tokens (anytime), continue a given prefix (variations), and
stream every token with its decoded preview; each agrees with the plain sampler for the same seed."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from spectralar.models.config import preset
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.sampling import SamplingParams, decode_prefix, generate, sample_variations, stream

N = 6


@pytest.fixture(params=["token", "adaln"], scope="module")
def gpt(request):
    torch.manual_seed(0)
    model = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=N, depth=2, cond=request.param))
    if request.param == "adaln":  # at init the modulation is ~1e-2: make it O(1) so a prefill bug cannot hide
        with torch.no_grad():
            nn.init.normal_(model.cls_emb.weight)
            for lin in [blk.ada for blk in model.blocks] + [model.head_ada]:
                nn.init.normal_(lin.weight, std=model.config.width ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(1)
    cfg = preset("tokenizer", "micro")
    return SpectralTokenizer(dataclasses.replace(cfg, num_tokens=N, windows=None)).eval()


def seeded(seed=3):
    return torch.Generator().manual_seed(seed)


LABELS = torch.tensor([0, 2, 1, 1])
SETTINGS = [SamplingParams(), SamplingParams(cfg_scale=2.5), SamplingParams(cfg_scale=2.0, top_k=8, top_p=0.9),
            SamplingParams(temperature=0)]


@pytest.mark.parametrize("params", SETTINGS, ids=str)
@pytest.mark.parametrize("kv_cache", [True, False])
def test_num_tokens_k_is_the_first_k_of_the_full_run(gpt, params, kv_cache):
    """num_tokens=N is the default call bit for bit; num_tokens=k gives that run's first k codes."""
    full = generate(gpt, LABELS, params, kv_cache=kv_cache, generator=seeded())
    assert torch.equal(generate(gpt, LABELS, params, num_tokens=N, kv_cache=kv_cache, generator=seeded()), full)
    for k in range(1, N):
        assert torch.equal(generate(gpt, LABELS, params, num_tokens=k, kv_cache=kv_cache, generator=seeded()),
                           full[:, :k]), k


def test_num_tokens_k_costs_k_steps(gpt, monkeypatch):
    """Anytime sampling does k/N of the work: one prefill and k - 1 decode steps, whatever N."""
    calls = []
    orig = type(gpt).decode_one_token
    monkeypatch.setattr(type(gpt), "decode_one_token", lambda self, *a: calls.append(1) or orig(self, *a))
    for k in (1, 3, N):
        calls.clear()
        generate(gpt, LABELS, SamplingParams(cfg_scale=2.0), num_tokens=k, generator=seeded())
        assert len(calls) == k - 1


@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_prefix_gives_the_same_codes_with_and_without_cache(gpt, params):
    """A prefix that is not the model's own (random codes): the KV cache (one prefill pass over it) and the
    recomputing path continue it with the same codes, and return it unchanged in front."""
    prefix = torch.randint(0, gpt.config.codebook_size, (4, 3), generator=seeded(9))
    for k in (1, 3):
        a = generate(gpt, LABELS, params, prefix=prefix[:, :k], generator=seeded())
        b = generate(gpt, LABELS, params, prefix=prefix[:, :k], kv_cache=False, generator=seeded())
        assert torch.equal(a, b) and a.shape == (4, N), k
        assert torch.equal(a[:, :k], prefix[:, :k])
    c = generate(gpt, LABELS, params, prefix=prefix, num_tokens=4, generator=seeded())
    assert c.shape == (4, 4) and torch.equal(c, generate(gpt, LABELS, params, prefix=prefix, num_tokens=4,
                                                         kv_cache=False, generator=seeded()))


def test_prefix_of_the_runs_own_codes_gives_the_run(gpt):
    """Step t always draws the t-th number: continuing a run's own first k codes with its seed is that run."""
    params = SamplingParams(cfg_scale=2.0)
    full = generate(gpt, LABELS, params, generator=seeded())
    for k in range(N + 1):
        assert torch.equal(generate(gpt, LABELS, params, prefix=full[:, :k], generator=seeded()), full), k


def test_prefill_of_a_prefix_matches_the_uncached_forward(gpt):
    """The logits of the sampled steps after a one-pass prefill equal the full forward over the final codes."""
    params = SamplingParams(cfg_scale=2.0)
    prefix = torch.randint(0, gpt.config.codebook_size, (4, 2), generator=seeded(5))
    codes, logits = generate(gpt, LABELS, params, prefix=prefix, generator=seeded(), return_logits=True)
    assert logits.shape == (4, N - 2, gpt.config.codebook_size)
    cond = gpt(LABELS, codes[:, :-1]).float()
    uncond = gpt(torch.full_like(LABELS, gpt.null_class), codes[:, :-1]).float()
    torch.testing.assert_close(logits, (uncond + 2.0 * (cond - uncond))[:, 2:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_stream_ends_with_generates_codes_and_previews_every_token(gpt, tok, kv_cache):
    """One StreamStep per sampled token: codes so far (a prefix of the final codes), the batched preview decoded
    from them; the last codes are generate's for the same seed, the last preview the tokenizer's decode."""
    params = SamplingParams(cfg_scale=2.0)
    for prefix in (None, generate(gpt, LABELS, params, generator=seeded(11))[:, :2]):
        want = generate(gpt, LABELS, params, prefix=prefix, kv_cache=kv_cache, generator=seeded())
        steps = list(stream(gpt, LABELS, params, tokenizer=tok, prefix=prefix, kv_cache=kv_cache, generator=seeded()))
        k = 0 if prefix is None else prefix.shape[1]
        assert [s.index for s in steps] == list(range(k + 1, N + 1)) and steps[-1].last
        assert torch.equal(steps[-1].codes, want)
        for s in steps:
            assert torch.equal(s.codes, want[:, :s.index]) and s.total == N
            assert torch.equal(s.images, decode_prefix(tok, s.codes))
        torch.testing.assert_close(steps[-1].images, tok.decode(want), atol=0, rtol=0)
    early = list(stream(gpt, LABELS, params, num_tokens=3, generator=seeded()))
    assert len(early) == 3 and early[-1].images is None
    assert torch.equal(early[-1].codes, generate(gpt, LABELS, params, generator=seeded())[:, :3])


def test_stream_leaves_the_callers_gradient_mode_alone(gpt, tok):
    """Steps run without gradients, but between steps, and after a caller stops early (a page closed mid-stream),
    the caller's thread keeps gradients on: a training step after a preview must still get them."""
    it = stream(gpt, LABELS, SamplingParams(cfg_scale=2.0), tokenizer=tok, generator=seeded())
    first = next(it)
    assert torch.is_grad_enabled() and not first.images.requires_grad
    w = torch.ones(2, requires_grad=True)
    assert (w * 2).sum().requires_grad  # what a training step right after a preview would build on
    next(it)
    assert torch.is_grad_enabled()
    del it  # abandoned after two of N steps
    assert torch.is_grad_enabled()


def test_stream_steps_read_nothing_back(tok):
    """FakeTensorMode raises on any .item() / bool(tensor): every step but the end-of-stream finiteness check,
    previews included, runs on fake tensors, so streaming adds no host sync of its own. (One small model: fake
    tensors are slow.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    gpt = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=N)).eval()
    it = stream(gpt, LABELS, SamplingParams(cfg_scale=2.0, top_p=0.9), tokenizer=tok, generator=seeded())
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        shapes = [tuple(next(it).images.shape) for _ in range(N)]
    assert shapes == [(4, 1, 32, 32)] * N


def test_decode_prefix_is_decode_with_the_rest_absent(tok):
    codes = torch.randint(0, tok.config.codebook_size, (3, N), generator=seeded(2))
    for k in range(1, N + 1):
        assert torch.equal(decode_prefix(tok, codes[:, :k]), tok.decode(codes, num_tokens=k)), k
    with pytest.raises(ValueError, match=r"1 <= k <= 6"):
        decode_prefix(tok, codes[:, :0])


def test_variations_keep_the_prefix(gpt):
    codes = torch.randint(0, gpt.config.codebook_size, (2, N), generator=seeded(4))
    var = sample_variations(gpt, codes, torch.tensor([1, 2]), keep=2, num=3, params=SamplingParams(cfg_scale=2.0))
    assert var.shape == (2, 3, N) and torch.equal(var[:, :, :2], codes[:, None, :2].expand(2, 3, 2))
    assert len({tuple(v.tolist()) for v in var[0]}) > 1  # independent continuations
    assert torch.equal(sample_variations(gpt, codes, torch.tensor([1, 2]), keep=N, num=2),
                       codes[:, None].expand(2, 2, N))
    with pytest.raises(ValueError, match="keep"):
        sample_variations(gpt, codes, torch.tensor([1, 2]), keep=N + 1, num=2)


@pytest.mark.parametrize("kw, match", [
    ({"num_tokens": 0}, "num_tokens"), ({"num_tokens": N + 1}, "num_tokens"), ({"num_tokens": 2.0}, "num_tokens"),
    ({"num_tokens": True}, "num_tokens"),
    ({"prefix": torch.zeros(3, 2, dtype=torch.long)}, r"prefix must be \[B=4"),
    ({"prefix": torch.zeros(4, 3, dtype=torch.long), "num_tokens": 2}, "k <= num_tokens=2"),
    ({"prefix": torch.zeros(4, 2)}, "integer tensor"),
    ({"prefix": torch.full((4, 2), 10**6)}, r"prefix codes must lie in \[0, 32\)"),
])
def test_bad_arguments_fail_before_any_step(gpt, kw, match, monkeypatch):
    """generate and stream check num_tokens and prefix when called (stream: before the first next())."""
    monkeypatch.setattr(type(gpt), "prefill", lambda *a, **k: pytest.fail("ran the model"))
    with pytest.raises(ValueError, match=match):
        generate(gpt, LABELS, **kw)
    with pytest.raises(ValueError, match=match):
        stream(gpt, LABELS, **kw)
