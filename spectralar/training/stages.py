"""One setup per training stage: model, optimizer(s), data, loss step and validation, as a `Stage` record that
the loop in training/loop.py runs without knowing which stage it is.

tokenizer: images -> the nested spectral tokenizer's loss (reconstruction of the frequency-limited sub-image of a
  drawn number of tokens, VQ terms), plus, when `perceptual_weight` > 0, an LPIPS-style distance on the user's
  VGG16 weights, and when `adv_weight` > 0, a patch discriminator (its own critic step) and the adversarial term
  on the tokenizer's side from step `adv_start` on.
generator: the dataset encoded once by a trained tokenizer (cached in OUT/codes_train.safetensors, see codes.py) ->
  next-token cross-entropy with class dropout for classifier-free guidance.

Each setup builds the two configs of its stage (the model's and the training's, models/config.py) from the preset and
the overrides, or from the checkpoint it resumes, and checks that a resume continues the same run (data, preset,
overrides equal to the checkpoint's).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from spectralar_kernels.windows import DATA_MAPPINGS

from ..checkpoint import CheckpointError, publish, step_of
from ..data import DataError, collate, training_data
from ..models.config import preset, split_config, to_dict, training_preset, validate_config, validate_training
from ..models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from ..models.generator import SpectralGPT
from ..models.kinds import build_tokenizer
from ..models.perceptual import PerceptualDistance
from ..models.tokenizer import Tokenizer
from ..pretrained import load_model
from .codes import CodesDataset, encode_dataset, fingerprint
from .options import TrainOptions
from .runtime import check_model_size
from .validation import make_validation


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

    `config` is the model config (a checkpoint's "config"), `train_meta` what else its checkpoints record (the
    training config among it). `loss(x, y, draws, step)` returns a dict with "loss" and scalar metrics;
    `draws(n, generator)` makes the per-sample random draws of n samples; `validate(model, step, samples_dir)`
    returns a log row or None (rank 0 only); `after_step()`, if any, runs once after every optimizer step (the
    tokenizer's dead-code restarts); `after_first_checkpoint()`, if any, once a fresh run has its first checkpoint
    (the generator's copy of its tokenizer). `notes` are lines for the log (where validation data comes from).
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
    after_first_checkpoint: Callable | None = None
    notes: list = field(default_factory=list)


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings of rank < 2)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=betas)


class TokenizerLoss(nn.Module):
    """The tokenizer's training loss as a module's forward, so DistributedDataParallel wraps it (calling a method
    of `ddp.module` would bypass DDP's gradient all-reduce). `draws` are the numbers of tokens each image is
    decoded from; `training` is the tokenizer's training config. With a perceptual distance the loss adds
    perceptual_weight x its mean between the reconstruction and the target sub-image. With a discriminator, from
    step `adv_start` on the loss adds adv_weight x the generator-side hinge term on the reconstruction (times
    VQGAN's adaptive weight when `adv_adaptive`, which balances it against the reconstruction and perceptual terms
    together, as VQGAN's does)."""

    def __init__(self, model: Tokenizer, training, disc: nn.Module | None = None,
                 perceptual: PerceptualDistance | None = None):
        super().__init__()
        self.model, self.training_config = model, training
        self.critics = (disc,) if disc is not None else ()  # a tuple: not a sub-module, so not in this DDP
        self.frozen = (perceptual,) if perceptual is not None else ()  # likewise; nor in any checkpoint

    def forward(self, x, y, draws, step: int):
        res = self.model(x, num_tokens=draws)
        c = self.training_config
        if c.recon_loss == "l1":  # the model reports the squared error; the objective may use the absolute one
            rec = F.l1_loss(res["recon"].float(), res["target"].float())
            res = {**res, "recon_loss": rec, "loss": rec + res["vq_loss"]}
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


def check_batches(n: int, per_step: int, world: int) -> None:
    if n // world < per_step:
        raise DataError(f"{n} training items cannot fill one batch of {per_step} per process "
                        f"(`batch_size` x `accum`; {world} process(es))")


def stage_configs(kind: str, opts: TrainOptions, resume_meta, where: str, fixed: dict | None = None):
    """(model config, training config) of a run: the checkpoint's when resuming (overrides and mapping must then
    equal its values), else the preset's with the overrides (and `fixed`, fields the data and the tokenizer
    dictate) applied. Values checked by their fields' rules; errors name `where` the config came from."""
    try:
        if resume_meta:
            model_d, legacy = split_config(kind, resume_meta["config"])
            train_d = resume_meta["train"].get("config", legacy)
            cfg, tcfg = validate_config(kind, model_d), validate_training(kind, train_d)
        else:
            cfg, tcfg = preset(kind, opts.preset), training_preset(kind, opts.preset)
            model_fields = {f.name for f in dataclasses.fields(cfg)}
            cfg = dataclasses.replace(cfg, **{k: v for k, v in opts.overrides.items() if k in model_fields},
                                      **(fixed or {}))
            tcfg = dataclasses.replace(tcfg, **{k: v for k, v in opts.overrides.items() if k not in model_fields})
            if opts.mapping:
                cfg.mapping, cfg.windows = opts.mapping, []
            cfg = validate_config(kind, to_dict(cfg))
        tcfg = validate_training(kind, to_dict(tcfg), getattr(cfg, "image_size", None))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if resume_meta:  # settings repeated on a resume are fine when they equal the checkpoint's (docs/training.md)
        have = to_dict(cfg) | to_dict(tcfg)
        asked = dict(opts.overrides) | ({"mapping": opts.mapping} if opts.mapping else {})
        differ = [f"{k}={v!r} (it has {have.get(k)!r})" for k, v in asked.items() if have.get(k) != v]
        if differ:
            raise ValueError(f"`resume`: a resumed run keeps its checkpoint's config, which `overrides` / `mapping` "
                             f"would change: {', '.join(differ)}")
    return cfg, tcfg


def check_same_run(opts: TrainOptions, ckpt: Path, resume_meta, data_fp: str) -> None:
    """Refuse to resume on other data or another preset than the checkpoint's: the run would no longer be exact."""
    if not resume_meta:
        return
    train = resume_meta["train"]
    args = train.get("args", {})
    was = train.get("data")
    if (was if was is not None else args.get("data", opts.data)) != (data_fp if was is not None else opts.data):
        raise CheckpointError(f"`resume`: {ckpt} was trained on other data than `data` {opts.data} (its images, "
                              f"labels or held-out part differ; it was given {args.get('data')!r}); pass the data it "
                              "was trained on, or start a new run with `overwrite`")
    if args.get("preset", opts.preset) != opts.preset:
        raise CheckpointError(f"`resume`: {ckpt} was trained with `preset` {args['preset']}, this run has "
                              f"{opts.preset}; pass the same preset")


def _where(opts: TrainOptions, ckpt: Path, resume_meta) -> str:
    if resume_meta:
        return f"{ckpt}/config.json"
    return " ".join(["`preset`", opts.preset, *(f"{k}={v}" for k, v in opts.overrides.items())])


def _data(opts: TrainOptions, size: int, channels: int, main_proc: bool):
    return training_data(opts.data, size, channels, opts.val_size, opts.skip_bad_images, validation=main_proc)


def setup_tokenizer(opts: TrainOptions, device, out: Path, resume_meta, main_proc: bool, world: int) -> Stage:
    ckpt = out / "tokenizer"
    cfg, t = stage_configs("tokenizer", opts, resume_meta, _where(opts, ckpt, resume_meta))
    perceptual, train_meta = None, {"config": to_dict(t)}
    if t.perceptual_weight > 0:  # the user's file, read and checked before any data or model
        perceptual = PerceptualDistance.from_file(t.perceptual_backbone).to(device)
        was = (resume_meta or {}).get("train", {}).get("perceptual_sha1")
        if was and was != perceptual.sha1:
            raise CheckpointError(f"`resume`: {ckpt} was trained with other perceptual backbone weights than "
                                  f"{t.perceptual_backbone} holds now")
        train_meta["perceptual_sha1"] = perceptual.sha1
    data = _data(opts, cfg.image_size, cfg.channels, main_proc)
    train_set = data.train
    check_batches(len(train_set), opts.batch_size * opts.accum, world)
    train_meta["data"] = train_set.fingerprint()
    check_same_run(opts, ckpt, resume_meta, train_meta["data"])
    if not cfg.windows and cfg.mapping in DATA_MAPPINGS and cfg.tokens == "spectral":
        cfg.windows = data_windows(train_set, cfg)
    check_model_size("tokenizer", cfg, device, _where(opts, ckpt, resume_meta))
    torch.manual_seed(opts.seed)
    model = build_tokenizer(cfg).to(device)
    critic = None
    if t.adv_weight > 0:  # only then is a discriminator built at all
        disc = PatchDiscriminator.from_config(cfg, t.disc_channels).to(device)
        critic = Critic("disc", disc, CriticLoss(disc), torch.optim.Adam(disc.parameters(), lr=opts.lr,
                                                                         betas=(0.5, 0.9)),
                        inputs=lambda res: (res["target"], res["recon"].detach()), start=t.adv_start)
    val = make_validation("tokenizer", data.val, opts.val_size, None, device, t.recon_loss)
    return Stage("tokenizer", model, to_dict(model.config),
                 TokenizerLoss(model, t, critic and critic.module, perceptual),
                 adamw(model, opts.lr, opts.weight_decay),
                 lambda n, g: model.sample_prefix_lengths(n, "cpu", g, dist=t.prefix_dist),
                 train_set, train_set.classes, val, t.ema_decay, critic, train_meta,
                 curves=("loss", "recon_loss", "perplexity") + (("d_loss",) if critic else ())
                 + (("perceptual_loss",) if perceptual else ()),
                 after_step=model.quantizer.after_optimizer_step, notes=data.notes)


def setup_generator(opts: TrainOptions, device, out: Path, resume_meta, main_proc: bool, world: int) -> Stage:
    ckpt = out / "generator"
    tok_dir = Path(opts.tokenizer) if opts.tokenizer else out / "tokenizer"
    tokenizer = load_model(tok_dir, "tokenizer", device)  # its EMA weights when it has them
    tcfg = tokenizer.config
    data = _data(opts, tcfg.image_size, tcfg.channels, main_proc)
    train_img = data.train
    check_batches(len(train_img), opts.batch_size * opts.accum, world)
    classes = train_img.classes
    fixed = {"num_tokens": tcfg.num_tokens, "codebook_size": tcfg.codebook_size, "num_classes": len(classes)}
    where = _where(opts, ckpt, resume_meta)
    cfg, t = stage_configs("generator", opts, resume_meta, where, fixed)
    have = (tcfg.num_tokens, tcfg.codebook_size, len(classes))
    if (cfg.num_tokens, cfg.codebook_size, cfg.num_classes) != have:
        raise ValueError(f"{where}: num_tokens, codebook_size, num_classes = {cfg.num_tokens}, "
                         f"{cfg.codebook_size}, {cfg.num_classes}, but the tokenizer and `data` give {have}")
    data_fp = train_img.fingerprint()
    check_same_run(opts, ckpt, resume_meta, data_fp)
    check_model_size("generator", cfg, device, where)
    fp = fingerprint(tok_dir)
    was = (resume_meta or {}).get("train", {}).get("tokenizer_sha1")
    if was and was != fp:
        raise CheckpointError(f"`resume`: {ckpt} was trained on another tokenizer than {tok_dir} (its "
                              "weights differ); pass the tokenizer it was trained with")
    copy_to = out / "tokenizer"  # OUT must hold the tokenizer its generator was trained on
    try:
        same = fingerprint(copy_to) == fp
    except OSError:
        same = False
    if not same and os.path.lexists(copy_to) and not (opts.overwrite or was):
        raise CheckpointError(f"{copy_to} holds another tokenizer than `tokenizer` {tok_dir}; pass "
                              "`overwrite` to replace it with a copy of that one")

    def copy_tokenizer():
        """Make OUT/tokenizer a copy of the tokenizer trained on (after the first checkpoint of a fresh run, so
        the old pair stays together until then; at once when resuming a run whose copy was interrupted)."""
        if main_proc and not same:
            tmp = out / f".tokenizer.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(tok_dir, tmp)
            publish(tmp, copy_to, step_of(tok_dir))

    if resume_meta:
        copy_tokenizer()
    cache = out / "codes_train.safetensors"
    key = {"tokenizer": fp, "data": data_fp, "split": "train"}
    if main_proc:
        print(f"[generator] encoding the {len(train_img)} training images with the tokenizer (once; cached in "
              f"{cache})", flush=True)
        encode_dataset(tokenizer, train_img, 256, device, cache, key)
    if world > 1:
        dist.barrier()
    codes, labels = encode_dataset(tokenizer, train_img, 256, device, cache, key, show=False)
    torch.manual_seed(opts.seed)
    model = SpectralGPT(cfg).to(device)
    val = make_validation("generator", data.val, opts.val_size, tokenizer, device)
    return Stage("generator", model, to_dict(model.config), GeneratorLoss(model),
                 adamw(model, opts.lr, opts.weight_decay), lambda n, g: torch.rand(n, generator=g) < cfg.class_dropout,
                 CodesDataset(codes, labels), classes, val, t.ema_decay,
                 train_meta={"config": to_dict(t), "tokenizer_sha1": fp, "data": data_fp},
                 after_first_checkpoint=None if resume_meta else copy_tokenizer, notes=data.notes)


SETUPS = {"tokenizer": setup_tokenizer, "generator": setup_generator}


def data_windows(dataset, cfg):
    """Windows of a data-driven mapping (`energy`, `gain`), from the mean DCT power spectrum of (up to 5000)
    training images."""
    from spectralar_kernels import dct2d, spectral_windows

    idx = list(range(min(len(dataset), 5000)))
    x, _ = collate(dataset, idx)
    power = dct2d(x.float()).pow(2).mean(dim=(0, 1))
    return spectral_windows(cfg.image_size, cfg.num_tokens, cfg.mapping, power_spectrum=power)
