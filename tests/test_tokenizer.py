import dataclasses

import pytest
import torch

from spectralar.models.config import TokenizerConfig, preset
from spectralar.models.tokenizer import SpectralTokenizer


def tiny_config(**kw):
    cfg = dataclasses.replace(preset("tokenizer", "micro"), **kw)
    return cfg


@pytest.fixture
def tok():
    torch.manual_seed(0)
    return SpectralTokenizer(tiny_config()).eval()


def images(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 32, 32, generator=g) * 2 - 1


def test_decoder_prefix_is_causal_bitwise(tok):
    N, K = tok.config.num_tokens, tok.config.codebook_size
    codes = torch.randint(0, K, (4, N), generator=torch.Generator().manual_seed(1))
    for i in range(1, N + 1):
        other = codes.clone()
        other[:, i:] = (other[:, i:] + 1 + torch.arange(N - i)) % K
        if i < N:
            assert not torch.equal(other, codes)
        assert torch.equal(tok.decode(codes, num_tokens=i), tok.decode(other, num_tokens=i))
    # and the suffix does matter once it is inside the prefix
    other = codes.clone()
    other[:, -1] = (other[:, -1] + 1) % K
    assert not torch.equal(tok.decode(codes), tok.decode(other))


def test_encoder_query_i_ignores_later_queries():
    torch.manual_seed(0)
    tok = SpectralTokenizer(tiny_config(enc_depth=2))
    x = images(2)
    N = tok.config.num_tokens
    for i in range(N - 1):
        queries = tok.queries.detach().clone().requires_grad_(True)
        tok.queries = torch.nn.Parameter(queries)
        z = tok.encode_continuous(x)
        g = torch.autograd.grad(z[:, i].sum(), tok.queries)[0]
        assert g[:, i + 1:].abs().max() == 0, f"query {i} depends on later queries"
        assert g[:, : i + 1].abs().max() > 0


def test_decode_progressive_matches_decode(tok):
    codes = tok.encode(images(3))
    prog = tok.decode_progressive(codes)
    N = tok.config.num_tokens
    assert prog.shape == (3, N, 1, 32, 32)
    for i in range(1, N + 1):
        torch.testing.assert_close(prog[:, i - 1], tok.decode(codes, num_tokens=i), atol=1e-5, rtol=1e-5)


def test_encode_shapes_and_brute_force_vq(tok):
    x = images(5)
    codes = tok.encode(x)
    assert codes.shape == (5, tok.config.num_tokens) and codes.dtype == torch.int64
    z = torch.nn.functional.normalize(tok.encode_continuous(x).double(), dim=-1)
    cb = torch.nn.functional.normalize(tok.quantizer.codebook.double(), dim=-1)
    sim = z @ cb.T  # brute force: nearest by cosine
    best = sim.max(-1).values
    chosen = sim.gather(-1, codes[..., None]).squeeze(-1)
    assert torch.allclose(chosen, best, atol=1e-6)
    assert tok.decode(codes).shape == x.shape


def test_dead_code_restart_revives_codes():
    torch.manual_seed(0)
    tok = SpectralTokenizer(tiny_config(restart_every=3))
    vq = tok.quantizer
    vq.train()
    z = torch.randn(64, 4, vq.codebook.shape[1])
    vq.codebook.data[:] = torch.nn.functional.normalize(torch.randn_like(vq.codebook), dim=-1)
    vq.codebook.data[1:] = vq.codebook.data[0] * -1  # all but code 0 point away from everything
    z = vq.codebook.data[0] + 0.01 * torch.randn(64, 4, vq.codebook.shape[1])
    _, idx, stats = vq(z)
    assert stats["codes_used"] == 1
    for _ in range(2):
        vq(z)
        assert vq.after_optimizer_step() == 0  # steps 1 and 2 of restart_every=3
    assert vq.after_optimizer_step() == vq.codebook.shape[0] - 1  # step 3: every code but 0 was unused
    _, idx, stats = vq(z + 0.3 * torch.randn_like(z))
    assert stats["codes_used"] > 4, "dead codes were not restarted from encoder outputs"


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    tok = SpectralTokenizer(tiny_config()).train()
    # smooth images (a few random blobs) that a 4-token tokenizer can actually fit
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    c = torch.rand(16, 2, generator=g) * 24 + 4
    x = (torch.exp(-((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2) / 40) * 2 - 1)[:, None]
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = tok(x, num_tokens=tok.config.num_tokens)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_forward_regresses_the_subimage(tok):
    from spectralar_kernels import spectral_subimages

    x = images(4)
    out = tok(x, num_tokens=torch.tensor([1, 2, 3, 4]))
    w = torch.tensor(tok.config.windows)[torch.tensor([0, 1, 2, 3])]
    torch.testing.assert_close(out["target"], spectral_subimages(x, w))
    assert out["recon"].shape == x.shape


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "float"),
    (torch.zeros(2, 3, 32, 32), r"\[B, 1, 32, 32\]"),
    (torch.zeros(2, 1, 28, 28), r"\[B, 1, 32, 32\]"),
    (torch.full((2, 1, 32, 32), 255.0), r"\[-1, 1\]"),
])
def test_bad_images(tok, bad, match):
    with pytest.raises(ValueError, match=match):
        tok.encode(bad)


def test_bad_codes_and_prefix(tok):
    N, K = tok.config.num_tokens, tok.config.codebook_size
    good = torch.zeros(2, N, dtype=torch.long)
    with pytest.raises(ValueError, match="codes must lie"):
        tok.decode(torch.full((2, N), K))
    with pytest.raises(ValueError, match="codes must lie"):
        tok.decode(torch.full((2, N), -1))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        tok.decode(torch.zeros(2, N + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        tok.decode(good.float())
    for pl in (0, N + 1, torch.tensor([1, N + 1])):
        with pytest.raises(ValueError, match="num_tokens"):
            tok.decode(good, num_tokens=pl)


def test_energy_mapping_needs_windows():
    with pytest.raises(ValueError, match="energy"):
        SpectralTokenizer(tiny_config(mapping="energy"))


def test_parameter_counts():
    n_fmnist = sum(p.numel() for p in SpectralTokenizer(preset("tokenizer", "fmnist")).parameters())
    assert 1.0e6 < n_fmnist < 1.5e6  # a prototype of this size measured 1.24 M
    with torch.device("meta"):
        big = SpectralTokenizer(preset("tokenizer", "imagenet-b64"))
    n_big = sum(p.numel() for p in big.parameters())
    assert 1.6e8 < n_big < 1.9e8, n_big  # two ViT-B stacks of 12 blocks (~85 M each)
    assert isinstance(big.config, TokenizerConfig)


def test_config_is_never_written_to():
    """The windows a mapping gives go into the model's own copy of the config (what a checkpoint saves), not into
    the caller's object, which a second model built from it would otherwise silently share."""
    cfg = tiny_config(mapping="uniform")
    tok = SpectralTokenizer(cfg)
    assert cfg.windows == [] and tok.config is not cfg
    assert tok.config.windows == [8, 16, 24, 32] and tok.windows.tolist() == [8, 16, 24, 32]
    assert dataclasses.replace(tok.config, windows=[]) == cfg  # nothing else differs
