"""Process-level machinery of a training run: the output folder, signals, replica checks, log trimming."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

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
