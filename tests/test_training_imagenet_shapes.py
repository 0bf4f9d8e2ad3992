"""The paper's shapes end to end, on this machine: the `imagenet-b64` tokenizer and the `d16` (cond="adaln")
generator at their real widths and depths, two training steps of each on 256x256 JPEGs from an image folder
(multi-worker loader), each stopped after step 1, saved, resumed, then 64 tokens sampled with the KV cache and
decoded. Slow (minutes on 2 CPU cores, several GiB of memory): excluded by default, run with

    pytest -m slow -s tests/test_training_imagenet_shapes.py

It prints one line `IMAGENET-SHAPES {json}` with parameter counts, step times, peak memory and the FLOPs of one
training step per image (the numbers in docs/training.md, "At ImageNet shapes")."""

import json
import resource
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from spectralar.models.config import training_preset
from spectralar.models.discriminator import PatchDiscriminator
from spectralar.pretrained import load_model, load_pretrained
from spectralar.training import TrainOptions, train
from spectralar.training.stages import CriticLoss, GeneratorLoss, TokenizerLoss

BATCH = 2


def image_folder(root, classes=2, per_class=4, seed=0):
    """JPEGs of assorted sizes (resized and center-cropped to 256 by the loader): smooth colour fields plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(256, 360, 2)
            base = rng.random((4, 4, 3)) * 255
            img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((int(w), int(h)), Image.BICUBIC), float)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def step_seconds(out, stage):
    rows = [json.loads(line) for line in (out / f"{stage}_log.jsonl").read_text().splitlines()]
    return [round(1 / r["steps_per_s"], 2) for r in rows if r["split"] == "train"]


def train_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.slow
def test_imagenet_shapes_train_resume_sample(tmp_path):
    data = image_folder(tmp_path / "images")
    out = tmp_path / "run"
    common = {"data": str(data), "out": out, "steps": 2, "batch_size": BATCH, "num_workers": 2, "val_size": 0,
              "log_every": 1, "warmup": 1}
    report = {"batch": BATCH, "threads": torch.get_num_threads()}
    # the discriminator (adv_weight 0.1 in the preset) from step 1 on instead of 20000, so it trains here
    tok_cfg = {"adv_start": 1, "ema_decay": 0.9999}
    t = time.time()
    train(TrainOptions(stage="tokenizer", preset="imagenet-b64", overrides=tok_cfg, stop_at=1, **common))
    train(TrainOptions(stage="tokenizer", preset="imagenet-b64", resume=True, **common))
    report["tokenizer_wall_s"] = round(time.time() - t, 1)
    report["tokenizer_step_s"] = step_seconds(out, "tokenizer")
    report["peak_rss_gib_after_tokenizer"] = round(peak_rss_gib(), 2)
    t = time.time()
    train(TrainOptions(stage="generator", preset="d16", overrides={"ema_decay": 0.9999}, stop_at=1, **common))
    train(TrainOptions(stage="generator", preset="d16", resume=True, **common))
    report["generator_wall_s"] = round(time.time() - t, 1)
    report["generator_step_s"] = step_seconds(out, "generator")
    report["peak_rss_gib_after_generator"] = round(peak_rss_gib(), 2)

    tok, gen = load_pretrained(out)  # the EMA weights
    assert tok.config.image_size == 256 and tok.config.num_tokens == 64 and tok.config.width == 768
    assert gen.config.cond == "adaln" and gen.config.width == 1024 and gen.config.depth == 16
    disc = PatchDiscriminator.from_config(tok.config)
    report["params"] = {"tokenizer": sum(p.numel() for p in tok.parameters()),
                        "discriminator": sum(p.numel() for p in disc.parameters()),
                        "generator": sum(p.numel() for p in gen.parameters()),
                        "generator_classes": gen.config.num_classes}
    t = time.time()
    labels = torch.tensor([0, 1])
    codes = gen.generate(labels, cfg_scale=2.0, kv_cache=True, generator=torch.Generator().manual_seed(0))
    images = tok.decode(codes)
    report["sample_s"] = round(time.time() - t, 2)
    assert codes.shape == (2, 64) and images.shape == (2, 3, 256, 256) and torch.isfinite(images).all()

    # FLOPs of one training step (forward + backward) per image, counted on the real modules at batch BATCH
    x = torch.rand(BATCH, 3, 256, 256) * 2 - 1
    tok.train()
    tok_loss, critic = TokenizerLoss(tok, training_preset("tokenizer", "imagenet-b64"), disc), CriticLoss(disc)
    n_tok = torch.full((BATCH,), 64)

    def tok_step():
        res = tok_loss(x, labels, n_tok, step=10**9)  # adversarial term on (the discriminator's forward included)
        res["loss"].backward()
        critic(res["target"], res["recon"].detach()).backward()

    codes_batch = torch.randint(0, 4096, (BATCH, 64))

    def gen_step():
        GeneratorLoss(gen.train())(codes_batch, labels, torch.zeros(BATCH, dtype=torch.bool), 0)["loss"].backward()

    report["train_flops_per_image"] = {"tokenizer_with_disc": train_flops(tok_step) // BATCH,
                                       "generator": train_flops(gen_step) // BATCH}
    print("IMAGENET-SHAPES " + json.dumps(report))
    assert load_model(out / "generator", "generator").config.num_tokens == 64
