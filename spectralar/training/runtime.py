"""Process-level machinery of a training run: the output folder and its lock, the log and picture folder paired
with the checkpoints, signals, replica checks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoint import LOCK_FILE
from ..models.build import model_bytes

# ---- processes --------------------------------------------------------------------------------------------

def prepare_out(out: Path) -> bool:
    """Create the output folder and prove it writable (one file written and removed) before any work. Returns
    whether the folder was created here."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return created


def discard_unused_out(out: Path) -> None:
    """Remove a run folder that `prepare_out` created for a run that stopped before writing anything into it
    (bad data, a model too large): a folder holding only the released lock file would otherwise stay behind, and
    `export` refuses folders that hold one."""
    try:
        if [p.name for p in out.iterdir()] == [LOCK_NAME] and lock_holder(out) is None:
            (out / LOCK_NAME).unlink()
            out.rmdir()
    except OSError:
        pass  # whatever else happened to the folder meanwhile: leave it


# ---- the run folder's lock ----------------------------------------------------------------------------------

LOCK_NAME = LOCK_FILE  # one name: export refuses destinations that hold it (checkpoint.run_folder_marks)


class RunLocked(ValueError):
    """The run folder is in use by another process."""


def _record(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command', '?')}, since {when})"


def _alive_here(holder: dict) -> bool:
    """True unless `holder` is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def lock_holder(folder) -> dict | None:
    """Who holds run folder `folder` now ({"pid", "host", "command", "since"}, possibly empty), or None when no
    process does. What `python -m spectralar.export` and other tools check before they write into a run."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _record(fd)
        except OSError:  # a file system without flock: trust the record
            holder = _record(fd)
            return holder if holder and _alive_here(holder) else None
        return None
    finally:
        os.close(fd)


class RunLock:
    """An advisory lock on a run folder, held by one process for a training run's whole life (setup, clean-up of
    what an interrupted run left, training, checkpoints), so a second run into the same folder stops at once with
    a message naming the holder instead of mixing logs and deleting the other's checkpoint files.

    The lock is `flock` on OUT/.spectralar.lock, so the kernel releases it when the holder dies, even by kill -9;
    the file records the holder's pid, host and command for the message. A record left by a holder that died
    (a process of this host that no longer runs) is reported as taken over (`stale`). On a file system without
    flock the record alone decides, and a dead holder's record is taken over.
    """

    def __init__(self, folder, command: str = ""):
        self.path, self.command, self.fd, self.stale = Path(folder) / LOCK_NAME, command, None, None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(f"{self.path.parent} is in use by {_describe(_record(fd))}; wait for it to finish, "
                                "or stop it (Ctrl-C checkpoints it), or choose another output folder") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                held = _record(fd)
                if held and held.get("pid") != os.getpid() and _alive_here(held):
                    raise RunLocked(f"{self.path.parent} is in use by {_describe(held)}") from None
            held = _record(fd)
            if held:  # a holder that ended without releasing: killed, or its machine went down
                self.stale = held
            me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command or " ".join(sys.argv),
                  "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # released cleanly: an empty record
            finally:
                os.close(self.fd)  # closing drops the flock
            self.fd = None


# ---- the log and the pictures, paired with the checkpoints -----------------------------------------------------

class RunFiles:
    """Where a run writes its log rows and picture grids, so that they never pair with another run's checkpoint.

    A resumed run appends to OUT/<stage>_log.jsonl and OUT/<stage>_samples/. A fresh run (`overwrite`, or a folder
    whose earlier run never checkpointed) writes to hidden OUT/.<stage>_log.<run>.jsonl and
    OUT/.<stage>_samples.<run>/ until its first checkpoint, recorded with the run's id; only then do they replace
    the old ones (`promote`). Until that moment the folder holds the old run complete: its checkpoint, log and
    pictures. `recover` finishes a promotion that a crash interrupted and removes what runs that never reached a
    checkpoint left.
    """

    def __init__(self, out: Path, stage: str, run: str, fresh: bool):
        self.out, self.stage, self.run, self.pending = out, stage, run, fresh
        self.final_log, self.final_samples = out / f"{stage}_log.jsonl", out / f"{stage}_samples"

    @property
    def log(self) -> Path:
        return self.out / f".{self.stage}_log.{self.run}.jsonl" if self.pending else self.final_log

    @property
    def samples(self) -> Path:
        return self.out / f".{self.stage}_samples.{self.run}" if self.pending else self.final_samples

    def promote(self) -> None:
        """Make the pending log and pictures the run's (after its first checkpoint is written)."""
        if not self.pending:
            return
        log, samples = self.log, self.samples
        self.pending = False
        _replace(log, self.final_log, self.out)
        _replace(samples, self.final_samples, self.out)

    @staticmethod
    def recover(out: Path, stage: str, run: str | None) -> list[str]:
        """Promote the pending files of run `run` (the checkpoint's; a crash came between its first checkpoint and
        the promotion), delete those of other runs; returns the names removed."""
        removed = []
        for p in sorted(out.glob(f".{stage}_log.*.jsonl")) + sorted(out.glob(f".{stage}_samples.*")):
            rid = p.name.split(".")[2]
            if rid == run:
                files = RunFiles(out, stage, rid, True)
                _replace(p, files.final_log if p.suffix == ".jsonl" else files.final_samples, out)
            else:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
        return removed


def _replace(src: Path, dst: Path, out: Path) -> None:
    """Move `src` (a file or folder; nothing when missing) over `dst`, deleting what `dst` held."""
    if not os.path.lexists(src):
        if os.path.isdir(dst):  # a fresh run without pictures: the old run's pictures go with its checkpoint
            shutil.rmtree(dst)
        elif os.path.lexists(dst) and src.suffix == ".jsonl":
            os.unlink(dst)
        return
    if src.is_dir():
        trash = out / f".{dst.name}.old-{os.getpid()}"
        if os.path.lexists(dst):
            os.rename(dst, trash)
        os.rename(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def check_model_size(kind: str, config, device: torch.device, where: str) -> None:
    """Refuse a model whose weights, gradients and AdamW state do not fit in the memory free on `device`, judged
    from a meta-device build (no memory) before anything is allocated."""
    try:
        count, p_bytes, b_bytes = model_bytes(kind, config)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    need = 4 * p_bytes + b_bytes
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
