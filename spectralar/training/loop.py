"""Training as a library: `train(TrainOptions(stage=..., out=...))` runs one stage on one CPU, one GPU, or many
processes under torchrun. The stage setups (spectralar/training/stages.py) return a `Stage`; the loop here runs it
without knowing which stage it is.

OUT/<stage> is the latest checkpoint (a link switched atomically to the newest OUT/<stage>.STEP directory, see
spectralar/checkpoint.py), OUT/<stage>_log.jsonl the metrics, OUT/<stage>_curves.png the curves and
OUT/<stage>_samples/ the periodic picture grids.

Guarantees (tests/test_train_faults.py): a checkpoint is never overwritten without `overwrite`; SIGINT / SIGTERM
finish the step, checkpoint and raise SystemExit(130 / 143); `resume` continues exactly (the same per-step losses
and final weights as an uninterrupted run), discriminator and EMA included; the per-sample random draws of a step
come from a generator keyed by (seed, step) over the global batch, so P processes x B samples x A accumulation
micro-steps train the model that 1 process x P*A*B does (up to float summation order); the replicas are compared
bit for bit at every checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ..checkpoint import (
    CheckpointError,
    load_into,
    load_train_state,
    load_weights,
    optimizer_from_flat,
    optimizer_to_flat,
    read_meta,
    recover,
    save_checkpoint,
)
from ..data import index_batches
from ..distributed import init_distributed
from ..models.ema import EMA
from ..progress import bar as progress_bar
from ..viz import plot_log
from .options import TrainOptions, parse_overrides
from .runtime import (
    StopFlag,
    check_replicas,
    collate_batch,
    ignore_signals,
    load_rank_state,
    prepare_out,
    rank_state,
    trim_log,
)
from .schedule import lr_at
from .stages import SETUPS, Stage, setup_generator, setup_tokenizer

__all__ = ["Stage", "TrainOptions", "parse_overrides", "setup_generator", "setup_tokenizer", "train"]


def check_start(opts: TrainOptions, ckpt: Path, world: int) -> dict | None:
    """The checkpoint to resume (its config.json), or None for a fresh run; refuses to overwrite or to
    resume what is not there, unreadable, or incompatible with the options."""
    exists = os.path.lexists(ckpt)
    if not opts.resume:
        if exists and not opts.overwrite:
            try:
                meta = read_meta(ckpt)
                what = f"a {meta['kind']} checkpoint at step {meta.get('step')}"
            except CheckpointError:
                what = "a checkpoint"
            raise CheckpointError(f"{ckpt} already holds {what}: pass --resume to continue it or --overwrite "
                                  "to replace it")
        return None
    if not exists:
        raise CheckpointError(f"--resume: there is no checkpoint at {ckpt} (drop --resume to start a new run)")
    meta = read_meta(ckpt)
    train = meta.get("train", {})
    if meta["kind"] != opts.stage:
        raise CheckpointError(f"--resume: {ckpt} holds a {meta['kind']}, not a {opts.stage}")
    if "optimizer" not in train:
        raise CheckpointError(f"{ckpt} has no optimizer state (a shipped model?); it cannot be resumed")
    if opts.steps <= meta["step"]:
        raise ValueError(f"--steps {opts.steps} must exceed the step of the checkpoint to resume "
                         f"({meta['step']}, {ckpt})")
    if opts.stop_at is not None and opts.stop_at <= meta["step"]:
        raise ValueError(f"--stop-at {opts.stop_at} must exceed the step of the checkpoint ({meta['step']})")
    args = train.get("args", {})
    saved = {"seed": args.get("seed"), "batch_size": args.get("batch_size"), "accum": args.get("accum", 1),
             "world": train.get("world")}
    now = {"seed": opts.seed, "batch_size": opts.batch_size, "accum": opts.accum, "world": world}
    for key, val in saved.items():
        if val is not None and val != now[key]:
            flag = "number of processes" if key == "world" else "--" + key.replace("_", "-")
            raise ValueError(f"--resume: {ckpt} was trained with {flag} {val}, this run has {now[key]}; an exact "
                             "resume needs the same (the data order depends on it)")
    return meta


def step_draws(stage: Stage, step: int, seed: int, per_rank: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of step `step`'s random draws, made for the whole global batch from a generator keyed
    by (seed, step): sample i of the global batch gets the same draw whatever the world size and accumulation
    (rank r holds the global batch's samples r, r + world, ..., as `index_batches` deals them), and resuming
    needs no state."""
    g = torch.Generator().manual_seed((seed * 1000003 + step) ^ 0x5DEECE66D)
    return stage.draws(per_rank * world, g)[rank::world]


def _resume(stage: Stage, ema: EMA | None, ckpt: Path, meta: dict, rank: int, device) -> dict:
    """Load everything a checkpoint holds for an exact continuation; returns its train.safetensors tensors."""
    load_into(stage.model, load_weights(ckpt, meta, ema=False), str(ckpt))
    saved = load_train_state(ckpt, stage.optimizer, meta)
    load_rank_state(stage.model, saved, rank, device)
    if ema is not None:
        if not meta.get("ema"):
            raise CheckpointError(f"{ckpt}: its config has ema_decay > 0 but it holds no EMA weights")
        ema.load_state_dict({k: v.to(device) for k, v in load_weights(ckpt, meta, ema=True).items()})
    c = stage.critic
    if c is not None:
        prefix = f"{c.name}."
        state = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        if not state or f"{c.name}_optimizer" not in meta["train"]:
            raise CheckpointError(f"{ckpt}: the {c.name} network (adv_weight > 0) is missing from train.safetensors")
        load_into(c.module, state, f"{ckpt} ({c.name})")
        optimizer_from_flat(c.optimizer, saved, meta["train"][f"{c.name}_optimizer"], prefix=f"{c.name}_opt")
    return saved


def train(opts: TrainOptions) -> nn.Module:
    """Train one stage; returns the trained model (on every rank). Raises ValueError / DataError /
    CheckpointError before any work for bad options, data or checkpoints, and SystemExit(128 + signal) when
    stopped by SIGINT / SIGTERM (after writing a checkpoint to resume from)."""
    opts.check()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    rank, world = init_distributed(device)
    main_proc = rank == 0
    out = Path(opts.out)
    ckpt = out / opts.stage
    prepare_out(out)
    if main_proc:
        stale = [n for name in (opts.stage, "tokenizer") for n in recover(out / name)]
        for tmp in out.glob("codes_*.tmp"):
            tmp.unlink()
            stale.append(tmp.name)
        if stale:
            print(f"removed what an interrupted run left in {out}: {', '.join(stale)}", flush=True)
    if world > 1:
        dist.barrier()
    resume_meta = check_start(opts, ckpt, world)
    stage = SETUPS[opts.stage](opts, device, out, resume_meta, main_proc, world)
    model, opt, critic = stage.model, stage.optimizer, stage.critic
    ema = EMA(model, stage.ema_decay) if stage.ema_decay > 0 else None
    step, epoch, batch_pos = 0, 0, 0
    if resume_meta:
        _resume(stage, ema, ckpt, resume_meta, rank, device)
        step = resume_meta["step"]
        epoch, batch_pos = resume_meta["train"]["epoch"], resume_meta["train"]["batch"]
    loss_fn, critic_fn = stage.loss, critic.loss if critic else None
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids, broadcast_buffers=False)
        if critic:
            critic_fn = nn.parallel.DistributedDataParallel(critic_fn, device_ids=ids, broadcast_buffers=False)
    n_params = sum(p.numel() for p in model.parameters())
    log_path = out / f"{opts.stage}_log.jsonl"
    if main_proc:
        trim_log(log_path, step)
        extra = f", {critic.name} {sum(p.numel() for p in critic.module.parameters()) / 1e6:.2f} M" if critic else ""
        print(f"[{opts.stage}] {n_params / 1e6:.2f} M params{extra}, {len(stage.train_set)} training items, "
              f"world {world}, accum {opts.accum}, device {device}, from step {step}", flush=True)

    def checkpoint(final=False):
        """Every rank calls this: the replicas are compared and their own state gathered for rank 0 to write."""
        dtype = torch.float16 if (final and opts.save_dtype == "fp16") else None
        extra, train_meta = {}, {}
        if world > 1:
            check_replicas(model, step)
            if critic:
                check_replicas(critic.module, step)
            if dtype is None:
                states = [None] * world
                dist.all_gather_object(states, rank_state(model, device))
                extra = {f"rank{r}.{k}": v for r in range(1, world) for k, v in states[r].items()}
        if critic and dtype is None:
            extra.update({f"{critic.name}.{k}": v.detach().cpu() for k, v in critic.module.state_dict().items()})
            tensors, train_meta[f"{critic.name}_optimizer"] = optimizer_to_flat(critic.optimizer,
                                                                                 f"{critic.name}_opt")
            extra.update(tensors)
        if main_proc:
            save_checkpoint(ckpt, opts.stage, model, stage.config, step,
                            train={"epoch": epoch, "batch": batch_pos, "world": world, "classes": stage.classes,
                                   "args": opts.record(), **stage.train_meta, **train_meta},
                            optimizer=None if dtype else opt, save_rng=dtype is None, dtype=dtype, extra=extra,
                            versioned=True, ema=ema.state_dict() if ema else None)
        return step

    def validate():
        if ema is not None:  # validation, like sampling, sees the averaged weights
            ema.swap(model)
        try:
            row = stage.validate(model, step)
        finally:
            if ema is not None:
                ema.swap(model)
        if row is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(f"[{opts.stage}] step {step} val " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                                      if isinstance(v, float)))

    if device.type == "cuda":  # fp32 master weights, bf16 matmuls
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = torch.autocast("cpu", enabled=False)
    per_rank = opts.batch_size * opts.accum
    bar = progress_bar(total=opts.steps, initial=step, desc=opts.stage, unit="step", leave=True, enabled=main_proc)
    t0, seen, saved_at, stop = time.time(), 0, step, 0
    end = opts.stop_at if opts.stop_at is not None else opts.steps
    model.train()
    with StopFlag(world, device, main_proc) as flag:
        while step < end and not stop:
            batches = index_batches(len(stage.train_set), per_rank, opts.seed, epoch, rank, world)
            loader = torch.utils.data.DataLoader(stage.train_set, batch_sampler=batches[batch_pos:],
                                                 num_workers=opts.num_workers, collate_fn=collate_batch,
                                                 generator=torch.Generator().manual_seed(opts.seed + epoch),
                                                 worker_init_fn=ignore_signals if opts.num_workers else None)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                draws = step_draws(stage, step, opts.seed, per_rank, rank, world).to(device)
                lr = lr_at(step, lr=opts.lr, warmup=opts.warmup, steps=opts.steps, min_lr_ratio=opts.min_lr_ratio)
                on = critic is not None and step >= critic.start
                for o in (opt, critic.optimizer) if on else (opt,):
                    for g in o.param_groups:
                        g["lr"] = lr
                    o.zero_grad(set_to_none=True)
                sums = {}
                for i, (xm, ym, dm) in enumerate(zip(x.chunk(opts.accum), y.chunk(opts.accum),
                                                     draws.chunk(opts.accum))):
                    last = i == opts.accum - 1  # DDP all-reduces the gradients once, on the last micro-step
                    with contextlib.nullcontext() if last or world == 1 else loss_fn.no_sync():
                        with autocast:
                            res = loss_fn(xm, ym, dm, step)
                        (res["loss"] / opts.accum).backward()
                    if on:
                        with contextlib.nullcontext() if last or world == 1 else critic_fn.no_sync():
                            with autocast:
                                d_loss = critic_fn(*critic.inputs(res))
                            (d_loss / opts.accum).backward()
                        res = {**res, "d_loss": d_loss}
                    for k, v in res.items():
                        if torch.is_tensor(v) and v.numel() == 1:
                            sums[k] = sums.get(k, 0) + v.detach().float() / opts.accum
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip if opts.clip > 0 else 1e9)
                opt.step()
                if on:
                    critic.optimizer.step()
                if stage.after_step is not None:
                    stage.after_step()
                if ema is not None:
                    ema.update(model)
                step, batch_pos, seen = step + 1, batch_pos + 1, seen + x.shape[0] * world
                loss = sums["loss"].item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step}")
                if step % opts.log_every == 0 or step == opts.steps:
                    metrics = sums
                    if world > 1:  # logged as the mean over the processes, like a one-process run's batch mean
                        mean = torch.stack(list(metrics.values()))
                        dist.all_reduce(mean)
                        metrics = dict(zip(metrics, (mean / world).tolist()))
                    if main_proc:
                        dt = time.time() - t0
                        row = {"split": "train", "step": step, "lr": lr, "grad_norm": float(gnorm),
                               "steps_per_s": opts.log_every / dt if dt else 0.0, "items_per_s": seen / dt if dt else 0}
                        row.update({k: float(v) for k, v in metrics.items()})
                        with open(log_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        t0, seen = time.time(), 0
                        bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
                bar.update(1)
                if main_proc and (step % opts.eval_every == 0 or step == opts.steps):
                    validate()
                if step % opts.ckpt_every == 0 and step < opts.steps:
                    saved_at = checkpoint()
                stop = flag.agreed()
                if step >= end or stop:
                    break
            else:
                epoch, batch_pos = epoch + 1, 0
        bar.close()
        if step < opts.steps:  # stopped early, by a signal or stop_at: a resumable checkpoint
            if saved_at != step:
                checkpoint()
        else:
            checkpoint(final=True)
    if stop and step < opts.steps:
        if main_proc:
            print(f"[{opts.stage}] stopped by {signal.Signals(stop).name} at step {step}; checkpoint {ckpt} "
                  "(continue with --resume)", flush=True)
        raise SystemExit(128 + stop)
    if main_proc:
        plot_log(log_path, out / f"{opts.stage}_curves.png", stage.curves,
                 title=f"{opts.stage} ({n_params / 1e6:.2f} M)")
        print(f"[{opts.stage}] done at step {step}; checkpoint {ckpt}", flush=True)
    if world > 1:
        dist.barrier()
    return model
