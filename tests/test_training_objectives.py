"""The training library's objectives at micro scale: the adversarial tokenizer term and its discriminator, EMA
weights (saved, resumed, and what loading returns), gradient accumulation, and the library's own API."""

import json
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from safetensors.torch import load_file

import spectralar.training.stages as stages
from spectralar.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from spectralar.models.config import preset
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.pretrained import load_model
from spectralar.training import TrainOptions, parse_overrides, train

MICRO = {"preset": "micro", "log_every": 1, "threads": 1, "val_size": 0, "batch_size": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def tok_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train(TrainOptions(stage="tokenizer", out=out, data=str(data), steps=3, **MICRO))
    return out


def rows(out, stage):
    return [json.loads(line) for line in (Path(out) / f"{stage}_log.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


def run(stage, out, data, steps=4, **kw):
    opts = {**MICRO, **kw}
    train(TrainOptions(stage=stage, out=out, data=str(data), steps=steps, **opts))
    return Path(out) / stage


# ---- adversarial objective -----------------------------------------------------------------------------

def test_no_discriminator_without_adv_weight(data, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a discriminator was built with adv_weight = 0")

    monkeypatch.setattr(stages, "PatchDiscriminator", boom)
    ck = run("tokenizer", tmp_path, data, steps=2)
    assert not any(k.startswith("disc") for k in load_file(str(ck / "train.safetensors")))
    assert "disc_optimizer" not in read_meta(ck)["train"]
    assert all("d_loss" not in r and "g_loss" not in r for r in rows(tmp_path, "tokenizer"))


def test_adversarial_term_trains_and_enters_the_loss(data, tmp_path):
    """With adv_weight > 0 the discriminator is built, trains from adv_start on (its hinge loss logged, its
    weights moving), the tokenizer's total is recon + vq + adv_weight x g_loss, and training differs from a run
    without it."""
    plain = run("tokenizer", tmp_path / "plain", data, steps=4)
    adv = {"overrides": {"adv_weight": 0.5, "adv_start": 2}}
    run("tokenizer", tmp_path / "adv", data, steps=4, stop_at=2, **adv)

    def disc_state(ck):
        return {k: v for k, v in load_file(str(ck / "train.safetensors")).items() if k.startswith("disc.")}

    before = disc_state(tmp_path / "adv" / "tokenizer")  # not trained yet at adv_start
    assert before and "disc_optimizer" in read_meta(tmp_path / "adv" / "tokenizer")["train"]
    ck = run("tokenizer", tmp_path / "adv", data, steps=4, resume=True)
    after = disc_state(ck)
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in after)
    log = {r["step"]: r for r in rows(tmp_path / "adv", "tokenizer")}
    ref = {r["step"]: r for r in rows(tmp_path / "plain", "tokenizer")}
    for s in (1, 2):  # before adv_start: the plain run, bit for bit, and no discriminator step
        assert "d_loss" not in log[s] and log[s]["loss"] == ref[s]["loss"]
    for s in (3, 4):
        r = log[s]
        assert 0 < r["d_loss"] < 2 and r["adv_weight"] == 0.5
        assert r["loss"] == pytest.approx(r["recon_loss"] + r["vq_loss"] + 0.5 * r["g_loss"], rel=1e-5)
    assert log[4]["loss"] != ref[4]["loss"]
    w_adv, w_plain = load_weights(ck), load_weights(plain)
    assert any(not torch.equal(w_adv[k], w_plain[k]) for k in w_adv)


def test_adaptive_weight_is_applied(data, tmp_path):
    run("tokenizer", tmp_path, data, steps=2, overrides={"adv_weight": 0.5, "adv_adaptive": True})
    for r in rows(tmp_path, "tokenizer"):
        assert r["adv_weight"] != 0.5 and r["adv_weight"] > 0  # 0.5 x |grad rec| / |grad adv| at to_pixels
        assert r["loss"] == pytest.approx(r["recon_loss"] + r["vq_loss"] + r["adv_weight"] * r["g_loss"], rel=1e-4)


# ---- EMA -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["tokenizer", "generator"])
def test_ema_saved_resumed_exactly_and_loaded(stage, data, tok_run, tmp_path):
    kw = {"overrides": {"ema_decay": 0.8}}
    if stage == "generator":
        kw["tokenizer"] = str(tok_run / "tokenizer")
    full = run(stage, tmp_path / "full", data, steps=4, **kw)
    run(stage, tmp_path / "part", data, steps=4, stop_at=2, **kw)
    same = {k: v for k, v in kw.items() if k != "overrides"}
    part = run(stage, tmp_path / "part", data, steps=4, resume=True, **same)
    meta = read_meta(full)
    assert meta["ema"] and (full / "ema.safetensors").exists()
    raw, ema = load_weights(full, ema=False), load_weights(full)
    for a, b in ((raw, load_weights(part, ema=False)), (ema, load_weights(part))):
        assert all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly, the average included
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert moved  # the average lags the trained weights
    model = load_model(full, stage)  # what sampling and evaluation load: the EMA weights
    sd = model.state_dict()
    assert all(torch.equal(sd[k], ema[k]) for k in moved)


def test_ema_is_the_average_of_the_trained_weights(data, tmp_path):
    """decay d over 2 steps from the initial weights w0: ema = d^2 w0 + d (1 - d) w1 + (1 - d) w2."""
    d = 0.8
    w = []
    for steps in (1, 2):
        ck = run("tokenizer", tmp_path / f"s{steps}", data, steps=steps, overrides={"ema_decay": d})
        w.append(load_weights(ck, ema=False))
    ema = load_weights(tmp_path / "s2" / "tokenizer")
    torch.manual_seed(0)
    w0 = SpectralTokenizer(preset("tokenizer", "micro")).state_dict()
    k = "to_pixels.weight"
    want = (w0[k] * d + (1 - d) * w[0][k]) * d + (1 - d) * w[1][k]
    torch.testing.assert_close(ema[k], want, rtol=1e-5, atol=1e-7)


def test_checkpoint_ema_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    avg = {k: v + 1 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "ck", "tokenizer", model, {}, ema=avg)
    assert torch.equal(load_weights(tmp_path / "ck")["weight"], avg["weight"])
    assert torch.equal(load_weights(tmp_path / "ck", ema=False)["weight"], model.weight.detach())
    with pytest.raises(ValueError, match="EMA state"):
        save_checkpoint(tmp_path / "bad", "tokenizer", model, {}, ema={"weight": avg["weight"]})
    (tmp_path / "ck" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors is missing"):
        load_weights(tmp_path / "ck")


# ---- gradient accumulation --------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["tokenizer", "generator"])
def test_accumulation_equals_the_large_batch(stage, data, tok_run, tmp_path):
    """accum 4 x batch 4 = batch 16: the same samples and per-sample draws, the same losses and weights within
    float32 summation order (the discriminator's included)."""
    if stage == "tokenizer":
        kw = {"overrides": {"restart_every": 0, "adv_weight": 0.5, "ema_decay": 0.9}}
    else:
        kw = {"overrides": {"class_dropout": 0.5}, "tokenizer": str(tok_run / "tokenizer")}
    big = run(stage, tmp_path / "big", data, steps=5, batch_size=16, **kw)
    acc = run(stage, tmp_path / "acc", data, steps=5, batch_size=4, accum=4, **kw)
    lb, la = rows(tmp_path / "big", stage), rows(tmp_path / "acc", stage)
    assert [r["step"] for r in lb] == [r["step"] for r in la] == [1, 2, 3, 4, 5]
    for rb, ra in zip(lb, la):
        for key in ("loss", "d_loss", "g_loss", "grad_norm"):  # grad_norm: the loss scaling (AdamW hides it)
            if key in rb:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (rb["step"], key)
    for ema in (False, True):
        wb, wa = load_weights(big, ema=ema), load_weights(acc, ema=ema)
        for k in wb:
            if wb[k].is_floating_point() and not k.startswith("quantizer.recent"):
                torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=f"{k} (ema={ema})")
    if stage == "tokenizer":
        db, da = (load_file(str(p / "train.safetensors")) for p in (big, acc))
        for k in (k for k in db if k.startswith("disc.")):
            torch.testing.assert_close(da[k], db[k], rtol=1e-4, atol=1e-6, msg=k)


def test_resume_needs_the_same_accumulation(data, tmp_path):
    run("tokenizer", tmp_path, data, steps=4, stop_at=2, batch_size=8, accum=2)
    with pytest.raises(ValueError, match="`accum` 2, this run has 1"):
        run("tokenizer", tmp_path, data, steps=4, resume=True, batch_size=8)


# ---- the library API ---------------------------------------------------------------------------------------

def test_options_are_checked_before_work(tmp_path):
    for kw, match in (({"steps": 0}, "`steps` must be >= 1"), ({"accum": 0}, "`accum` must be >= 1"),
                      ({"stage": "vae"}, "`stage` must be one of"), ({"save_dtype": "int8"}, "`save_dtype`"),
                      ({"resume": True, "overwrite": True}, "pass one of them"),
                      ({"seed": 10**20}, r"`seed` must be an integer in \[0, 4294967295\]")):
        with pytest.raises(ValueError, match=match):
            train(TrainOptions(**{"stage": "tokenizer", "out": tmp_path / "x", **kw}))
    assert not (tmp_path / "x").exists()
    cfg = preset("tokenizer", "micro")
    assert parse_overrides(cfg, ["width=48", "adv_adaptive=yes", "windows=1,2,4"]) == {
        "width": 48, "adv_adaptive": True, "windows": [1, 2, 4]}
    assert cfg.width == 32  # the preset is read, never written
