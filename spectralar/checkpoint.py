"""Checkpoints: one directory each, safetensors weights + a JSON file; no pickle anywhere.

    DIR/config.json        {"format", "version", "kind", "config", "step", "train": {...}, "tensors": {name: shape}}
    DIR/model.safetensors  model weights and persistent buffers
    DIR/train.safetensors  optional: optimizer state tensors and RNG states, for exact resume

A checkpoint is written to a temporary sibling directory and renamed into place, so an interrupted write
never destroys the previous one. Loading checks the JSON against the weights and names what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT, VERSION = "spectralar-checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt, truncated or does not match its config."""


def _optimizer_to_flat(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path, kind: str, model: torch.nn.Module, config: dict, step: int = 0, train: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, save_rng: bool = False,
                    dtype: torch.dtype | None = None) -> Path:
    """Atomically write checkpoint directory `path`. `dtype` (e.g. fp16) casts float weights for shipping."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        weights[k] = v.contiguous()
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config, "step": step,
            "train": dict(train or {}), "tensors": {k: list(v.shape) for k, v in weights.items()}}
    extra = {}
    if optimizer is not None:
        extra, meta["train"]["optimizer"] = _optimizer_to_flat(optimizer)
    if save_rng:
        extra["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                extra[f"rng.cuda{i}"] = s
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "model.safetensors"))
    if extra:
        save_file(extra, str(tmp / "train.safetensors"))
    with open(tmp / "config.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_meta(path) -> dict:
    path = Path(path)
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


def load_weights(path, meta: dict | None = None) -> dict:
    """The weights of checkpoint `path`, checked against the shapes its config.json promises."""
    path = Path(path)
    meta = meta or read_meta(path)
    f = path / "model.safetensors"
    if not f.exists():
        raise CheckpointError(f"{path}: model.safetensors is missing")
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


def load_train_state(path, optimizer: torch.optim.Optimizer | None, meta: dict) -> None:
    """Restore optimizer state and RNG states saved with the checkpoint (for --resume)."""
    f = Path(path) / "train.safetensors"
    if not f.exists():
        raise CheckpointError(f"{path}: train.safetensors is missing; this checkpoint cannot be resumed")
    try:
        extra = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is corrupt or truncated: {e}") from None
    if optimizer is not None:
        _optimizer_from_flat(optimizer, extra, meta["train"]["optimizer"])
    if "rng.cpu" in extra:
        torch.set_rng_state(extra["rng.cpu"])
    if torch.cuda.is_available():
        states = [extra[k] for k in sorted(extra) if k.startswith("rng.cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
