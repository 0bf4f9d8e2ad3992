"""Starting a run: refuse to overwrite or to resume what is not there, and load a checkpoint for an exact
continuation after checking everything in it that the continuation depends on (step, data position, optimizer
state, RNG states), so a damaged or hand-edited checkpoint fails with one line naming what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_into, load_train_state, load_weights, optimizer_from_flat, read_meta
from ..models.ema import EMA
from .options import TrainOptions
from .runtime import load_rank_state

__all__ = ["check_start", "load_for_resume"]


def _count(d: dict, where: str, key: str, low: int, label: str) -> int:
    if key not in d:
        raise CheckpointError(f"{where} lacks {label}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise CheckpointError(f"{where}: {label} must be an integer >= {low}, got {v!r}")
    return v


def check_start(opts: TrainOptions, ckpt: Path, world: int) -> dict | None:
    """The checkpoint to resume (its config.json), or None for a fresh run; refuses to overwrite or to resume what
    is not there, unreadable, damaged or incompatible with the options."""
    exists = os.path.lexists(ckpt)
    if not opts.resume:
        if exists and not opts.overwrite:
            try:
                meta = read_meta(ckpt)
                what = f"a {meta['kind']} checkpoint at step {meta.get('step')}"
            except CheckpointError:
                what = "a checkpoint"
            raise CheckpointError(f"{ckpt} already holds {what}: pass `resume` to continue it or `overwrite` "
                                  "to replace it")
        return None
    if not exists:
        raise CheckpointError(f"`resume`: there is no checkpoint at {ckpt} (drop `resume` to start a new run)")
    meta = read_meta(ckpt)
    where = f"{ckpt}/config.json"
    if meta["kind"] != opts.stage:
        raise CheckpointError(f"`resume`: {ckpt} holds a {meta['kind']}, not a {opts.stage}")
    train = meta.get("train")
    if not isinstance(train, dict) or "optimizer" not in train:
        raise CheckpointError(f"{ckpt} has no optimizer state (a shipped model?); it cannot be resumed")
    step = _count(meta, where, "step", 0, "step")
    for key, low in (("epoch", 0), ("batch", 0), ("world", 1)):
        _count(train, where, key, low, f"train.{key}")
    opt = train["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("scalars"),
                                                                                                 dict)):
        raise CheckpointError(f"{where}: train.optimizer is malformed (expected param_groups and scalars)")
    args = train.get("args", {})
    if not isinstance(args, dict):
        raise CheckpointError(f"{where}: train.args must be a JSON object")
    if opts.steps <= step:
        raise ValueError(f"`steps` {opts.steps} must exceed the step of the checkpoint to resume ({step}, {ckpt})")
    if opts.stop_at is not None and opts.stop_at <= step:
        raise ValueError(f"`stop_at` {opts.stop_at} must exceed the step of the checkpoint ({step})")
    saved = {"seed": args.get("seed"), "batch_size": args.get("batch_size"), "accum": args.get("accum", 1),
             "world": train.get("world")}
    now = {"seed": opts.seed, "batch_size": opts.batch_size, "accum": opts.accum, "world": world}
    for key, val in saved.items():
        if val is not None and val != now[key]:
            name = "the number of processes" if key == "world" else f"`{key}`"
            raise ValueError(f"`resume`: {ckpt} was trained with {name} {val}, this run has {now[key]}; an exact "
                             "resume needs the same (the data order depends on it)")
    return meta


def _check_optimizer(opt: torch.optim.Optimizer, where: str, what: str) -> None:
    """Every state tensor of a loaded optimizer has its parameter's shape (or is a scalar step count): torch's
    load_state_dict takes any shape and the first step would fail, or broadcast silently."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                    raise CheckpointError(f"{where}: the {what} state {k!r} has shape {list(v.shape)} for a "
                                          f"parameter of shape {list(p.shape)}")


def _check_rng(saved: dict, where: str) -> None:
    want = torch.get_rng_state()
    keys = [k for k in saved if k == "rng.cpu" or k.endswith(".rng.cpu")]
    if "rng.cpu" not in saved:
        raise CheckpointError(f"{where}: rng.cpu is missing (the random state an exact resume needs)")
    for k in keys:
        t = saved[k]
        if t.dtype != want.dtype or t.shape != want.shape:
            raise CheckpointError(f"{where}: {k} is {t.dtype} {list(t.shape)}, not a random state "
                                  f"({want.dtype} {list(want.shape)}); truncated?")


def load_for_resume(stage, ema: EMA | None, ckpt: Path, meta: dict, rank: int, device,
                    batches_per_epoch: int) -> None:
    """Load everything a checkpoint holds for an exact continuation into `stage` (model, optimizer, this rank's
    buffers and RNG, EMA, critic), checking it first."""
    where = f"{ckpt}/train.safetensors"
    batch = meta["train"]["batch"]
    if batch > batches_per_epoch:
        raise CheckpointError(f"{ckpt}/config.json: batch {batch} lies beyond the {batches_per_epoch} batches of an "
                              "epoch of this data")
    load_into(stage.model, load_weights(ckpt, meta, ema=False), str(ckpt))
    try:
        saved = load_train_state(ckpt, None, meta)  # restores the random states it holds
    except RuntimeError as e:
        raise CheckpointError(f"{where}: its random state cannot be restored, truncated? "
                              f"({str(e).splitlines()[0]})") from None
    _check_rng(saved, where)
    try:
        optimizer_from_flat(stage.optimizer, saved, meta["train"]["optimizer"])
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{where}: the optimizer state does not fit this model ({e!r})") from None
    _check_optimizer(stage.optimizer, where, "optimizer")
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
        try:
            optimizer_from_flat(c.optimizer, saved, meta["train"][f"{c.name}_optimizer"], prefix=f"{c.name}_opt")
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{where}: the {c.name} optimizer state does not fit ({e!r})") from None
        _check_optimizer(c.optimizer, where, f"{c.name} optimizer")
