"""What training needs whatever the stage: the run's options, the record a stage setup returns, the optimizer,
and the process-level machinery (signals, replica checks, the output folder)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch

STAGES = ("tokenizer", "generator")


@dataclass
class TrainOptions:
    """One training run (what `python -m spectralar.train STAGE` flags set; the library takes this, not argparse).

    `overrides` are typed config fields applied to the preset (see `parse_overrides`); `tokenizer` is the
    generator stage's tokenizer checkpoint (default OUT/tokenizer). `batch_size` is per process and micro-step:
    one optimizer step sees batch_size x accum x processes samples.
    """

    stage: str
    out: str | os.PathLike
    data: str = "fmnist"
    preset: str = "fmnist"
    overrides: dict = field(default_factory=dict)
    mapping: str | None = None
    tokenizer: str | os.PathLike | None = None
    steps: int = 1000
    batch_size: int = 64
    accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.05
    clip: float = 1.0
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    stop_at: int | None = None
    threads: int | None = None
    device: str | torch.device = "cpu"
    num_workers: int = 0
    skip_bad_images: bool = False
    val_size: int = 1000
    save_dtype: str = "fp32"

    def check(self) -> None:
        """Checks that need nothing but the options, before any work (one-line ValueErrors naming the flag)."""
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch_size", "accum", "log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "num_workers", "val_size", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"--min-lr-ratio must lie in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{_flag(name)} must be a finite number >= 0, got {getattr(self, name)}")
        if self.stop_at is not None and not (1 <= self.stop_at <= self.steps):
            raise ValueError(f"--stop-at must lie in [1, --steps={self.steps}], got {self.stop_at}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the checkpoint and --overwrite replaces it: pass one of them")
        if self.resume and (self.overrides or self.mapping):
            raise ValueError("--set / --mapping cannot change the config of a resumed run (it is the checkpoint's)")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ValueError(f"--save-dtype must be fp32 or fp16, got {self.save_dtype!r}")
        if torch.device(self.device).type not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device}: training runs on cpu or cuda")

    def record(self) -> dict:
        """The options as JSON for the checkpoint (what a resume is compared with)."""
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, os.PathLike | torch.device) else v for k, v in d.items()}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_overrides(config, items) -> dict:
    """KEY=VALUE strings -> {field: value}, each value parsed as the type of the field of `config` it replaces."""
    fields = {f.name for f in dataclasses.fields(config)}
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        cur = getattr(config, key)
        try:
            if isinstance(cur, list):
                new = [int(v) for v in val.split(",")] if val.strip() else []
            elif isinstance(cur, bool):
                new = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[val.lower()]
            elif isinstance(cur, float):
                new = float(val)
                if not math.isfinite(new):
                    raise ValueError
            else:
                new = type(cur)(val)
        except (ValueError, KeyError):
            kind = "comma-separated integers" if isinstance(cur, list) else f"a finite {type(cur).__name__}"
            raise ValueError(f"--set {item!r}: {key} must be {kind}") from None
        out[key] = new
    return out
