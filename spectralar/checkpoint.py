"""Checkpoints: one directory each, safetensors weights + a JSON file; no pickle anywhere.

    DIR/config.json        {"format", "version", "kind", "config", "step", "train": {...}, "tensors": {name: shape}}
    DIR/model.safetensors  model weights and persistent buffers (the raw, trained ones)
    DIR/ema.safetensors    optional: the exponential moving average of the same entries (config.json "ema": true);
                           what `load_weights` returns by default, so sampling and evaluation use it
    DIR/train.safetensors  optional: optimizer state tensors, RNG states, per-rank state and auxiliary networks
                           (the tokenizer's discriminator and its optimizer), for exact resume

Every file is written into a temporary sibling directory and fsynced before anything is renamed. Training
writes with `versioned=True`: the data goes to a fresh sibling `NAME.STEP` and `NAME` is a relative symbolic
link switched to it with one atomic rename, so at every instant `NAME` is a complete checkpoint (the old or
the new one); the old data directory is deleted after the switch. `recover` (run by training at start-up)
removes what an interrupted write leaves behind. Loading checks the JSON against the weights and names what
is wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT, VERSION = "spectralar-checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt, truncated or does not match its config."""


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str = "opt"):
    """(tensors named PREFIX.PARAM_ID.KEY for a safetensors file, JSON-able rest) of an optimizer's state."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "opt"):
    """Load into `opt` what `optimizer_to_flat` wrote (the tensors of one prefix, among others)."""
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith(prefix + "."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path, kind: str, model: torch.nn.Module, config: dict, step: int = 0, train: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, save_rng: bool = False,
                    dtype: torch.dtype | None = None, extra: dict | None = None, versioned: bool = False,
                    ema: dict | None = None) -> Path:
    """Write checkpoint directory `path`, never leaving it torn. `dtype` (e.g. fp16) casts float weights for
    shipping; `extra` tensors go to train.safetensors; `ema` (a state dict with the model's entries, see
    spectralar/models/ema.py) to ema.safetensors. versioned=True: `path` becomes a link switched atomically to a fresh
    `NAME.STEP` directory (see the module docstring); otherwise `path` is a plain directory, replaced by two
    renames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cast(state):
        out = {}
        for k, v in state.items():
            v = v.detach().cpu()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[k] = v.contiguous()
        return out

    weights = cast(model.state_dict())
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config, "step": step,
            "train": dict(train or {}), "tensors": {k: list(v.shape) for k, v in weights.items()}}
    if ema is not None:
        ema = cast(ema)
        if {k: list(v.shape) for k, v in ema.items()} != meta["tensors"]:
            raise ValueError("save_checkpoint: the EMA state does not have the model's entries and shapes")
        meta["ema"] = True
    extra = dict(extra or {})
    if optimizer is not None:
        opt_tensors, meta["train"]["optimizer"] = optimizer_to_flat(optimizer)
        extra.update(opt_tensors)
    if save_rng:
        extra["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                extra[f"rng.cuda{i}"] = s
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.mkdir(tmp)
    save_file(weights, str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(ema, str(tmp / "ema.safetensors"))
    if extra:
        save_file(extra, str(tmp / "train.safetensors"))
    with open(tmp / "config.json", "w") as f:
        json.dump(meta, f, indent=1)
    if versioned:
        return publish(tmp, path, step)
    _fsync_tree(tmp)
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync(path.parent)
    if os.path.lexists(old):
        shutil.rmtree(old)
    return path


def _fsync_tree(d: Path) -> None:
    """Flush the files of directory `d` (one level) and `d` itself to disk."""
    for name in os.listdir(d):
        _fsync(d / name)
    _fsync(d)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _versions(path: Path) -> list[Path]:
    """Data directories `NAME.STEP[.K]` beside `path`, oldest first."""
    pat = re.compile(re.escape(path.name) + r"\.(\d+)(?:\.(\d+))?")
    found = []
    for p in path.parent.iterdir() if path.parent.is_dir() else []:
        m = pat.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append(((int(m[1]), int(m[2] or 0)), p))
    return [p for _, p in sorted(found)]


def publish(src: Path, path, step: int) -> Path:
    """Make the complete directory `src` the checkpoint `path` (the versioned layout).

    src is flushed to disk and renamed to a fresh `NAME.STEP` beside `path`, then a new relative link replaces
    `path` in one atomic rename, then the directory `path` pointed to before is deleted. A crash at any point leaves
    `path` naming the old or the new data (a legacy plain directory `path` is first renamed to its own
    `NAME.STEP`; a crash right then leaves no `path`, which `recover` re-links to the newest version).
    """
    path = Path(path)
    parent = path.parent
    old = None
    if path.is_symlink():
        old = parent / os.readlink(path)
    _fsync_tree(src)
    data = _fresh_version(path, step)
    os.rename(src, data)
    if path.is_dir() and not path.is_symlink():  # a checkpoint written before the versioned layout
        old = _fresh_version(path, step_of(path))
        os.rename(path, old)
    link = parent / f".{path.name}.link-{os.getpid()}"
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(data.name, link)
    os.replace(link, path)
    _fsync(parent)
    if old is not None and old.resolve() != data.resolve() and old.is_dir():
        shutil.rmtree(old)
    return path


def _fresh_version(path: Path, step: int) -> Path:
    base = path.parent / f"{path.name}.{step:07d}"
    data, k = base, 0
    while os.path.lexists(data):
        k += 1
        data = base.with_name(f"{base.name}.{k}")
    return data


def step_of(path) -> int:
    """The step a checkpoint records (0 when unreadable)."""
    try:
        return int(read_meta(path).get("step", 0))
    except (CheckpointError, TypeError, ValueError):
        return 0


def _dead(pid: int) -> bool:
    """True when no other process has id `pid` (its temporaries are stale)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(path) -> list[str]:
    """Repair and tidy what an interrupted write of checkpoint `path` left; returns the names removed.

    A missing or dangling `path` beside complete `NAME.STEP` directories is linked to the newest one.
    Temporary directories and links of dead processes and `NAME.STEP` directories that `path` does not
    point to are deleted.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    versions = _versions(path)
    if versions and not path.exists():  # missing, or a link to a directory that is gone
        link = path.parent / f".{path.name}.link-{os.getpid()}"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(versions[-1].name, link)
        os.replace(link, path)
        _fsync(path.parent)
    removed = []
    live = path.resolve() if path.is_symlink() else None
    temp = re.compile(r"\." + re.escape(path.name) + r"\.(tmp|old|link)-(\d+)")
    for p in sorted(path.parent.iterdir()):
        m = temp.fullmatch(p.name)
        if m and _dead(int(m[2])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                os.unlink(p)
            removed.append(p.name)
    for p in versions:
        if p.resolve() != live:
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def read_meta(path) -> dict:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise CheckpointError(f"{path} links to {os.readlink(path)}, which is missing")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    try:
        meta = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: config.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/config.json is corrupt or truncated: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}/config.json is not a spectralar checkpoint")
    for key in ("kind", "config", "tensors"):
        if key not in meta:
            raise CheckpointError(f"{path}/config.json lacks {key!r}")
    return meta


def load_weights(path, meta: dict | None = None, ema: bool = True) -> dict:
    """The weights of checkpoint `path`, checked against the shapes its config.json promises: the EMA weights
    when it has them (what sampling and evaluation should use) unless ema=False, else the trained ones."""
    path = Path(path)
    meta = meta or read_meta(path)
    name = "ema.safetensors" if ema and meta.get("ema") else "model.safetensors"
    f = path / name
    if not f.exists():
        raise CheckpointError(f"{path}: {name} is missing")
    try:
        weights = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is corrupt or truncated: {e}") from None
    want = meta["tensors"]
    if set(weights) != set(want):
        missing, extra = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
        raise CheckpointError(f"{f} does not match config.json: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, shape in want.items():
        if list(weights[k].shape) != shape:
            raise CheckpointError(f"{f}: {k} has shape {list(weights[k].shape)}, config.json says {shape}")
    return weights


def load_into(model: torch.nn.Module, weights: dict, where: str = "") -> None:
    """Load weights into a freshly built model, naming any mismatch (config vs weights)."""
    own = model.state_dict()
    bad = [k for k in own if k not in weights or tuple(own[k].shape) != tuple(weights[k].shape)]
    if bad or set(weights) - set(own):
        raise CheckpointError(f"{where}: weights do not fit the model built from its config "
                              f"(e.g. {(bad or sorted(set(weights) - set(own)))[:3]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def load_train_state(path, optimizer: torch.optim.Optimizer | None, meta: dict) -> dict:
    """Restore optimizer state and RNG states saved with the checkpoint (for --resume); returns all the
    tensors of train.safetensors (the caller's own `extra` entries among them)."""
    f = Path(path) / "train.safetensors"
    if not f.exists():
        raise CheckpointError(f"{path}: train.safetensors is missing; this checkpoint cannot be resumed")
    try:
        extra = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is corrupt or truncated: {e}") from None
    if optimizer is not None:
        optimizer_from_flat(optimizer, extra, meta["train"]["optimizer"])
    if "rng.cpu" in extra:
        torch.set_rng_state(extra["rng.cpu"])
    if torch.cuda.is_available():
        states = [extra[k] for k in sorted(extra) if k.startswith("rng.cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return extra
