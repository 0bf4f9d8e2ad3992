"""The sampling library: one rule for the sampling arguments (`SamplingParams`, used by the model and the command
lines alike), and a batch loop whose samples depend on the seed and the batch size, not on how many processes share
the work."""

import argparse
import dataclasses

import pytest
import torch

from spectralar import cli, sampling
from spectralar.models.config import preset
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.sampling import Samples, SamplingParams, generate, sample_batches, sample_codes

BAD = [("cfg_scale", "-1"), ("cfg_scale", "inf"), ("cfg_scale", "nan"), ("temperature", "-0.5"),
       ("temperature", "inf"), ("top_k", "0"), ("top_p", "0"), ("top_p", "1.5"), ("top_p", "nan")]


@pytest.mark.parametrize("name, text", BAD)
def test_one_rule_for_model_and_flags(name, text):
    """The flag type, SamplingParams and the model's generate() refuse the same value with the same words."""
    value = int(text) if name == "top_k" else float(text)
    with pytest.raises(ValueError, match=name) as lib:
        SamplingParams(**{name: value})
    with pytest.raises(argparse.ArgumentTypeError) as flag:
        getattr(cli, name)(text)
    assert str(lib.value) in str(flag.value)
    gpt = SpectralGPT(preset("generator", "micro"))
    with pytest.raises(ValueError, match=name):
        gpt.generate(torch.tensor([0]), **{name: value})


@pytest.mark.parametrize("name, text", [("cfg_scale", "0"), ("cfg_scale", "1"), ("temperature", "0"), ("top_k", "1"),
                                        ("top_p", "1")])
def test_edge_values_pass(name, text):
    assert getattr(cli, name)(text) == float(text)


def test_params_are_frozen_and_canonical():
    """One value per setting: 2 and 2.0 (and top_k 3.0 and 3) are the same params; a field cannot be changed in place
    (dataclasses.replace checks the new value)."""
    assert SamplingParams(2, 1, 3.0) == SamplingParams(2.0, 1.0, 3)
    assert type(SamplingParams(top_k=3.0).top_k) is int
    p = SamplingParams(cfg_scale=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.cfg_scale = -1.0
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(p, top_p=0.0)
    for bad in ("2", True, None):
        with pytest.raises(ValueError, match="cfg_scale must be a number"):
            SamplingParams(cfg_scale=bad)
    assert p.guided and not SamplingParams().guided


def test_compile_needs_the_kv_cache(models):
    with pytest.raises(ValueError, match="kv_cache=True"):
        generate(models[1], torch.tensor([0]), kv_cache=False, compile=True)


def test_generate_takes_params_not_loose_arguments(models):
    """`sampling.generate` with a SamplingParams is what the model's `generate` delegates to: the same codes."""
    gen = models[1]
    labels = torch.tensor([0, 1, 2])
    a = generate(gen, labels, SamplingParams(2.0, 0.8, 8, 0.9), generator=torch.Generator().manual_seed(1))
    b = gen.generate(labels, 2.0, 0.8, 8, 0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="SamplingParams"):
        generate(gen, labels, {"cfg_scale": 2.0})


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tok = SpectralTokenizer(preset("tokenizer", "micro")).eval()
    gen = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=4, codebook_size=32)).eval()
    return tok, gen


def test_ranks_split_batches_and_their_union_is_one_process(models):
    """Batch c runs on rank c % world with its own seed: three ranks' parts, merged, are one process's run."""
    tok, gen = models
    labels = torch.arange(3).repeat_interleave(5)  # 15 labels, batches of 4: indices 0..3
    kw = {"batch_size": 4, "seed": 7, "params": SamplingParams(cfg_scale=2.0, temperature=1.0, top_k=8)}
    one = sample_batches(tok, gen, labels, **kw)
    parts = [sample_batches(tok, gen, labels, rank=r, world=3, **kw) for r in range(3)]
    assert [sorted(p.codes) for p in parts] == [[0, 3], [1], [2]]
    merged = Samples.merge(parts)
    assert torch.equal(merged.all_codes(), one.all_codes()) and merged.all_codes().shape == (15, 4)
    assert torch.equal(merged.all_images(), one.all_images()) and merged.tokens == one.tokens == 60
    assert torch.equal(sample_codes(gen, labels, **kw), one.all_codes())
    other = sample_batches(tok, gen, labels, **(kw | {"seed": 8}))
    assert not torch.equal(other.all_codes(), one.all_codes())  # the seed matters


def test_batch_loop_checks_before_sampling(models, monkeypatch):
    tok, gen = models
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(ValueError, match="batch_size"):
        sample_batches(tok, gen, torch.tensor([0]), batch_size=0)
    with pytest.raises(ValueError, match="num_tokens"):
        sample_batches(tok, gen, torch.tensor([0]), batch_size=1, num_tokens=5)
    with pytest.raises(ValueError, match="class id 7"):  # the last batch's label, refused before the first batch
        sample_batches(tok, gen, torch.tensor([0, 1, 7]), batch_size=1)
