"""The tokenizer kinds (spectral, raster, 1d) behind `TokenizerConfig.tokens`: each trains end to end through the one
trainer, round-trips a checkpoint, samples the same codes with and without the KV cache, and decodes prefixes as
its kind says; the default stays the spectral tokenizer every existing checkpoint holds."""

import dataclasses
import json

import pytest
import torch
from fakedata import fake_fmnist
from PIL import Image

from spectralar import evaluate, experiments, generate, reconstruct
from spectralar.checkpoint import save_checkpoint
from spectralar.data import FMNIST_CLASSES
from spectralar.models.config import preset, to_dict, validate_config
from spectralar.models.generator import SpectralGPT
from spectralar.models.kinds import QueryTokenizer, build_tokenizer
from spectralar.models.raster import RasterTokenizer
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.pretrained import PRETRAINED_DIR, load_model, load_pretrained
from spectralar.training import TrainOptions, train

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = [("spectral", 4), ("raster", 4), ("1d", 4), ("raster", 16)]  # micro preset: 4x4 grid of 8x8 patches


def micro(kind, n, **kw):
    return dataclasses.replace(preset("tokenizer", "micro"), tokens=kind, num_tokens=n, **kw)


def images(B=3, seed=0):
    return torch.rand(B, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)



@pytest.mark.parametrize("kind, n", KINDS, ids=lambda v: str(v))
def test_each_kind_trains_round_trips_and_samples(kind, n, data, tmp_path):
    """A few steps of both stages through spectralar.training, the checkpoint loaded back as the same kind with the
    same outputs, sampling with and without the KV cache giving identical codes, and every prefix decoding."""
    common = {"data": str(data), "preset": "micro", "batch_size": 16, "val_size": 0, "threads": 1, "log_every": 1}
    train(TrainOptions(stage="tokenizer", out=tmp_path, steps=3, overrides={"tokens": kind, "num_tokens": n},
                       **common))
    train(TrainOptions(stage="generator", out=tmp_path, steps=2, **common))
    tok, gen = load_pretrained(tmp_path)
    assert type(tok) is {"spectral": SpectralTokenizer, "raster": RasterTokenizer, "1d": QueryTokenizer}[kind]
    assert tok.config.tokens == kind and gen.config.num_tokens == n
    assert bool(tok.config.windows) == (kind == "spectral")  # spectral windows belong to spectral tokens only
    x = images(4)
    again = load_model(tmp_path / "tokenizer", "tokenizer")
    codes = tok.encode(x)
    assert codes.shape == (4, n) and torch.equal(again.encode(x), codes)
    torch.testing.assert_close(again.decode(codes), tok.decode(codes), rtol=0, atol=0)
    labels = torch.tensor([0, 1, 2, 1])
    for cfg in (1.0, 2.0):
        cached = gen.generate(labels, cfg_scale=cfg, generator=torch.Generator().manual_seed(5))
        plain = gen.generate(labels, cfg_scale=cfg, kv_cache=False, generator=torch.Generator().manual_seed(5))
        assert torch.equal(cached, plain), cfg
    prog = tok.decode_progressive(cached)
    assert prog.shape == (4, n, 1, 32, 32) and torch.isfinite(prog).all()
    for k in (1, n // 2, n):
        torch.testing.assert_close(prog[:, k - 1], tok.decode(cached, num_tokens=k), atol=1e-5, rtol=1e-5)
    assert tok.prefix_meaning  # what the command lines print about a prefix of this kind


@pytest.mark.parametrize("kind, n", KINDS, ids=lambda v: str(v))
def test_prefix_ignores_the_tokens_after_it(kind, n):
    """Decoding k tokens of any kind reads codes 1..k only (the rest are absent), bit for bit."""
    torch.manual_seed(0)
    tok = build_tokenizer(micro(kind, n)).eval()
    K = tok.config.codebook_size
    codes = torch.randint(0, K, (3, n), generator=torch.Generator().manual_seed(1))
    for k in range(1, n):
        other = codes.clone()
        other[:, k:] = (other[:, k:] + 1) % K
        assert torch.equal(tok.decode(codes, num_tokens=k), tok.decode(other, num_tokens=k)), k
    other = codes.clone()
    other[:, -1] = (other[:, -1] + 1) % K
    assert not torch.equal(tok.decode(codes), tok.decode(other))


@pytest.mark.parametrize("kind, n", KINDS, ids=lambda v: str(v))
def test_every_parameter_is_trained(kind, n):
    """One training forward reaches every parameter (DistributedDataParallel refuses parameters without a
    gradient): the untrained 'absent' slot of the raster and 1d kinds is a constant, not a parameter."""
    torch.manual_seed(0)
    tok = build_tokenizer(micro(kind, n)).train()
    tok(images(4))["loss"].backward()
    missing = [name for name, p in tok.named_parameters() if p.grad is None]
    assert not missing, missing


def test_what_each_kind_trains_on():
    """spectral regresses the sub-image x_i of a drawn prefix; raster and 1d decode all N tokens and regress the
    image itself."""
    from spectralar_kernels import spectral_subimages

    x = images(6)
    torch.manual_seed(0)
    spectral = build_tokenizer(micro("spectral", 4)).train()
    out = spectral(x, num_tokens=torch.tensor([1, 2, 3, 4, 1, 2]))
    torch.testing.assert_close(out["target"], spectral_subimages(x, spectral.windows[out["num_tokens"] - 1]))
    for kind, n in KINDS[1:]:
        tok = build_tokenizer(micro(kind, n)).train()
        out = tok(x)
        assert torch.equal(out["num_tokens"], torch.full((6,), n)) and torch.equal(out["target"], x), kind


def test_raster_tokens_are_grid_cells_in_raster_order():
    """Token j of a raster tokenizer holds exactly the patches of grid cell j (row-major), and the decoder puts
    them back where they came from."""
    tok = build_tokenizer(dataclasses.replace(preset("tokenizer", "fmnist"), tokens="raster", num_tokens=16))
    grid, g = 32 // 4, tok.group  # 8x8 patches of 4 px, 2x2 patches per token cell
    assert (tok.side, g) == (4, 2)
    idx = torch.arange(grid * grid, dtype=torch.float)[None, :, None]  # feature = the patch's raster index
    cells = tok._to_cells(idx)  # [1, 16, 4]
    for j in range(16):
        r, c = divmod(j, 4)
        want = [(2 * r + a) * grid + 2 * c + b for a in range(2) for b in range(2)]
        assert cells[0, j].tolist() == want, j
    assert torch.equal(tok._from_cells(cells), idx)


def test_tokenizer_parameters_match_within_ten_percent():
    """The comparison's fairness at the preset it runs: every kind within +-10% of the others' parameters."""
    counts = {f"{k}-{n}": sum(p.numel() for p in build_tokenizer(dataclasses.replace(
        preset("tokenizer", "fmnist"), tokens=k, num_tokens=n)).parameters())
        for k, n in [("spectral", 16), ("raster", 16), ("1d", 16), ("raster", 64)]}
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


def test_existing_checkpoints_are_spectral():
    """A config.json without the field (every checkpoint before it, the bundled model's among them) is spectral."""
    tok = load_model(PRETRAINED_DIR / "fmnist" / "tokenizer", "tokenizer")
    assert type(tok) is SpectralTokenizer and tok.config.tokens == "spectral" and tok.nested
    old = {k: v for k, v in to_dict(preset("tokenizer", "fmnist")).items() if k != "tokens"}
    assert validate_config("tokenizer", old).tokens == "spectral"


@pytest.mark.parametrize("change, match", [
    ({"tokens": "zigzag"}, "tokens='zigzag' must be one of"),
    ({"tokens": "raster", "num_tokens": 8}, "num_tokens a square"),
    ({"tokens": "raster", "num_tokens": 9}, "num_tokens a square"),  # 3 does not divide the 4x4 patch grid
    ({"tokens": "1d", "windows": [8, 16, 24, 32]}, "windows=.* apply to tokens='spectral' only"),
    ({"tokens": "spectral", "num_tokens": 33}, "exceeds image_size"),
])
def test_bad_kind_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        validate_config("tokenizer", {**to_dict(preset("tokenizer", "micro")), **change})


def test_raster_allows_more_tokens_than_rows():
    """N is bounded by frequency rings for spectral tokens only: 64 raster tokens at 32x32 are 4x4-pixel cells."""
    cfg = validate_config("tokenizer", {**to_dict(preset("tokenizer", "fmnist")), "tokens": "raster",
                                        "num_tokens": 64})
    tok = build_tokenizer(cfg)
    assert tok.group == 1 and tok.encode(images(2)).shape == (2, 64)


@pytest.mark.parametrize("kind, n", [("raster", 16), ("1d", 4)])
def test_command_lines_work_on_every_kind(kind, n, data, tmp_path, capsys):
    """generate (with --progressive), reconstruct, evaluate reconstruct and the experiments on a run folder of a
    non-spectral kind; the prefix strip says what a prefix of that kind is."""
    torch.manual_seed(0)
    tok = build_tokenizer(micro(kind, n))
    gen = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=n, codebook_size=32,
                                          num_classes=10))
    run = tmp_path / "run"
    for stage, model in (("tokenizer", tok), ("generator", gen)):
        save_checkpoint(run / stage, stage, model, to_dict(model.config), step=1, train={"classes": FMNIST_CLASSES})
    cpu = ["--device", "cpu"]
    assert generate.main(["--checkpoint", str(run), "--classes", "0,1", "--num-per-class", "2", "--progressive",
                          "--out", str(tmp_path / "s.png"), *cpu]) == 0
    assert f"{kind} tokens: column k is decoded from" in capsys.readouterr().out
    assert Image.open(tmp_path / "s_progressive.png").size[0] == 3 * (n * 34 + 2)  # N columns, --scale 3
    Image.fromarray((torch.rand(32, 32) * 255).byte().numpy()).save(tmp_path / "in.png")
    assert reconstruct.main([str(tmp_path / "in.png"), "--checkpoint", str(run), "--out", str(tmp_path / "r.png"),
                             *cpu]) == 0
    assert f"{kind} tokens: the image after k tokens is" in capsys.readouterr().out
    assert evaluate.main(["reconstruct", "--checkpoint", str(run), "--data", str(data), "--num", "4",
                          "--out", str(tmp_path / "ev"), *cpu]) == 0
    assert experiments.main(["truncation", "--checkpoint", str(run), "--data", str(data), "--num", "4",
                             "--no-generation", "--out", str(tmp_path / "tr"), *cpu]) == 0
    assert experiments.main(["causality-probe", "--checkpoint", str(run), "--data", str(data), "--num-train", "25",
                             "--num-test", "10", "--out", str(tmp_path / "cp"), *cpu]) == 0
    probe = json.loads((tmp_path / "cp" / "causality_probe.json").read_text())
    assert set(probe["r2"]) == {f"{kind} tokens (continuous)", f"{kind} tokens (quantized)",
                                "spatial raster patches (PCA)"}  # no DCT bands without spectral windows
    trunc = json.loads((tmp_path / "tr" / "truncation.json").read_text())
    assert trunc["tokens"] == kind and trunc["reconstruction"]["psnr_subimage_vs_image"] == [None] * n
