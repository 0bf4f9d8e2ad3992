"""The optional LPIPS-style perceptual term (models/perceptual.py): a torchvision-layout VGG16 state dict loads
from safetensors or a torch file, bad files are refused naming the path, the distance behaves as a distance with
gradients to the input only, and the tokenizer's training adds it (off by default, refused without weights)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from safetensors.torch import load_file, save_file

import spectralar.training.stages as stages
from spectralar.checkpoint import CheckpointError, read_meta
from spectralar.models.config import preset, training_preset, validate_training
from spectralar.models.perceptual import PerceptualDistance, load_vgg16_state, vgg16_features
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.train import main as train_main
from spectralar.training import TrainOptions, train

MICRO = {"preset": "micro", "log_every": 1, "threads": 1, "val_size": 0, "batch_size": 4}


class Payload:
    """A pickled object that is not a tensor: `torch.load(weights_only=True)` must refuse it."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random VGG16 state dict as torchvision saves it (`features.*` plus `classifier.*` keys) in a torch file,
    and the same features without the prefix in a safetensors file."""
    root = tmp_path_factory.mktemp("vgg")
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    torch.save({**state, "classifier.0.weight": torch.randn(8, 8), "classifier.0.bias": torch.randn(8)},
               root / "vgg16.pth")
    save_file({k.removeprefix("features."): v for k, v in state.items()}, str(root / "vgg16.safetensors"))
    return root, state


@pytest.fixture(scope="module")
def dist(weights):
    return PerceptualDistance.from_file(weights[0] / "vgg16.pth")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"), n_train=32, n_test=8)


def test_torchvision_layout_loads_from_both_formats(weights, dist):
    root, state = weights
    from_st = load_vgg16_state(root / "vgg16.safetensors")
    from_pt = load_vgg16_state(root / "vgg16.pth")
    assert len(from_st) == 26 and from_st.keys() == from_pt.keys()  # 13 convs; classifier.* ignored
    for k, v in from_pt.items():
        assert torch.equal(v, state[f"features.{k}"]) and torch.equal(from_st[k], v)
    assert sum(v.numel() for v in from_pt.values()) == 14_714_688  # torchvision's vgg16().features
    assert torch.equal(dist.features[28].weight, state["features.28.weight"])
    assert all(not p.requires_grad for p in dist.parameters()) and not dist.training
    assert not dist.train().training  # a fixed metric stays in eval mode


def test_distance_properties_and_gradient(dist):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    b = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    assert torch.equal(dist(a, a), torch.zeros(3))
    d = dist(a, b)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(dist(b, a), d)
    rgb = dist(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1))  # grayscale is repeated to three channels
    torch.testing.assert_close(rgb, d)
    a = a.clone().requires_grad_()
    dist(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and torch.isfinite(a.grad).all()
    assert all(p.grad is None for p in dist.parameters())
    with pytest.raises(ValueError, match="at least 16 px"):
        dist(a[..., :8, :8], b[..., :8, :8])


def test_bad_files_are_refused_naming_the_path(weights, tmp_path):
    root, state = weights
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((root / "vgg16.safetensors").read_bytes()[:5000])
    pickled = tmp_path / "code.pth"
    torch.save({"features.0.weight": Payload()}, pickled)
    shape = tmp_path / "shape.pth"
    torch.save({**state, "features.0.weight": torch.zeros(64, 1, 3, 3)}, shape)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("features.28.")}, str(partial))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    txt = tmp_path / "vgg16.txt"
    txt.write_text("weights")
    cases = [(tmp_path / "missing.pth", "no such file"), (trunc, "cannot read it"), (pickled, "cannot read it"),
             (shape, r"features.0.weight must be a float tensor of shape \(64, 3, 3, 3\), got \(64, 1, 3, 3\)"),
             (partial, "2 of VGG16's 26 tensors are missing"), (tensor, "holds a Tensor"), (txt, "expected a")]
    for path, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            load_vgg16_state(path)
        assert str(path) in str(e.value)


def test_off_by_default_and_refused_without_weights(data, tmp_path, capsys, monkeypatch):
    t = training_preset("tokenizer", "fmnist")
    assert t.perceptual_weight == 0 and t.perceptual_backbone == ""
    with pytest.raises(ValueError, match="needs image_size >= 16"):
        validate_training("tokenizer", {"perceptual_weight": 1.0, "perceptual_backbone": "x.pth"}, image_size=8)

    def boom(*a, **k):
        raise AssertionError("a model was built before the perceptual settings were checked")

    monkeypatch.setattr(stages, "build_tokenizer", boom)
    base = ["tokenizer", "--preset", "micro", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2",
            "--set", "perceptual_weight=1"]
    missing = tmp_path / "none.pth"
    for extra, needle in (([], "perceptual_weight=1.0 needs perceptual_backbone"),
                          (["--set", f"perceptual_backbone={missing}"], f"{missing}: no such file")):
        assert train_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_loss_module_holds_only_the_tokenizer(dist):
    model = SpectralTokenizer(preset("tokenizer", "micro"))
    loss = stages.TokenizerLoss(model, training_preset("tokenizer", "micro"), None, dist)
    assert [id(p) for p in loss.parameters()] == [id(p) for p in model.parameters()]  # nothing for DDP to sync
    assert all(k.startswith("model.") for k in loss.state_dict())


def rows(out):
    return {r["step"]: r for r in map(json.loads, (Path(out) / "tokenizer_log.jsonl").read_text().splitlines())
            if r["split"] == "train"}


def test_training_adds_the_term(weights, data, tmp_path):
    root, state = weights
    vgg = tmp_path / "vgg16.pth"
    shutil.copy(root / "vgg16.pth", vgg)
    kw = {**MICRO, "data": str(data), "steps": 2, "stage": "tokenizer"}
    train(TrainOptions(out=tmp_path / "plain", **kw))
    on = {"overrides": {"perceptual_weight": 0.5, "perceptual_backbone": str(vgg)}}
    train(TrainOptions(out=tmp_path / "p", stop_at=1, **on, **kw))
    torch.save({**state, "features.0.bias": state["features.0.bias"] + 1}, vgg)  # other weights, same path
    with pytest.raises(CheckpointError, match="other perceptual backbone weights"):
        train(TrainOptions(out=tmp_path / "p", resume=True, **kw))
    shutil.copy(root / "vgg16.pth", vgg)
    train(TrainOptions(out=tmp_path / "p", resume=True, **kw))
    plain, log = rows(tmp_path / "plain"), rows(tmp_path / "p")
    assert all("perceptual_loss" not in r for r in plain.values())
    r, r0 = log[1], plain[1]  # same weights, data and draws at step 1: only the new term differs
    assert r["recon_loss"] == r0["recon_loss"] and r["perceptual_loss"] > 0
    assert r["loss"] == pytest.approx(r0["loss"] + 0.5 * r["perceptual_loss"], rel=1e-5)
    assert log[2]["loss"] != plain[2]["loss"] and log[2]["perceptual_loss"] > 0
    ck = tmp_path / "p" / "tokenizer"
    assert len(read_meta(ck)["train"]["perceptual_sha1"]) == 40
    for f in ("model.safetensors", "train.safetensors"):  # the frozen backbone never enters a checkpoint
        assert not any("features" in k for k in load_file(str(ck / f)))
