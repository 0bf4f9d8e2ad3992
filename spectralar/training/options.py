"""The options of a training run (`TrainOptions`, with the per-stage defaults that `python -m spectralar.train` shows
too) and `--set KEY=VALUE` overrides of the config fields.

Errors name the library's arguments in backticks (`steps`); the command line turns those into its flags (--steps).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch

from ..models.config import MODEL_CONFIGS, TRAINING_CONFIGS

__all__ = ["STAGES", "STAGE_DEFAULTS", "TrainOptions", "parse_overrides"]

STAGES = ("tokenizer", "generator")

# Per-stage defaults: the settings that trained the bundled Fashion-MNIST model (docs/training.md).
STAGE_DEFAULTS = {
    "tokenizer": {"steps": 14000, "batch_size": 64, "warmup": 200, "eval_every": 1000, "ckpt_every": 500,
                  "val_size": 500},
    "generator": {"steps": 2000, "batch_size": 256, "warmup": 100, "eval_every": 500, "ckpt_every": 250,
                  "val_size": 2000},
}

# The seed keys the data order and the per-step draws (seed x 1000003 + step, in 64 bits).
MAX_SEED = 2**32 - 1


@dataclass
class TrainOptions:
    """One training run (what `python -m spectralar.train STAGE` flags set; the library takes this, not argparse).

    `overrides` are typed config fields, of the model config or of the training config, applied to the preset (see
    `parse_overrides`); `tokenizer` is the generator stage's tokenizer checkpoint (default OUT/tokenizer).
    `batch_size` is per process and micro-step: one optimizer step sees batch_size x accum x processes samples.
    The fields left None take their stage's default (`STAGE_DEFAULTS`).
    """

    stage: str
    out: str | os.PathLike
    data: str = "fmnist"
    preset: str = "fmnist"
    overrides: dict = field(default_factory=dict)
    mapping: str | None = None
    tokenizer: str | os.PathLike | None = None
    steps: int | None = None
    batch_size: int | None = None
    accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int | None = None
    weight_decay: float = 0.05
    clip: float = 1.0
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    log_every: int = 50
    eval_every: int | None = None
    ckpt_every: int | None = None
    stop_at: int | None = None
    threads: int | None = None
    device: str | torch.device = "cpu"
    num_workers: int = 0
    skip_bad_images: bool = False
    val_size: int | None = None
    save_dtype: str = "fp32"

    def __post_init__(self):
        for name, value in STAGE_DEFAULTS.get(self.stage, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def check(self) -> None:
        """Checks that need nothing but the options, before any work (one-line ValueErrors naming the argument)."""
        if self.stage not in STAGES:
            raise ValueError(f"`stage` must be one of {list(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch_size", "accum", "log_every", "eval_every", "ckpt_every"):
            _int_in(self, name, 1)
        for name in ("warmup", "num_workers", "val_size"):
            _int_in(self, name, 0)
        _int_in(self, "seed", 0, MAX_SEED)
        _int_in(self, "num_workers", 0, 1024)
        if self.threads is not None:
            _int_in(self, "threads", 1, 4096)
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not (math.isfinite(self.lr)
                                                                                       and self.lr > 0):
            raise ValueError(f"`lr` must be a finite number > 0, got {self.lr}")
        if not (isinstance(self.min_lr_ratio, int | float) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"`min_lr_ratio` must lie in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "clip"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {v}")
        if self.stop_at is not None:
            _int_in(self, "stop_at", 1, self.steps, f"[1, `steps`={self.steps}]")
        if self.resume and self.overwrite:
            raise ValueError("`resume` continues the checkpoint and `overwrite` replaces it: pass one of them")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ValueError(f"`save_dtype` must be fp32 or fp16, got {self.save_dtype!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"`device` {self.device!r}: not a device; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"`device` {self.device}: training runs on cpu or cuda")

    def record(self) -> dict:
        """The options as JSON for the checkpoint (what a resume is compared with)."""
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, os.PathLike | torch.device) else v for k, v in d.items()}


def _int_in(opts, name: str, lo: int, hi: int | None = None, span: str | None = None) -> None:
    v = getattr(opts, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        want = f"lie in {span}" if span else (f"be an integer in [{lo}, {hi}]" if hi is not None else f"be >= {lo}")
        raise ValueError(f"`{name}` must {want}, got {v}")


def parse_overrides(config, items, training=None) -> dict:
    """KEY=VALUE strings -> {field: value}, each value parsed as the type of the field it replaces: a field of the
    model config `config`, or of its training config (`training`; default: that kind's defaults)."""
    if training is None:
        kind = next((k for k, cls in MODEL_CONFIGS.items() if isinstance(config, cls)), None)
        training = TRAINING_CONFIGS[kind]() if kind in TRAINING_CONFIGS else None
    current = dataclasses.asdict(config) | (dataclasses.asdict(training) if training is not None else {})
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in current:
            raise ValueError(f"override {item!r}: expected KEY=VALUE with KEY one of {sorted(current)}")
        cur = current[key]
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
            raise ValueError(f"override {item!r}: {key} must be {kind}") from None
        out[key] = new
    return out
