"""Small helpers shared by the command-line tools: one-line errors, flag types (the sampling flags checked by
the library's own rule), shared flag groups, and the checks every CLI runs on its device and output path before
any model is loaded (so a typo costs a second, not a sampling run). Imported by the command lines, never by
the library."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_meta
from .progress import announce, discard_announcement, flush_announcement
from .sampling import SamplingParams


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump, no traceback) and exits 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def fail(prog: str, message) -> int:
    discard_announcement()  # the error is the one line a failed command prints
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


# The errors a command line reports in one line (exit 2) instead of a traceback: bad values (ValueError, and
# the library's CheckpointError and DataError, which derive from it), missing files, and numbers that overflow
# (FloatingPointError: non-finite logits or losses).
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _int_at_least(text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        v = lo - 1
    if v < lo:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**32) (it keys the data order and the per-step draws in 64-bit arithmetic)."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 4294967295], got {text!r}")
    return v


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = _finite(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def positive_floats(text: str, flag: str) -> list[float]:
    """Comma-separated finite numbers > 0 (e.g. --alphas), or ValueError naming `flag`."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{flag} {text!r}: expected comma-separated finite numbers > 0")
    return vals


def _sampling_flag(name: str, parse):
    """An argparse type for sampling field `name`: parsed by `parse`, then judged by building a
    `sampling.SamplingParams` with it, the rule the sampler applies too."""

    def flag(text: str):
        try:
            v = parse(text)
            SamplingParams(**{name: v})
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"got {text!r}: {e}") from None
        return v

    flag.__name__ = name  # argparse names the type in its messages
    return flag


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not an integer") from None


cfg_scale = _sampling_flag("cfg_scale", _float)
temperature = _sampling_flag("temperature", _float)
top_k = _sampling_flag("top_k", _int)
top_p = _sampling_flag("top_p", _float)


def add_sampling_flags(p, num_per_class: int) -> None:
    """--num-per-class, --cfg, --temperature, --top-k, --top-p (the generate, evaluate and experiments CLIs)."""
    p.add_argument("--num-per-class", type=positive_int, default=num_per_class, help="generated samples per class")
    add_sampling_params_flags(p)


def add_sampling_params_flags(p) -> None:
    """--cfg, --temperature, --top-k, --top-p: the fields of a `SamplingParams` (see `sampling_params`)."""
    p.add_argument("--cfg", dest="cfg_scale", metavar="CFG", type=cfg_scale, default=2.0,
                   help="classifier-free guidance scale (1 = none)")
    p.add_argument("--temperature", type=temperature, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=top_k, default=None, help="keep the k most likely codes")
    p.add_argument("--top-p", type=top_p, default=None, help="nucleus sampling mass in (0, 1]")


def sampling_params(args) -> SamplingParams:
    """The `SamplingParams` of the flags `add_sampling_flags` added (each already checked by its type)."""
    return SamplingParams(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def add_common_flags(p, out_default: str) -> None:
    """Data, output, batch, seed, device and thread flags of the evaluate and experiments subcommands."""
    p.add_argument("--data", default="fmnist",
                   help="'fmnist' (Debian's dataset-fashion-mnist), a folder of its IDX files, or an image folder")
    p.add_argument("--split", default="test", help="held-out split to evaluate on (test; 'val' for ROOT/val folders)")
    p.add_argument("--out", default=out_default, help=f"output directory for JSON and PNGs (default {out_default})")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per forward pass")
    p.add_argument("--seed", type=seed, default=0, help="seed for the image subset and for sampling")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    threads_flag(p)


def threads_flag(p) -> None:
    """--threads N, the CPU threads torch uses (every command line has it; `set_threads` applies it)."""
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: the cores other processes leave idle, at least 1; "
                        "OMP_NUM_THREADS when set)")


def _busy_cores(cpus: set[int], window: float = 0.1) -> float | None:
    """How many of the CPUs `cpus` other processes keep busy over the next `window` seconds (this one sleeps
    meanwhile), from their lines of /proc/stat; the 1-minute load average where there is no /proc; None when
    neither exists."""
    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    out[int(name[3:])] = (sum(v), v[3] + v[4])
        return out

    try:
        before = sample()
        time.sleep(window)
        after = sample()
    except (OSError, ValueError):
        before = after = {}
    if not after:
        try:
            return min(float(len(cpus)), os.getloadavg()[0])
        except (OSError, AttributeError):
            return None
    busy = 0.0
    for c, (total, idle) in after.items():
        span = total - before.get(c, (total, idle))[0]
        if span > 0:
            busy += 1.0 - (idle - before[c][1]) / span
    return busy


def default_threads() -> tuple[int, str]:
    """(threads, why): OMP_NUM_THREADS when set, else the cores this process may use that other processes leave
    idle (at least 1), shared among the processes of a torchrun job on this machine. OpenMP threads spin while
    they wait for each other, so one more thread than there are idle cores can make an op ten times slower."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "as OMP_NUM_THREADS asks"
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = len(cpus)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    busy = _busy_cores(cpus)
    if busy is None:
        return max(1, cores // local), f"{cores} cores"
    idle = max(0.0, cores - busy)
    n = max(1, min(cores, int(idle + 0.25)) // local)  # a core counts as idle when three quarters of it are
    return n, f"{cores} cores, {min(busy, cores):.1f} busy with other work" + (f", {local} processes" if local > 1
                                                                             else "")


def set_threads(prog: str, requested: int | None = None) -> int:
    """Set torch's CPU threads to `requested` (--threads) or `default_threads()`, and say so in one line on
    stderr when the command's first long step starts (see spectralar.progress)."""
    n, why = (requested, "--threads") if requested else default_threads()
    torch.set_num_threads(n)
    if os.environ.get("RANK", "0") == "0":
        how = "as --threads asked" if requested else f"{why}; --threads N to choose"
        announce(f"{prog}: {n} CPU thread{'s' * (n > 1)} ({how})")
    return n


def check_new_checkpoint(path, overwrite: bool, flag: str = "--out") -> None:
    """Before any work: refuse to replace the checkpoint at `path` unless `overwrite`, and never replace a folder
    that holds other files (writing a checkpoint replaces the whole folder)."""
    p = Path(path)
    if not os.path.lexists(p) or (p.is_dir() and not any(p.iterdir())):
        return
    try:
        meta = read_meta(p)
    except CheckpointError:
        raise ValueError(f"{flag} {path} holds files that are not a checkpoint, which writing one there would "
                         "delete; choose another folder") from None
    if not overwrite:
        raise ValueError(f"{flag} {path} already holds a {meta['kind']} checkpoint (step {meta.get('step')}); pass "
                         "--overwrite to replace it, or choose another folder")


def run_command(prog: str, parser, commands: dict, argv=None) -> int:
    """Body of a CLI with subcommands: parse, check the device and the output folder (before any model is
    loaded), set threads, dispatch to commands[args.command](args, device, command line). A ValueError (the
    library's CheckpointError and DataError among them), a missing file or an overflow (USER_ERRORS) becomes one
    line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
        check_output(args.out)
        set_threads(f"{prog} {args.command}", args.threads)
        commands[args.command](args, device, " ".join([prog, *argv]))
        flush_announcement()  # a command without a long step still says what it used
    except USER_ERRORS as e:
        return fail(f"{prog} {args.command}", e)
    return 0


def pick_device(name: str | None) -> torch.device:
    """The torch device for --device NAME (None: cuda if available, else cpu), checked to exist on this machine.

    A CUDA device without an index is cuda:LOCAL_RANK, so one command line serves every torchrun process.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: unsupported device type; use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _writable_dir(d: Path, what: str) -> None:
    """Raise unless a file can be created in existing directory `d` (tried, since os.access lies for root, /proc)."""
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".spectralar-write-test-")
    except OSError as e:
        raise ValueError(f"{what}: cannot create files in {d} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_output(path, flag: str = "--out", image: bool = False) -> Path:
    """Check that `path` can be written, before any work: a file (image=True: a format Pillow can save, judged by
    its extension) or, with image=False, a directory. Missing parent folders are fine where they can be created;
    nothing is created here except a probe file that is removed at once."""
    p = Path(path)
    what = f"{flag} {path}"
    if image:
        from PIL import Image

        if p.is_dir():
            raise ValueError(f"{what}: is a directory, expected an image file name")
        Image.init()
        ext = p.suffix.lower()
        fmt = Image.registered_extensions().get(ext)
        if fmt is None or fmt not in Image.SAVE:
            raise ValueError(f"{what}: unknown image extension {ext or '(none)'!r}; use .png (or .jpg, .bmp, .tif, "
                             ".webp)")
    elif p.exists() and not p.is_dir():
        raise ValueError(f"{what}: exists and is not a directory")
    d = p.parent if image else p
    d = d.absolute()
    while not d.exists():
        d = d.parent
    if not d.is_dir():
        raise ValueError(f"{what}: {d} is not a directory")
    _writable_dir(d, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{what}: exists and is not writable")
    return p


def check_grid_pixels(rows: int, cols: int, size: int, scale: int) -> None:
    """Refuse, before sampling, an image grid larger than Pillow itself would open (its decompression-bomb limit)."""
    from PIL import Image

    pad = 2  # viz.save_grid's default
    pixels = (rows * (size + pad) + pad) * (cols * (size + pad) + pad) * scale * scale
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"a grid of {rows}x{cols} images of {size}x{size} at --scale {scale} would have {pixels:.3g} "
                         f"pixels, more than Pillow opens ({Image.MAX_IMAGE_PIXELS:.3g}); use a smaller --scale or "
                         "fewer images")
