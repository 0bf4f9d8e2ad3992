"""Training as a library: `train(TrainOptions(stage=..., out=...))` runs one stage on one CPU, one GPU, or many
processes under torchrun. The stage setups (training/stages.py) return a `Stage`; the `Trainer` here runs it
without knowing which stage it is: setup, micro-steps, optimizer step, log, validation, checkpoint.

OUT/<stage> is the latest checkpoint (a link switched atomically to the newest OUT/<stage>.STEP directory, see
spectralar/checkpoint.py), OUT/<stage>_log.jsonl the metrics, OUT/<stage>_curves.png the curves and
OUT/<stage>_samples/ the periodic picture grids. One process at a time owns OUT (runtime.RunLock).

Guarantees (tests/test_train_faults.py): a checkpoint is never overwritten without `overwrite`, and nothing of the
old run is replaced before the new run has a checkpoint (runtime.RunFiles); SIGINT / SIGTERM finish the step,
checkpoint and raise SystemExit(130 / 143); `resume` continues exactly (the same per-step losses and final weights
as an uninterrupted run), discriminator and EMA included; the per-sample random draws of a step come from a
generator keyed by (seed, step) over the global batch, so P processes x B samples x A accumulation micro-steps
train the model that 1 process x P*A*B does (up to float summation order); the replicas are compared bit for bit
at every checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ..checkpoint import CheckpointError, optimizer_to_flat, read_meta, recover, save_checkpoint
from ..data import index_batches
from ..distributed import init_distributed
from ..models.ema import EMA
from ..progress import bar as progress_bar
from ..viz import plot_log
from .options import TrainOptions
from .resume import check_start, load_for_resume
from .runtime import (
    RunFiles,
    RunLock,
    StopFlag,
    check_replicas,
    collate_batch,
    discard_unused_out,
    ignore_signals,
    prepare_out,
    rank_state,
    trim_log,
)
from .schedule import lr_at
from .stages import SETUPS, Stage

__all__ = ["Interrupted", "Trainer", "step_draws", "train"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run without the checkpoint a first Ctrl-C during training writes: during start-up, or
    by a second Ctrl-C. The message says what the run folder holds."""


def step_draws(stage: Stage, step: int, seed: int, per_rank: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of step `step`'s random draws, made for the whole global batch from a generator keyed
    by (seed, step): sample i of the global batch gets the same draw whatever the world size and accumulation
    (rank r holds the global batch's samples r, r + world, ..., as `index_batches` deals them), and resuming
    needs no state."""
    g = torch.Generator().manual_seed((seed * 1000003 + step) ^ 0x5DEECE66D)
    return stage.draws(per_rank * world, g)[rank::world]


class Trainer:
    """One run of one stage. `Trainer(opts, ...)` sets it up (under the run folder's lock, on rank 0): tidy what an
    interrupted run left, check the start (fresh or resume), build the stage, load the checkpoint to resume.
    `run()` trains to `steps` (or `stop_at`, or a signal) and returns the model."""

    def __init__(self, opts: TrainOptions, device: torch.device, rank: int, world: int):
        self.opts, self.device, self.rank, self.world = opts, device, rank, world
        self.main = rank == 0
        self.out = Path(opts.out)
        self.ckpt = self.out / opts.stage
        meta = self._start()
        self.stage = s = SETUPS[opts.stage](opts, device, self.out, meta, self.main, world)
        self.ema = EMA(s.model, s.ema_decay) if s.ema_decay > 0 else None
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        if meta:
            batches = len(s.train_set) // world // (opts.batch_size * opts.accum)
            load_for_resume(s, self.ema, self.ckpt, meta, rank, device, batches)
            self.step, self.epoch, self.batch_pos = meta["step"], meta["train"]["epoch"], meta["train"]["batch"]
        self.run_id = (meta or {}).get("train", {}).get("run") if meta else uuid.uuid4().hex[:12]
        self.files = RunFiles(self.out, opts.stage, self.run_id or "legacy", fresh=meta is None)
        self.saved_at = self.step
        self.loss_fn, self.critic_fn = s.loss, s.critic.loss if s.critic else None
        if world > 1:
            ids = [device] if device.type == "cuda" else None
            self.loss_fn = nn.parallel.DistributedDataParallel(self.loss_fn, device_ids=ids, broadcast_buffers=False)
            if s.critic:
                self.critic_fn = nn.parallel.DistributedDataParallel(self.critic_fn, device_ids=ids,
                                                                     broadcast_buffers=False)
        self.n_params = sum(p.numel() for p in s.model.parameters())
        if self.main:
            if meta:
                trim_log(self.files.log, self.step)
            for note in s.notes:
                print(f"[{opts.stage}] {note}", flush=True)
            c = s.critic
            extra = f", {c.name} {sum(p.numel() for p in c.module.parameters()) / 1e6:.2f} M" if c else ""
            print(f"[{opts.stage}] {self.n_params / 1e6:.2f} M params{extra}, {len(s.train_set)} training items, "
                  f"world {world}, accum {opts.accum}, device {device}, from step {self.step}", flush=True)

    def _start(self) -> dict | None:
        """Tidy what an interrupted run left (rank 0), then the checkpoint to resume, or None."""
        out, stage = self.out, self.opts.stage
        if self.main:
            stale = [n for name in (stage, "tokenizer") for n in recover(out / name)]
            for tmp in out.glob("codes_*.tmp"):
                tmp.unlink()
                stale.append(tmp.name)
            try:
                run = read_meta(self.ckpt).get("train", {}).get("run") if os.path.lexists(self.ckpt) else None
            except CheckpointError:
                run = None
            stale += RunFiles.recover(out, stage, run)
            if stale:
                print(f"removed what an interrupted run left in {out}: {', '.join(stale)}", flush=True)
        if self.world > 1:
            dist.barrier()
        return check_start(self.opts, self.ckpt, self.world)

    # ---- one optimizer step -----------------------------------------------------------------------------------

    def micro_step(self, x, y, draws, last: bool, critic_on: bool) -> dict:
        """Forward and backward of one micro-batch (the critic's too once it is on); its scalar results."""
        opts, world = self.opts, self.world
        with contextlib.nullcontext() if last or world == 1 else self.loss_fn.no_sync():
            with self.autocast:
                res = self.loss_fn(x, y, draws, self.step)
            (res["loss"] / opts.accum).backward()
        if critic_on:
            critic = self.stage.critic
            with contextlib.nullcontext() if last or world == 1 else self.critic_fn.no_sync():
                with self.autocast:
                    d_loss = self.critic_fn(*critic.inputs(res))
                (d_loss / opts.accum).backward()
            res = {**res, "d_loss": d_loss}
        return {k: v.detach().float() for k, v in res.items() if torch.is_tensor(v) and v.numel() == 1}

    def train_step(self, x, y) -> tuple[dict, float, float]:
        """One optimizer step on this rank's batch x [accum x B, ...]: (mean scalar results, grad norm, lr)."""
        opts, s = self.opts, self.stage
        per_rank = opts.batch_size * opts.accum
        draws = step_draws(s, self.step, opts.seed, per_rank, self.rank, self.world).to(self.device)
        lr = lr_at(self.step, lr=opts.lr, warmup=opts.warmup, steps=opts.steps, min_lr_ratio=opts.min_lr_ratio)
        critic_on = s.critic is not None and self.step >= s.critic.start
        for o in (s.optimizer, s.critic.optimizer) if critic_on else (s.optimizer,):
            for g in o.param_groups:
                g["lr"] = lr
            o.zero_grad(set_to_none=True)
        sums = {}
        parts = zip(x.chunk(opts.accum), y.chunk(opts.accum), draws.chunk(opts.accum))
        for i, (xm, ym, dm) in enumerate(parts):
            for k, v in self.micro_step(xm, ym, dm, i == opts.accum - 1, critic_on).items():
                sums[k] = sums.get(k, 0) + v / opts.accum
        gnorm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), opts.clip if opts.clip > 0 else 1e9)
        s.optimizer.step()
        if critic_on:
            s.critic.optimizer.step()
        if s.after_step is not None:
            s.after_step()
        if self.ema is not None:
            self.ema.update(s.model)
        self.step, self.batch_pos = self.step + 1, self.batch_pos + 1
        loss = sums["loss"].item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}")
        return sums, float(gnorm), lr

    # ---- log, validation, checkpoint ----------------------------------------------------------------------------

    def log(self, sums: dict, gnorm: float, lr: float) -> None:
        """A train row: the step's results (the mean over the processes), and the speed over the steps since the
        last row (a partial interval counts the steps it had)."""
        metrics = sums
        if self.world > 1:  # logged as the mean over the processes, like a one-process run's batch mean
            mean = torch.stack(list(metrics.values()))
            dist.all_reduce(mean)
            metrics = dict(zip(metrics, (mean / self.world).tolist()))
        if not self.main:
            return
        dt = time.time() - self.t0
        steps = self.step - self.logged_at
        row = {"split": "train", "step": self.step, "lr": lr, "grad_norm": gnorm,
               "steps_per_s": steps / dt if dt else 0.0, "items_per_s": self.seen / dt if dt else 0}
        row.update({k: float(v) for k, v in metrics.items()})
        self._write(row)
        self.t0, self.seen, self.logged_at = time.time(), 0, self.step
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")

    def _write(self, row: dict) -> None:
        with open(self.files.log, "a") as f:
            f.write(json.dumps(row) + "\n")

    def validate(self) -> None:
        """Rank 0: a validation row and picture grid, with the EMA weights when there are some."""
        model, ema = self.stage.model, self.ema
        if ema is not None:  # validation, like sampling, sees the averaged weights
            ema.swap(model)
        try:
            row = self.stage.validate(model, self.step, self.files.samples)
        finally:
            if ema is not None:
                ema.swap(model)
        if row is not None:
            self._write(row)
            tqdm.write(f"[{self.opts.stage}] step {self.step} val " + " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))

    def checkpoint(self, final: bool = False) -> None:
        """Every rank calls this: the replicas are compared and their own state gathered for rank 0 to write."""
        opts, s, world = self.opts, self.stage, self.world
        critic = s.critic
        dtype = torch.float16 if (final and opts.save_dtype == "fp16") else None
        extra, train_meta = {}, {}
        if world > 1:
            check_replicas(s.model, self.step)
            if critic:
                check_replicas(critic.module, self.step)
            if dtype is None:
                states = [None] * world
                dist.all_gather_object(states, rank_state(s.model, self.device))
                extra = {f"rank{r}.{k}": v for r in range(1, world) for k, v in states[r].items()}
        if critic and dtype is None:
            extra.update({f"{critic.name}.{k}": v.detach().cpu() for k, v in critic.module.state_dict().items()})
            tensors, train_meta[f"{critic.name}_optimizer"] = optimizer_to_flat(critic.optimizer,
                                                                                 f"{critic.name}_opt")
            extra.update(tensors)
        if self.main:
            run = {"run": self.run_id} if self.run_id else {}
            save_checkpoint(self.ckpt, opts.stage, s.model, s.config, self.step,
                            train={"epoch": self.epoch, "batch": self.batch_pos, "world": world, "classes": s.classes,
                                   "args": opts.record(), **run, **s.train_meta, **train_meta},
                            optimizer=None if dtype else s.optimizer, save_rng=dtype is None, dtype=dtype, extra=extra,
                            versioned=True, ema=self.ema.state_dict() if self.ema else None)
            if self.files.pending:  # the run's first checkpoint: now its log and pictures replace the old ones
                self.files.promote()
                if s.after_first_checkpoint is not None:
                    s.after_first_checkpoint()
        self.saved_at = self.step

    # ---- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> nn.Module:
        opts, s, world = self.opts, self.stage, self.world
        if self.device.type == "cuda":  # fp32 master weights, bf16 matmuls
            self.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            self.autocast = torch.autocast("cpu", enabled=False)
        per_rank = opts.batch_size * opts.accum
        self.bar = progress_bar(total=opts.steps, initial=self.step, desc=opts.stage, unit="step", leave=True,
                                enabled=self.main)
        self.t0, self.seen, self.logged_at, stop = time.time(), 0, self.step, 0
        end = opts.stop_at if opts.stop_at is not None else opts.steps
        s.model.train()
        with StopFlag(world, self.device, self.main) as flag:
            while self.step < end and not stop:
                batches = index_batches(len(s.train_set), per_rank, opts.seed, self.epoch, self.rank, world)
                loader = torch.utils.data.DataLoader(
                    s.train_set, batch_sampler=batches[self.batch_pos:], num_workers=opts.num_workers,
                    collate_fn=collate_batch, generator=torch.Generator().manual_seed(opts.seed + self.epoch),
                    worker_init_fn=ignore_signals if opts.num_workers else None)
                for x, y in loader:
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    sums, gnorm, lr = self.train_step(x, y)
                    self.seen += x.shape[0] * world
                    if self.step % opts.log_every == 0 or self.step == opts.steps:
                        self.log(sums, gnorm, lr)
                    self.bar.update(1)
                    if self.main and (self.step % opts.eval_every == 0 or self.step == opts.steps):
                        self.validate()
                    if self.step % opts.ckpt_every == 0 and self.step < opts.steps:
                        self.checkpoint()
                    stop = flag.agreed()
                    if self.step >= end or stop:
                        break
                else:
                    self.epoch, self.batch_pos = self.epoch + 1, 0
            self.bar.close()
            if self.step < opts.steps:  # stopped early, by a signal or stop_at: a resumable checkpoint
                if self.saved_at != self.step or self.files.pending:
                    self.checkpoint()
            else:
                self.checkpoint(final=True)
        if stop and self.step < opts.steps:
            if self.main:
                print(f"[{opts.stage}] stopped by {signal.Signals(stop).name} at step {self.step}; checkpoint "
                      f"{self.ckpt} (resume it to continue)", flush=True)
            raise SystemExit(128 + stop)
        if self.main:
            if self.files.log.exists():
                plot_log(self.files.log, self.out / f"{opts.stage}_curves.png", s.curves,
                         title=f"{opts.stage} ({self.n_params / 1e6:.2f} M)")
            print(f"[{opts.stage}] done at step {self.step}; checkpoint {self.ckpt}", flush=True)
        if world > 1:
            dist.barrier()
        return s.model


def _holds(ckpt: Path) -> str:
    """What checkpoint `ckpt` holds now, for a message."""
    try:
        return f"the last checkpoint, {ckpt} at step {read_meta(ckpt)['step']}, is intact"
    except CheckpointError:
        return f"no checkpoint was written to {ckpt}"


def train(opts: TrainOptions) -> nn.Module:
    """Train one stage; returns the trained model (on every rank). Raises ValueError / DataError /
    CheckpointError before any work for bad options, data or checkpoints, SystemExit(128 + signal) when stopped
    by SIGINT / SIGTERM (after writing a checkpoint to resume from), and `Interrupted` when Ctrl-C came during
    start-up or twice (its message says what the run folder holds)."""
    opts.check()
    started, created, rank = False, False, 0
    ckpt = Path(opts.out) / opts.stage
    try:
        if opts.threads:
            torch.set_num_threads(opts.threads)
        device = torch.device(opts.device)
        rank, world = init_distributed(device)
        out = Path(opts.out)
        created = prepare_out(out)
        argv = getattr(sys, "orig_argv", sys.argv)  # with `python -m spectralar.train` it names the module
        command = " ".join([os.path.basename(argv[0] or "python"), *argv[1:]])
        with RunLock(out, command) if rank == 0 else contextlib.nullcontext() as lock:
            if lock is not None and lock.stale:
                print(f"{out}: taking over the lock of pid {lock.stale.get('pid')} on {lock.stale.get('host')}, "
                      "which ended without releasing it", flush=True)
            trainer = Trainer(opts, device, rank, world)
            started = True
            return trainer.run()
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        when = "by a second Ctrl-C" if started else "during start-up, before training began"
        raise Interrupted(f"aborted {when}; {_holds(ckpt)}") from None
    finally:
        if created and not started and rank == 0:  # stopped before training: leave no folder behind
            discard_unused_out(Path(opts.out))
