"""What training needs whatever the stage: the run's options, the record a stage setup returns, the optimizer,
and the process-level machinery (signals, replica checks, the output folder)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

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

    `loss(x, y, draws, step)` returns a dict with "loss" and scalar metrics; `draws(n, generator)` makes the
    per-sample random draws of n samples; `validate(model, step)` returns a log row or None (rank 0 only);
    `after_step()`, if any, runs once after every optimizer step (the tokenizer's dead-code restarts).
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


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings of rank < 2)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=betas)


# ---- processes --------------------------------------------------------------------------------------------

def prepare_out(out: Path) -> None:
    """Create the output folder and prove it writable (one file written and removed) before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def check_model_size(build, device: torch.device, where: str) -> None:
    """Build the model on the meta device (no memory) to check the config, and refuse one whose weights,
    gradients and AdamW state do not fit in the memory free on `device`."""
    try:
        with torch.device("meta"):
            m = build()
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
        raise ValueError(f"{where}: cannot build the model: {e}") from None
    count = sum(p.numel() for p in m.parameters())
    need = 4 * sum(p.numel() * p.element_size() for p in m.parameters())
    need += sum(b.numel() * b.element_size() for b in m.buffers())
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _available_ram()
    if need > free:
        raise ValueError(f"{where}: {count / 1e6:.0f} M parameters with their gradients and AdamW state "
                         f"({need / 2**30:.1f} GiB) do not fit in the {free / 2**30:.1f} GiB free on {device}")


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def trim_log(log_path: Path, step: int) -> None:
    """Keep the log rows of steps <= `step` (the checkpoint the run starts from): rows a crashed or
    interrupted run wrote after its last checkpoint would otherwise appear twice."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line torn by a crash
            pass
    if not keep:
        log_path.unlink()
        return
    tmp = log_path.with_name(f".{log_path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, log_path)


def ignore_signals(worker_id):
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def collate_batch(batch):
    if isinstance(batch, tuple):  # already batched by __getitems__
        return batch
    return torch.utils.data.default_collate(batch)


class StopFlag:
    """SIGINT / SIGTERM while training only set a flag; the loop stops at the next step boundary.

    A step is never cut (forward, backward, optimizer, quantizer buffers and RNG draws all finish), so the
    checkpoint written then resumes exactly. Under torchrun the ranks agree on the stop step (`agreed`).
    A second SIGINT raises KeyboardInterrupt at once: no checkpoint, the previous one stays. Not under
    torchrun, whose workers get a terminal's Ctrl-C twice (directly, and passed on by the agent).
    """

    def __init__(self, world: int, device: torch.device, verbose: bool):
        self.signum, self.world, self.device, self.verbose, self.saved = 0, world, device, verbose, {}
        self.abort_on_second = "TORCHELASTIC_RUN_ID" not in os.environ

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum:
            if signum == signal.SIGINT and self.abort_on_second:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if self.verbose:  # os.write: a print here could re-enter a print of the main thread
            again = " (Ctrl-C again to abort without one)" if self.abort_on_second else ""
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint{again}\n"
                     .encode())

    def agreed(self) -> int:
        """The signal every rank stops for now (0: go on); one tiny all-reduce per step under torchrun."""
        if self.world == 1:
            return self.signum
        t = torch.tensor([self.signum], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


def rank_state(model: nn.Module, device: torch.device) -> dict:
    """What differs between replicas and must come back on resume: the buffers (the quantizer's code usage
    and recent encoder outputs are per rank) and the RNG states."""
    params = {n for n, _ in model.named_parameters()}
    state = {f"buf.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in params}
    state["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device)
    return state


def load_rank_state(model: nn.Module, saved: dict, rank: int, device: torch.device) -> None:
    prefix = f"rank{rank}."
    own = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    if not own:
        return
    bufs = {k[4:]: v for k, v in own.items() if k.startswith("buf.")}
    if bufs:
        model.load_state_dict({**model.state_dict(), **bufs})
    if "rng.cpu" in own:
        torch.set_rng_state(own["rng.cpu"])
    if "rng.cuda" in own and device.type == "cuda":
        torch.cuda.set_rng_state(own["rng.cuda"], device)


def check_replicas(model: nn.Module, step: int) -> None:
    """Raise if any parameter differs between the ranks (bitwise): an exact integer checksum per tensor,
    compared by a min and a max all-reduce. Run at every checkpoint, so a desynchronised run stops early."""
    sums = []
    for p in model.parameters():
        v = p.detach().reshape(-1)
        v = v.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[v.element_size()]).long()
        sums.append((v * (2 * torch.arange(v.numel(), device=v.device) + 1)).sum())
    lo = torch.stack(sums)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    bad = (lo != hi).nonzero().flatten().tolist()
    if bad:
        names = [n for n, _ in model.named_parameters()]
        raise RuntimeError(f"the replicas diverged by step {step}: {len(bad)} parameter(s) differ between the "
                           f"processes, e.g. {names[bad[0]]} ({type(model).__name__}; a bug: please report it)")
