"""Training CLI for the tokenizer and the generator; one CPU, one GPU, or many through torchrun.

    python -m spectralar.train tokenizer --preset fmnist --out runs/fmnist --steps 6000
    python -m spectralar.train generator --preset fmnist --out runs/fmnist --steps 4000
    torchrun --nproc_per_node=8 -m spectralar.train tokenizer --data /imagenet --preset imagenet-b64 ...

OUT/<stage>/ is the latest checkpoint (atomic, resumable with --resume), OUT/<stage>_log.jsonl the metrics,
OUT/<stage>_curves.png the curves and OUT/<stage>_samples/ the periodic picture grids. The generator stage
encodes the dataset once with the tokenizer (cached in OUT/codes_<split>.safetensors) and copies the
tokenizer checkpoint to OUT/tokenizer, so OUT is everything `generate --checkpoint OUT` needs.
--batch-size is per process; under torchrun the global batch is that times the world size.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import CheckpointError, load_into, load_train_state, load_weights, read_meta, save_checkpoint
from .config import GeneratorConfig, TokenizerConfig, from_dict, preset, to_dict
from .data import DataError, collate, index_batches, make_dataset
from .generator import SpectralGPT
from .pretrained import load_model
from .tokenizer import SpectralTokenizer
from .viz import plot_log, save_grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spectralar.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for stage in ("tokenizer", "generator"):
        s = sub.add_parser(stage, help=f"train the {stage}")
        s.add_argument("--preset", default="fmnist", help="config preset (fmnist, micro, imagenet-b64 / d16)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config field, e.g. --set width=192 (repeatable)")
        s.add_argument("--data", default="fmnist",
                       help="'fmnist' (Debian's dataset-fashion-mnist), a folder of its IDX files, or an image folder")
        s.add_argument("--out", required=True, help="output directory (checkpoints, logs, pictures)")
        s.add_argument("--steps", type=int, default=1000, help="optimizer steps in total")
        s.add_argument("--batch-size", type=int, default=64, help="images per step and process")
        s.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
        s.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of the peak (cosine)")
        s.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
        s.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (matrices only)")
        s.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0 = off)")
        s.add_argument("--seed", type=int, default=0, help="seed for init, data order and sampling")
        s.add_argument("--resume", action="store_true", help="continue exactly from OUT/<stage> if it exists")
        s.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
        s.add_argument("--eval-every", type=int, default=500, help="steps between validation / picture grids")
        s.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
        s.add_argument("--stop-at", type=int, default=None,
                       help="checkpoint and exit at this step as an interruption would (resume with --resume)")
        s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        s.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
        s.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (image folders)")
        s.add_argument("--skip-bad-images", action="store_true",
                       help="skip unreadable images (counted in the log) instead of stopping")
        s.add_argument("--val-size", type=int, default=1000, help="validation images (test split) per evaluation")
        s.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp32",
                       help="dtype of the final weights (fp16 for shipping); resumable checkpoints stay fp32")
    sub.choices["generator"].add_argument("--tokenizer", default=None,
                                          help="tokenizer checkpoint directory (default: OUT/tokenizer)")
    sub.choices["tokenizer"].add_argument("--mapping", default=None, choices=["uniform", "power", "energy"],
                                          help="token-frequency mapping (energy: computed from the training data)")
    return p


def parse_overrides(cfg, items):
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        cur = getattr(cfg, key)
        if isinstance(cur, list):
            new = [int(v) for v in val.split(",")]
        elif isinstance(cur, bool):
            new = val.lower() in ("1", "true", "yes")
        else:
            new = type(cur)(val)
        setattr(cfg, key, new)
    return cfg


def setup_distributed(device_arg):
    """(rank, world, device). torchrun sets WORLD_SIZE; NCCL on GPUs, Gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg is None:
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model, args):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))


def _fingerprint(ckpt: Path) -> str:
    h = hashlib.sha1()
    with open(ckpt / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def encode_dataset(tokenizer, dataset, batch_size, device, desc, cache: Path, fingerprint: str, show=True):
    """Codes [N, num_tokens] (int16 on disk) and labels for every image, cached per tokenizer fingerprint."""
    if cache.exists():
        try:
            t = load_file(str(cache))
            if bytes(t["fingerprint"].tolist()).decode() == fingerprint and len(t["labels"]) == len(dataset):
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
               "fingerprint": torch.tensor(list(fingerprint.encode()), dtype=torch.uint8)}, str(tmp))
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


def _collate_batch(batch):
    if isinstance(batch, tuple):  # already batched by __getitems__
        return batch
    return torch.utils.data.default_collate(batch)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args.device)
    main_proc = rank == 0
    out = Path(args.out)
    ckpt = out / args.stage
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    resume_meta = None
    if args.resume and ckpt.exists():
        resume_meta = read_meta(ckpt)
        if "optimizer" not in resume_meta.get("train", {}):
            raise CheckpointError(f"{ckpt} has no optimizer state (a shipped model?); it cannot be resumed")

    # ---- data and model ----
    if args.stage == "tokenizer":
        if resume_meta:
            cfg = from_dict(TokenizerConfig, resume_meta["config"])
        else:
            cfg = parse_overrides(preset("tokenizer", args.preset), args.set)
            if args.mapping:
                cfg.mapping, cfg.windows = args.mapping, []
        train_ds = make_dataset(args.data, "train", cfg.image_size, cfg.channels, args.skip_bad_images)
        if not cfg.windows and cfg.mapping == "energy":
            cfg.windows = energy_windows(train_ds, cfg)
        model = SpectralTokenizer(cfg).to(device)
        classes = train_ds.classes
    else:
        tok_dir = Path(args.tokenizer) if args.tokenizer else out / "tokenizer"
        tokenizer = load_model(tok_dir, "tokenizer", device)
        tcfg = tokenizer.config
        train_img = make_dataset(args.data, "train", tcfg.image_size, tcfg.channels, args.skip_bad_images)
        classes = train_img.classes
        if resume_meta:
            cfg = from_dict(GeneratorConfig, resume_meta["config"])
        else:
            cfg = parse_overrides(preset("generator", args.preset), args.set)
            cfg.num_tokens, cfg.codebook_size, cfg.num_classes = tcfg.num_tokens, tcfg.codebook_size, len(classes)
        fp = _fingerprint(tok_dir)
        if main_proc:
            if tok_dir.resolve() != (out / "tokenizer").resolve():
                tmp = out / ".tokenizer.copy"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(tok_dir, tmp)
                shutil.rmtree(out / "tokenizer", ignore_errors=True)
                tmp.rename(out / "tokenizer")
            encode_dataset(tokenizer, train_img, 256, device, "encode train", out / "codes_train.safetensors", fp)
        if world > 1:
            dist.barrier()
        codes, labels = encode_dataset(tokenizer, train_img, 256, device, "encode train",
                                       out / "codes_train.safetensors", fp, show=False)
        train_ds = CodesDataset(codes, labels)
        model = SpectralGPT(cfg).to(device)
    val = make_validation(args, tokenizer if args.stage == "generator" else None, device, out, main_proc, world)

    opt = make_optimizer(model, args)
    step, epoch, batch_pos = 0, 0, 0
    if resume_meta:
        load_into(model, load_weights(ckpt, resume_meta), str(ckpt))
        load_train_state(ckpt, opt, resume_meta)
        step = resume_meta["step"]
        epoch, batch_pos = resume_meta["train"]["epoch"], resume_meta["train"]["batch"]
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                        broadcast_buffers=False)
    n_params = sum(p.numel() for p in model.parameters())
    log_path = out / f"{args.stage}_log.jsonl"
    if main_proc:
        print(f"[{args.stage}] {n_params / 1e6:.2f} M params, {len(train_ds)} training items, world {world}, "
              f"device {device}, from step {step}", flush=True)

    def checkpoint(final=False):
        if not main_proc:
            return
        dtype = torch.float16 if (final and args.save_dtype == "fp16") else None
        save_checkpoint(ckpt, args.stage, model, to_dict(cfg), step,
                        train={"epoch": epoch, "batch": batch_pos, "classes": classes, "args": vars(args)},
                        optimizer=None if dtype else opt, save_rng=dtype is None, dtype=dtype)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                        enabled=False)
    bar = tqdm(total=args.steps, initial=step, desc=args.stage, disable=not main_proc, dynamic_ncols=True)
    t0, seen, last = time.time(), 0, {}
    stop_at = args.stop_at if args.stop_at is not None else args.steps
    model.train()
    try:
        while step < min(args.steps, stop_at):
            batches = index_batches(len(train_ds), args.batch_size, args.seed, epoch, rank, world)
            if not batches:
                raise DataError(f"{len(train_ds)} items cannot fill one batch of {args.batch_size} per process")
            loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batches[batch_pos:],
                                                 num_workers=args.num_workers, collate_fn=_collate_batch,
                                                 generator=torch.Generator().manual_seed(args.seed + epoch))
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, args)
                with autocast:
                    if args.stage == "tokenizer":
                        res = ddp(x)
                        loss = res["loss"]
                    else:
                        loss = model.loss(y, x) if world == 1 else ddp.module.loss(y, x)
                        res = {"loss": loss}
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip if args.clip > 0 else 1e9)
                opt.step()
                step, batch_pos, seen = step + 1, batch_pos + 1, seen + x.shape[0] * world
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}")
                if main_proc and (step % args.log_every == 0 or step == args.steps):
                    dt = time.time() - t0
                    last = {"split": "train", "step": step, "lr": lr_at(step - 1, args), "grad_norm": float(gnorm),
                            "steps_per_s": args.log_every / dt if dt else 0.0, "items_per_s": seen / dt if dt else 0}
                    last.update({k: float(v.detach()) for k, v in res.items() if torch.is_tensor(v) and v.numel() == 1})
                    with open(log_path, "a") as f:
                        f.write(json.dumps(last) + "\n")
                    t0, seen = time.time(), 0
                    bar.set_postfix(loss=f"{last['loss']:.4f}", it_s=f"{last['steps_per_s']:.2f}")
                bar.update(1)
                if step % args.eval_every == 0 or step == args.steps:
                    val(model, step, log_path)
                if step % args.ckpt_every == 0 and step < args.steps:
                    checkpoint()
                if step >= min(args.steps, stop_at):
                    break
            else:
                epoch, batch_pos = epoch + 1, 0
    except KeyboardInterrupt:
        if main_proc:
            print(f"\ninterrupted at step {step}: writing a checkpoint to {ckpt} (resume with --resume)", flush=True)
        checkpoint()
        raise SystemExit(130) from None
    bar.close()
    checkpoint(final=step >= args.steps)
    if main_proc:
        keys = ("loss", "recon_loss", "perplexity") if args.stage == "tokenizer" else ("loss",)
        plot_log(log_path, out / f"{args.stage}_curves.png", keys, title=f"{args.stage} ({n_params / 1e6:.2f} M)")
        print(f"[{args.stage}] done at step {step}; checkpoint {ckpt}", flush=True)
    if world > 1:
        dist.barrier()
    return last


def energy_windows(dataset, cfg):
    """`energy` mapping: windows splitting the mean DCT power spectrum of (up to 5000) training images evenly."""
    from spectralar_kernels import dct2d, spectral_windows

    idx = list(range(min(len(dataset), 5000)))
    x, _ = collate(dataset, idx)
    power = dct2d(x.float()).pow(2).mean(dim=(0, 1))
    return spectral_windows(cfg.image_size, cfg.num_tokens, "energy", power_spectrum=power)


def make_validation(args, tokenizer, device, out: Path, main_proc: bool, world: int):
    """A callable(model, step, log_path) that logs validation metrics and saves a picture grid (rank 0)."""
    try:
        ds = make_dataset(args.data, "test", *(_image_shape(args, tokenizer)))
    except DataError:
        ds = None
    if ds is None or not main_proc:
        return lambda model, step, log_path: None
    n = min(args.val_size, len(ds))
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(ds), generator=g)[:n].tolist()
    x_val, y_val = collate(ds, pick)
    samples_dir = out / f"{args.stage}_samples"
    if args.stage == "generator":
        codes_val = torch.cat([tokenizer.encode(x_val[i:i + 256].to(device)).cpu() for i in range(0, n, 256)])

    @torch.no_grad()
    def evaluate(model, step, log_path):
        was = model.training
        model.eval()
        # the validation pass must not touch the global RNG, or resumed runs would diverge
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step)
            if args.stage == "tokenizer":
                row = {"split": "val", "step": step}
                for pl in sorted({1, model.config.num_tokens // 2, model.config.num_tokens}):
                    r = model(x_val.to(device), prefix_len=pl)
                    row[f"recon_loss@{pl}"] = float(r["recon_loss"])
                    mse_img = (r["recon"].float().clamp(-1, 1) - x_val.to(device)).pow(2).mean()
                    row[f"psnr_vs_image@{pl}"] = float(10 * torch.log10(4.0 / mse_img))
                row["loss"] = row[f"recon_loss@{model.config.num_tokens}"]
                prog = model.decode_progressive(model.encode(x_val[:8].to(device)))  # [8, N, C, H, W]
                grid = torch.cat([prog, x_val[:8, None].to(device)], 1)
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
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(f"[{args.stage}] step {step} val " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                                   if isinstance(v, float)))
        model.train(was)

    return evaluate


def _image_shape(args, tokenizer):
    if tokenizer is not None:
        return tokenizer.config.image_size, tokenizer.config.channels
    cfg = preset("tokenizer", args.preset)
    return cfg.image_size, cfg.channels


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
