import dataclasses

import pytest
import torch

from spectralar.config import preset
from spectralar.generator import SpectralGPT


@pytest.fixture
def gpt():
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("generator", "micro"), num_tokens=6, depth=2)
    return SpectralGPT(cfg).eval()


def test_cached_logits_equal_uncached_forward(gpt):
    labels = torch.tensor([0, 2, 1])
    g = torch.Generator().manual_seed(5)
    codes, logits = gpt.generate(labels, kv_cache=True, generator=g, return_logits=True)
    full = gpt(labels, codes[:, :-1])  # uncached forward on the same prefix
    torch.testing.assert_close(logits, full.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_same_seed_same_codes_with_and_without_cache(gpt, cfg_scale):
    labels = torch.tensor([0, 1, 2, 2, 1])
    a = gpt.generate(labels, cfg_scale=cfg_scale, kv_cache=True, generator=torch.Generator().manual_seed(7))
    b = gpt.generate(labels, cfg_scale=cfg_scale, kv_cache=False, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = gpt.generate(labels, cfg_scale=cfg_scale, kv_cache=True, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


def test_cfg_mixes_conditional_and_null_logits(gpt):
    labels = torch.tensor([0, 1])
    s = 3.0
    codes, logits = gpt.generate(labels, cfg_scale=s, generator=torch.Generator().manual_seed(1), return_logits=True)
    cond = gpt(labels, codes[:, :-1]).float()
    uncond = gpt(torch.full_like(labels, gpt.null_class), codes[:, :-1]).float()
    torch.testing.assert_close(logits, uncond + s * (cond - uncond), atol=1e-4, rtol=1e-4)
    # cfg_scale = 1 is plain conditional sampling
    codes1, logits1 = gpt.generate(labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(1),
                                   return_logits=True)
    torch.testing.assert_close(logits1, gpt(labels, codes1[:, :-1]).float(), atol=1e-5, rtol=1e-5)


def test_top_k_1_is_greedy(gpt):
    labels = torch.tensor([0, 1, 2])
    greedy, logits = gpt.generate(labels, temperature=0, return_logits=True)
    assert torch.equal(greedy, logits.argmax(-1))
    for seed in range(3):
        topk1 = gpt.generate(labels, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(topk1, greedy)
    tiny_p = gpt.generate(labels, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny_p, greedy)


def test_compiled_decode_step_matches_eager(gpt):
    # torch.compile of the decode step (Inductor's C++ backend here; CUDA graphs on a GPU): same codes, same
    # logits to fp32 rounding, and a second call reuses the compiled step and caches instead of recompiling.
    labels = torch.tensor([0, 2, 1])
    for cfg_scale in (1.0, 2.0):
        kw = {"cfg_scale": cfg_scale, "return_logits": True}
        ref, ref_logits = gpt.generate(labels, generator=torch.Generator().manual_seed(3), **kw)
        for _ in range(2):
            got, logits = gpt.generate(labels, generator=torch.Generator().manual_seed(3), compile=True, **kw)
            assert torch.equal(got, ref)
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        state = gpt._compiled_decode
        gpt.generate(labels, cfg_scale=cfg_scale, compile=True)
        assert gpt._compiled_decode is state  # same batch, dtype, device: nothing rebuilt
    with pytest.raises(ValueError, match="kv_cache=True"):
        gpt.generate(labels, kv_cache=False, compile=True)


@pytest.mark.gpu
def test_compiled_decode_step_cuda_graphs():
    # On CUDA compile=True means CUDA graphs: the codes must still equal the eager cached sampler's, call after
    # call (graph replays), and the logits returned for every step must survive later replays.
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = SpectralGPT(preset("generator", "fmnist")).eval()
    labels = torch.arange(8, device="cuda") % model.config.num_classes
    kw = {"cfg_scale": 2.0, "return_logits": True}
    ref, ref_logits = model.generate(labels, generator=torch.Generator("cuda").manual_seed(1), **kw)
    for _ in range(3):
        got, logits = model.generate(labels, generator=torch.Generator("cuda").manual_seed(1), compile=True, **kw)
        assert torch.equal(got, ref)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_loss_and_shapes(gpt):
    codes = torch.randint(0, gpt.config.codebook_size, (4, gpt.config.num_tokens))
    labels = torch.tensor([0, 1, 2, 0])
    logits = gpt(labels, codes[:, :-1])
    assert logits.shape == (4, gpt.config.num_tokens, gpt.config.codebook_size)
    gpt.train()
    loss = gpt.loss(labels, codes)
    loss.backward()
    assert torch.isfinite(loss) and gpt.tok_emb.weight.grad is not None


@pytest.mark.parametrize("kw, match", [
    ({"labels": torch.tensor([3])}, "class id 3"),
    ({"labels": torch.tensor([-1])}, "class id -1"),
    ({"labels": torch.tensor([0.5])}, "integer"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": -1.0}, "temperature"),
    ({"cfg_scale": -2.0}, "cfg_scale"),
])
def test_bad_sampling_arguments(gpt, kw, match):
    args = {"labels": torch.tensor([0, 1])} | kw
    with pytest.raises(ValueError, match=match):
        gpt.generate(**args)


def test_cfg_needs_null_class():
    cfg = dataclasses.replace(preset("generator", "micro"), class_dropout=0.0)
    with pytest.raises(ValueError, match="null class"):
        SpectralGPT(cfg).generate(torch.tensor([0]), cfg_scale=2.0)


def test_d16_parameter_count():
    with torch.device("meta"):
        model = SpectralGPT(preset("generator", "d16"))
    n = sum(p.numel() for p in model.parameters())
    # 16 blocks x 12.6 M + embeddings/head of 4096 codes and 1001 classes: ~0.2 B (exact count in docs)
    assert n == 16 * (12 * 1024 * 1024 + 13 * 1024) + 4096 * 1024 * 2 + 1001 * 1024 + 64 * 1024 + 2 * 1024
