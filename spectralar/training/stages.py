"""One setup per training stage: model, optimizer(s), data, loss step and validation, as a `Stage` record that
the loop in training/loop.py runs without knowing which stage it is.

tokenizer: images -> the nested spectral tokenizer's loss (reconstruction of the frequency-limited sub-image of a
  drawn number of tokens, VQ terms), plus, when `perceptual_weight` > 0, an LPIPS-style distance on the user's
  VGG16 weights, and when `adv_weight` > 0, a patch discriminator (its own critic step) and the adversarial term
  on the tokenizer's side from step `adv_start` on.
generator: the dataset encoded once by a trained tokenizer (cached in OUT/codes_train.safetensors) -> next-token
  cross-entropy with class dropout for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from spectralar_kernels.windows import DATA_MAPPINGS

from ..checkpoint import CheckpointError, publish, step_of
from ..data import DataError, collate, make_dataset
from ..evaluation.metrics import psnr
from ..models.config import preset, to_dict, validate_config
from ..models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from ..models.generator import SpectralGPT
from ..models.kinds import build_tokenizer
from ..models.perceptual import PerceptualDistance
from ..models.tokenizer import Tokenizer
from ..pretrained import load_model
from ..viz import save_grid
from .options import TrainOptions
from .runtime import check_model_size


@dataclass
class Critic:
    """A network trained against the model on each step's outputs (the tokenizer's discriminator).

    `loss` (an nn.Module, wrapped by DDP like the model's) maps `inputs(res)` to its scalar loss; it trains from
    step `start` on, with its own `optimizer`, under the model's learning-rate schedule.
    """

    name: str
    module: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: Callable[[dict], tuple]
    start: int = 0


@dataclass
class Stage:
    """What a stage setup returns and the loop (`spectralar.training.train`) runs, knowing no stage.

    `loss(x, y, draws, step)` returns a dict with "loss" and scalar metrics; `draws(n, generator)` makes the
    per-sample random draws of n samples; `validate(model, step)` returns a log row or None (rank 0 only);
    `after_step()`, if any, runs once after every optimizer step (the tokenizer's dead-code restarts).
    """

    name: str
    model: nn.Module
    config: dict
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    draws: Callable
    train_set: torch.utils.data.Dataset
    classes: list
    validate: Callable
    ema_decay: float = 0.0
    critic: Critic | None = None
    train_meta: dict = field(default_factory=dict)
    curves: tuple = ("loss",)
    after_step: Callable | None = None


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings of rank < 2)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=betas)


class TokenizerLoss(nn.Module):
    """The tokenizer's training loss as a module's forward, so DistributedDataParallel wraps it (calling a method
    of `ddp.module` would bypass DDP's gradient all-reduce). `draws` are the numbers of tokens each image is
    decoded from. With a perceptual distance the loss adds perceptual_weight x its mean between the reconstruction
    and the target sub-image. With a discriminator, from step `adv_start` on the loss adds adv_weight x the
    generator-side hinge term on the reconstruction (times VQGAN's adaptive weight when `adv_adaptive`, which
    balances it against the reconstruction and perceptual terms together, as VQGAN's does)."""

    def __init__(self, model: Tokenizer, disc: nn.Module | None = None,
                 perceptual: PerceptualDistance | None = None):
        super().__init__()
        self.model = model
        self.critics = (disc,) if disc is not None else ()  # a tuple: not a sub-module, so not in this DDP
        self.frozen = (perceptual,) if perceptual is not None else ()  # likewise; nor in any checkpoint

    def forward(self, x, y, draws, step: int):
        res = self.model(x, num_tokens=draws)
        c = self.model.config
        nll = res["recon_loss"]
        if self.frozen:
            p_loss = self.frozen[0](res["recon"], res["target"]).mean()
            nll = nll + c.perceptual_weight * p_loss
            res = {**res, "loss": res["loss"] + c.perceptual_weight * p_loss, "perceptual_loss": p_loss.detach()}
        if not self.critics or step < c.adv_start:
            return res
        disc = self.critics[0]
        disc.requires_grad_(False)  # the discriminator's gradients come from its own loss only
        try:
            g_loss = hinge_g_loss(disc(res["recon"]))
        finally:
            disc.requires_grad_(True)
        weight = torch.tensor(c.adv_weight, device=x.device)
        if c.adv_adaptive:
            weight = weight * adaptive_weight(nll, g_loss, self.model.to_pixels.weight)
        return {**res, "loss": res["loss"] + weight * g_loss, "g_loss": g_loss.detach(), "adv_weight": weight}


class CriticLoss(nn.Module):
    """The discriminator's hinge loss on (real, fake) images, as a forward for DDP."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, real, fake):
        return hinge_d_loss(self.disc(real), self.disc(fake))


class GeneratorLoss(nn.Module):
    """Teacher-forced cross-entropy over code sequences x [B, N]; `draws` is the class-dropout mask."""

    def __init__(self, model: SpectralGPT):
        super().__init__()
        self.model = model

    def forward(self, x, y, draws, step: int):
        labels = torch.where(draws, torch.full_like(y, self.model.null_class), y)  # class dropout, for CFG
        return {"loss": self.model(labels, x[:, :-1], targets=x)[1]}


def config_from(kind: str, d: dict, where: str):
    """The config dataclass for dict `d` (a preset with overrides, or a checkpoint's config.json), its types, ranges
    and consistency checked (models/config.py); errors name `where` it came from."""
    try:
        return validate_config(kind, d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def check_batches(n: int, per_step: int, world: int) -> None:
    if n // world < per_step:
        raise DataError(f"{n} training items cannot fill one batch of {per_step} per process "
                        f"(--batch-size x --accum; {world} process(es))")


def _where(opts: TrainOptions, ckpt: Path, resume_meta) -> str:
    if resume_meta:
        return f"{ckpt}/config.json"
    return " ".join(["--preset", opts.preset, *(f"{k}={v}" for k, v in opts.overrides.items())])


def setup_tokenizer(opts: TrainOptions, device, out: Path, resume_meta, main_proc: bool, world: int) -> Stage:
    where = _where(opts, out / "tokenizer", resume_meta)
    if resume_meta:
        cfg = config_from("tokenizer", resume_meta["config"], where)
    else:
        cfg = dataclasses.replace(preset("tokenizer", opts.preset), **opts.overrides)
        if opts.mapping:
            cfg.mapping, cfg.windows = opts.mapping, []
        cfg = config_from("tokenizer", to_dict(cfg), where)
    perceptual, train_meta = None, {}
    if cfg.perceptual_weight > 0:  # the user's file, read and checked before any data or model
        perceptual = PerceptualDistance.from_file(cfg.perceptual_backbone).to(device)
        was = (resume_meta or {}).get("train", {}).get("perceptual_sha1")
        if was and was != perceptual.sha1:
            raise CheckpointError(f"--resume: {out / 'tokenizer'} was trained with other perceptual backbone "
                                  f"weights than {cfg.perceptual_backbone} holds now")
        train_meta["perceptual_sha1"] = perceptual.sha1
    train_set = make_dataset(opts.data, "train", cfg.image_size, cfg.channels, opts.skip_bad_images)
    check_batches(len(train_set), opts.batch_size * opts.accum, world)
    if not cfg.windows and cfg.mapping in DATA_MAPPINGS and cfg.tokens == "spectral":
        cfg.windows = data_windows(train_set, cfg)
    check_model_size(lambda: build_tokenizer(cfg), device, where)
    torch.manual_seed(opts.seed)
    model = build_tokenizer(cfg).to(device)
    critic = None
    if cfg.adv_weight > 0:  # only then is a discriminator built at all
        disc = PatchDiscriminator.from_config(cfg).to(device)
        critic = Critic("disc", disc, CriticLoss(disc), torch.optim.Adam(disc.parameters(), lr=opts.lr,
                                                                         betas=(0.5, 0.9)),
                        inputs=lambda res: (res["target"], res["recon"].detach()), start=cfg.adv_start)
    val = make_validation(opts, "tokenizer", None, device, out, main_proc, (cfg.image_size, cfg.channels))
    return Stage("tokenizer", model, to_dict(model.config),
                 TokenizerLoss(model, critic and critic.module, perceptual),
                 adamw(model, opts.lr, opts.weight_decay), lambda n, g: model.sample_prefix_lengths(n, "cpu", g),
                 train_set, train_set.classes, val, cfg.ema_decay, critic, train_meta,
                 curves=("loss", "recon_loss", "perplexity") + (("d_loss",) if critic else ())
                 + (("perceptual_loss",) if perceptual else ()),
                 after_step=model.quantizer.after_optimizer_step)


def setup_generator(opts: TrainOptions, device, out: Path, resume_meta, main_proc: bool, world: int) -> Stage:
    where = _where(opts, out / "generator", resume_meta)
    tok_dir = Path(opts.tokenizer) if opts.tokenizer else out / "tokenizer"
    tokenizer = load_model(tok_dir, "tokenizer", device)  # its EMA weights when it has them
    tcfg = tokenizer.config
    train_img = make_dataset(opts.data, "train", tcfg.image_size, tcfg.channels, opts.skip_bad_images)
    check_batches(len(train_img), opts.batch_size * opts.accum, world)
    classes = train_img.classes
    if resume_meta:
        cfg = config_from("generator", resume_meta["config"], where)
    else:
        cfg = dataclasses.replace(preset("generator", opts.preset), **opts.overrides)
        cfg.num_tokens, cfg.codebook_size, cfg.num_classes = tcfg.num_tokens, tcfg.codebook_size, len(classes)
        cfg = config_from("generator", to_dict(cfg), where)
    have = (tcfg.num_tokens, tcfg.codebook_size, len(classes))
    if (cfg.num_tokens, cfg.codebook_size, cfg.num_classes) != have:
        raise ValueError(f"{where}: num_tokens, codebook_size, num_classes = {cfg.num_tokens}, "
                         f"{cfg.codebook_size}, {cfg.num_classes}, but the tokenizer and --data give {have}")
    check_model_size(lambda: SpectralGPT(cfg), device, where)
    fp = fingerprint(tok_dir)
    was = (resume_meta or {}).get("train", {}).get("tokenizer_sha1")
    if was and was != fp:
        raise CheckpointError(f"--resume: {out / 'generator'} was trained on another tokenizer than {tok_dir} (its "
                              "weights differ); pass the tokenizer it was trained with")
    copy_to = out / "tokenizer"  # OUT must hold the tokenizer its generator was trained on
    try:
        same = fingerprint(copy_to) == fp
    except OSError:
        same = False
    if not same and os.path.lexists(copy_to) and not opts.overwrite:
        raise CheckpointError(f"{copy_to} holds another tokenizer than --tokenizer {tok_dir}; pass "
                              "--overwrite to replace it with a copy of that one")
    cache = out / "codes_train.safetensors"
    if main_proc:
        if not same:
            tmp = out / f".tokenizer.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(tok_dir, tmp)
            publish(tmp, copy_to, step_of(tok_dir))
        encode_dataset(tokenizer, train_img, 256, device, "encode train", cache, fp)
    if world > 1:
        dist.barrier()
    codes, labels = encode_dataset(tokenizer, train_img, 256, device, "encode train", cache, fp, show=False)
    torch.manual_seed(opts.seed)
    model = SpectralGPT(cfg).to(device)
    val = make_validation(opts, "generator", tokenizer, device, out, main_proc, (tcfg.image_size, tcfg.channels))
    return Stage("generator", model, to_dict(model.config), GeneratorLoss(model),
                 adamw(model, opts.lr, opts.weight_decay), lambda n, g: torch.rand(n, generator=g) < cfg.class_dropout,
                 CodesDataset(codes, labels), classes, val, cfg.ema_decay, train_meta={"tokenizer_sha1": fp})


SETUPS = {"tokenizer": setup_tokenizer, "generator": setup_generator}


def fingerprint(ckpt: Path) -> str:
    """sha1 of a checkpoint's weights (and its EMA weights, which loading prefers, when it has them)."""
    h = hashlib.sha1()
    for name in ("model.safetensors", "ema.safetensors"):
        if name == "model.safetensors" or (ckpt / name).exists():
            with open(ckpt / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def encode_dataset(tokenizer, dataset, batch_size, device, desc, cache: Path, fp: str, show=True):
    """Codes [N, num_tokens] (int16 on disk) and labels for every image, cached per tokenizer fingerprint."""
    if cache.exists():
        try:
            t = load_file(str(cache))
            if bytes(t["fingerprint"].tolist()).decode() == fp and len(t["labels"]) == len(dataset):
                return t["codes"].long(), t["labels"].long()
        except Exception:  # a stale or broken cache is rebuilt, never trusted
            pass
    codes, labels = [], []
    n = len(dataset)
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not show):
        x, y = collate(dataset, list(range(i, min(n, i + batch_size))))
        codes.append(tokenizer.encode(x.to(device)).cpu())
        labels.append(y)
    codes, labels = torch.cat(codes), torch.cat(labels)
    tmp = cache.with_suffix(".tmp")
    save_file({"codes": codes.to(torch.int16), "labels": labels,
               "fingerprint": torch.tensor(list(fp.encode()), dtype=torch.uint8)}, str(tmp))
    tmp.rename(cache)
    return codes, labels


class CodesDataset(torch.utils.data.Dataset):
    def __init__(self, codes, labels):
        self.codes, self.labels = codes, labels

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return self.codes[idx], self.labels[idx]


def data_windows(dataset, cfg):
    """Windows of a data-driven mapping (`energy`, `gain`), from the mean DCT power spectrum of (up to 5000)
    training images."""
    from spectralar_kernels import dct2d, spectral_windows

    idx = list(range(min(len(dataset), 5000)))
    x, _ = collate(dataset, idx)
    power = dct2d(x.float()).pow(2).mean(dim=(0, 1))
    return spectral_windows(cfg.image_size, cfg.num_tokens, cfg.mapping, power_spectrum=power)


def make_validation(opts: TrainOptions, stage: str, tokenizer, device, out: Path, main_proc: bool, image_shape):
    """A callable(model, step) -> log row (or None) that also saves a picture grid; rank 0 only."""
    ds = None
    if main_proc and opts.val_size > 0:
        try:
            ds = make_dataset(opts.data, "test", *image_shape)
        except DataError:
            pass
    if ds is None:
        return lambda model, step: None
    n = min(opts.val_size, len(ds))
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(ds), generator=g)[:n].tolist()
    x_val, y_val = collate(ds, pick)
    samples_dir = out / f"{stage}_samples"
    if stage == "generator":
        codes_val = torch.cat([tokenizer.encode(x_val[i:i + 256].to(device)).cpu() for i in range(0, n, 256)])

    @torch.no_grad()
    def evaluate(model, step):
        was = model.training
        model.eval()
        # the validation pass must not touch the global RNG, or resumed runs would diverge
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step)
            if stage == "tokenizer":
                row = {"split": "val", "step": step}
                x = x_val.to(device)
                for k in sorted({1, model.config.num_tokens // 2, model.config.num_tokens}):
                    r = model(x, num_tokens=k)
                    row[f"recon_loss@{k}"] = float(r["recon_loss"])
                    # PSNR of the MSE pooled over the validation images (one "image" of all of them)
                    pooled = r["recon"].float().clamp(-1, 1).reshape(1, -1, *x.shape[2:])
                    row[f"psnr_vs_image@{k}"] = float(psnr(pooled, x.reshape(1, -1, *x.shape[2:]))[0])
                row["loss"] = row[f"recon_loss@{model.config.num_tokens}"]
                prog = model.decode_progressive(model.encode(x[:8]))  # [8, N, C, H, W]
                grid = torch.cat([prog, x[:8, None]], 1)
                save_grid(grid.flatten(0, 1), samples_dir / f"step_{step:07d}.png", nrow=grid.shape[1], scale=2)
            else:
                losses = [model(y_val[i:i + 256].to(device), codes_val[i:i + 256, :-1].to(device),
                                targets=codes_val[i:i + 256].to(device))[1] for i in range(0, n, 256)]
                row = {"split": "val", "step": step, "loss": float(torch.stack(losses).mean())}
                nc = model.config.num_classes
                labels = torch.arange(nc, device=device).repeat_interleave(8)
                gen = torch.Generator(device=device).manual_seed(0)
                codes = model.generate(labels, cfg_scale=2.0 if model.config.class_dropout > 0 else 1.0, generator=gen)
                save_grid(tokenizer.decode(codes), samples_dir / f"step_{step:07d}.png", nrow=8, scale=2)
        model.train(was)
        return row

    return evaluate

