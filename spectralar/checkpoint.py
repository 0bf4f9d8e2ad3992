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
removes what an interrupted write leaves behind, and never a complete checkpoint that nothing supersedes. A write
that fails (a full disk) removes its temporary directory and raises `CheckpointWriteError`, the previous checkpoint
untouched. Files get the permissions the umask gives any new file. Loading checks the JSON against the weights
(a known format version, the promised shapes, float weights with finite values) and names what is wrong.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT, VERSION = "spectralar-checkpoint", 1
KNOWN_VERSIONS = (1,)  # format versions this code reads

__all__ = ["CheckpointError", "CheckpointWriteError", "FORMAT", "VERSION", "cast_weights", "fingerprint", "load_into",
           "load_train_state", "load_weights", "optimizer_from_flat", "optimizer_to_flat", "publish", "read_meta",
           "recover", "run_folder_marks", "save_checkpoint", "save_tensors", "step_of"]


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt, truncated or does not match its config."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (e.g. no space left on device); nothing of it was published. An OSError too, so
    callers that handle file-system errors see it as one."""


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


def cast_weights(state: dict, dtype: torch.dtype | None = None, where: str = "") -> dict:
    """Detached, contiguous CPU copies of the tensors of `state`, float ones cast to `dtype` (None: kept).
    Raises CheckpointError when a finite value does not fit the new dtype (1e6 would become inf in fp16), so a
    checkpoint is never written with values it cannot represent."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and v.dtype != dtype:
            c = v.to(dtype)
            lost = torch.isinf(c) & torch.isfinite(v)
            if lost.any():
                big = float(v[lost].abs().max())
                raise CheckpointError(f"{where or 'checkpoint'}: {k} holds {big:.6g}, beyond the largest "
                                      f"{str(dtype).replace('torch.', '')} value ({torch.finfo(dtype).max:.6g}); "
                                      "it would be stored as inf. Keep fp32 (export --dtype fp32, train "
                                      "--save-dtype fp32)")
            v = c
        out[k] = v.contiguous()
    return out


def save_checkpoint(path, kind: str, model: torch.nn.Module, config: dict, step: int = 0, train: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, save_rng: bool = False,
                    dtype: torch.dtype | None = None, extra: dict | None = None, versioned: bool = False,
                    ema: dict | None = None) -> Path:
    """Write checkpoint directory `path`, never leaving it torn. `dtype` (e.g. fp16) casts float weights for
    shipping (CheckpointError, before anything is written, for a value the dtype cannot hold); `extra` tensors go
    to train.safetensors; `ema` (a state dict with the model's entries, see spectralar/models/ema.py) to
    ema.safetensors. versioned=True: `path` becomes a link switched atomically to a fresh `NAME.STEP` directory
    (see the module docstring); otherwise `path` is a plain directory, replaced by two renames (a training run's
    checkpoint link is refused: replacing it would orphan the data it points to). A failed write (full disk)
    raises CheckpointWriteError and leaves no temporary directory."""
    path = Path(path)
    if not versioned and path.is_symlink():
        raise CheckpointError(f"{path} is a training run's checkpoint (a link to {os.readlink(path)}); refusing to "
                              "replace it with a plain copy: write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = cast_weights(model.state_dict(), dtype, str(path))
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config, "step": step,
            "train": dict(train or {}), "tensors": {k: list(v.shape) for k, v in weights.items()}}
    if ema is not None:
        ema = cast_weights(ema, dtype, f"{path} (EMA)")
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
    files = {"model.safetensors": weights, "ema.safetensors": ema, "train.safetensors": extra or None}
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _write_tree(tmp, {k: v for k, v in files.items() if v is not None}, meta, path)
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


def _write_tree(tmp: Path, files: dict, meta: dict, path: Path) -> None:
    """Write the safetensors `files` and config.json into a fresh directory `tmp`, with the permissions the umask
    gives new files (safetensors itself creates them 0600). On failure `tmp` is removed and CheckpointWriteError
    names the cause, e.g. a full disk."""
    try:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        for name, tensors in files.items():
            save_tensors(tensors, tmp / name)
        with open(tmp / "config.json", "w") as f:
            json.dump(meta, f, indent=1)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "StorageFull" in str(e)
        why = "no space left on device" if full else (getattr(e, "strerror", None) or str(e))
        raise CheckpointWriteError(f"cannot write the checkpoint {path}: {why}; the previous checkpoint there (if any) "
                                   "is unchanged") from None


def save_tensors(tensors: dict, path, metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save_file, with the permissions the umask gives any new file (safetensors creates its
    files 0600, so a model exported for shipping was unreadable by other users)."""
    save_file(tensors, str(path)) if metadata is None else save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fingerprint(ckpt) -> str:
    """sha1 of a checkpoint's weights (and of its EMA weights, which loading prefers, when it has them): the
    identity a generator records of the tokenizer it was trained on (`tokenizer_sha1`)."""
    ckpt = Path(ckpt)
    h = hashlib.sha1()
    for name in ("model.safetensors", "ema.safetensors"):
        if name == "model.safetensors" or (ckpt / name).exists():
            with open(ckpt / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


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


STAGES = ("tokenizer", "generator")
LOCK_FILE = ".spectralar.lock"  # a training run's lock on its output folder


def run_folder_marks(folder) -> list[str]:
    """What makes `folder` a training run's output folder (empty when nothing does): its metrics logs
    (`STAGE_log.jsonl`), checkpoint links and `NAME.STEP` data directories, its lock, or a checkpoint that holds
    optimizer state (one that can be resumed). Such a folder belongs to training: nothing else writes into it."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:  # a folder we may not list holds nothing we wrote
        return []
    marks = []
    for p in entries:
        if p.name in [f"{s}_log.jsonl" for s in STAGES] or p.name == LOCK_FILE:
            marks.append(p.name)
        elif p.is_symlink() and re.fullmatch(re.escape(p.name) + r"\.\d+(\.\d+)?", os.readlink(p)):
            marks.append(f"{p.name} -> {os.readlink(p)}")
        elif p.is_dir() and re.fullmatch(r"(\w+)\.\d{7}(\.\d+)?", p.name):
            marks.append(p.name)
        elif p.name in STAGES and p.is_dir():
            try:
                if "optimizer" in read_meta(p).get("train", {}):
                    marks.append(f"{p.name} (resumable, with optimizer state)")
            except (CheckpointError, AttributeError, TypeError):
                pass
    return marks


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

    A missing or dangling `path` beside complete `NAME.STEP` directories is linked to the newest one; a missing
    `path` beside the previous plain directory that an interrupted plain write had moved aside is given it back.
    Temporary directories and links of dead processes are deleted, and `NAME.STEP` directories only when they are
    superseded: `path` links to another of them, or `path` is a resumable plain directory (the layout before links,
    whose conversion was interrupted). A complete checkpoint that nothing supersedes is never deleted: beside a
    weights-only plain `path` (an export written over a run's link), the `NAME.STEP` stay.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    versions = _versions(path)
    temp = re.compile(r"\." + re.escape(path.name) + r"\.(tmp|old|link)-(\d+)")
    stale = [(p, m[1]) for p in sorted(path.parent.iterdir()) if (m := temp.fullmatch(p.name)) and _dead(int(m[2]))]
    if not os.path.lexists(path):  # a plain write stopped between its two renames: the old data is complete
        for p, what in stale:
            if what == "old" and p.is_dir() and not p.is_symlink() and (p / "config.json").is_file():
                os.rename(p, path)
                _fsync(path.parent)
                break
    if versions and not path.exists():  # missing, or a link to a directory that is gone
        link = path.parent / f".{path.name}.link-{os.getpid()}"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(versions[-1].name, link)
        os.replace(link, path)
        _fsync(path.parent)
    removed = []
    for p, _ in stale:
        if not os.path.lexists(p):  # given back above
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            os.unlink(p)
        removed.append(p.name)
    if path.is_symlink():
        live = path.resolve()
        superseded = [p for p in versions if p.resolve() != live] if live in [v.resolve() for v in versions] else []
    else:  # a plain directory: the live checkpoint of the layout before links only when it can be resumed (an
        # interrupted conversion left the versions); a weights-only copy supersedes nothing
        superseded = versions if (path / "train.safetensors").is_file() else []
    for p in superseded:
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
    version = meta.get("version")
    if type(version) is not int or version not in KNOWN_VERSIONS:
        newer = type(version) is int and version > max(KNOWN_VERSIONS)
        raise CheckpointError(f"{path}/config.json: checkpoint format version {version!r} is unknown (this spectralar "
                              f"reads {', '.join(map(str, KNOWN_VERSIONS))})"
                              + ("; it was written by a newer spectralar: upgrade to load it" if newer else ""))
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
    """Load weights into a freshly built model, naming any mismatch (config vs weights). Float entries must be
    stored as floats (fp16 / bf16 are widened) and hold only finite values; other entries must keep the model's
    dtype: a cast that would silently change them (int32 weights, NaN everywhere) is a CheckpointError."""
    own = model.state_dict()
    bad = [k for k in own if k not in weights or tuple(own[k].shape) != tuple(weights[k].shape)]
    if bad or set(weights) - set(own):
        raise CheckpointError(f"{where}: weights do not fit the model built from its config "
                              f"(e.g. {(bad or sorted(set(weights) - set(own)))[:3]})")
    for k, v in weights.items():
        want = own[k].dtype
        if want.is_floating_point != v.is_floating_point() or (not want.is_floating_point and v.dtype != want):
            raise CheckpointError(f"{where}: {k} is stored as {str(v.dtype).replace('torch.', '')}, the model needs "
                                  f"{str(want).replace('torch.', '')}; the checkpoint is corrupt or not this model's")
        if v.is_floating_point() and not (n := int((~torch.isfinite(v)).sum())) == 0:
            raise CheckpointError(f"{where}: {k} holds {n} non-finite value(s) (NaN or inf) of {v.numel()}; the "
                                  "weights are corrupt or training diverged: use an earlier checkpoint")
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
