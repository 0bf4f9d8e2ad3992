"""Which implementation `SPECTRALAR_KERNELS=auto` runs on CUDA: the measured decisions in `measured.json`.

Rule. `auto` sends a CUDA call to a Triton kernel only when `measured.json` (next to this file) holds an entry
for the call's exact (op, variant, dtype, shape bucket, device class) naming a kernel that still ships
(`IMPLEMENTATIONS`); every other call runs the PyTorch reference. `python -m bench.gpu_report` writes the
entries (no hand pasting), and only where the same run
  1. checked that implementation's output on the case against the float64 oracle within the tolerance rule
     of `spectralar_kernels.testing`, and
  2. timed it at least as fast as the fastest plain-PyTorch path it timed on that case (the op's reference
     and the strongest alternatives a user would write: cuBLAS matmul forms, torch.compile of the reference,
     `matmul + argmin`, every SDPA backend that accepts the case, FlexAttention, flash-attn), in the worst
     case of the bucket, measured as wall time per call in a loop (host overhead included).
Rewriting a kernel under a new id sends `auto` back to the reference until the new one is measured. So does
editing it in place: every entry records the fingerprint of the source files its kernel runs (`SOURCES`,
`source_digest`), and an entry whose fingerprint differs from the installed code's decides nothing.

Shape bucket: the dimensions that change a kernel's behaviour, each rounded up to a power of two (so a
bucket is a range (2^(k-1), 2^k]) except the ones kernels compile as exact constants (block size, head dim):
    dct2d plane          H, W (a block above BLOCKWISE_MAX: its block as H and W; a 1-D dct: H = 1)
    dct2d blockwise      block (exact), H, W
    spectral_subimages   S (image side)
    vq_nearest           K (codes), d (code dim)
    attention            D (head dim, exact), T (sequence length), BH (batch x heads)
    attention_with_kvcache  D (exact), T (cache length T_max), BH (batch x heads)
The public functions pass the raw sizes to `choose_kernel(...)` as keywords (`bucket()` names them).

Device class: (compute capability, device name) as torch reports them, e.g. ("9.0", "NVIDIA H200"): a
measurement on an H200 decides nothing for an H100.

A missing or unreadable `measured.json` means the reference everywhere, with a warning, never a crash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DTYPE_NAME",
    "IMPLEMENTATIONS",
    "MEASURED",
    "MEASURED_PATH",
    "MIN_SPEEDUP",
    "Measured",
    "bucket",
    "bucket_label",
    "device_class",
    "latest",
    "load_measured",
    "measured_choice",
    "source_digest",
    "table_markdown",
]

DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # the dtype keys of MEASURED

MIN_SPEEDUP = 1.0  # fastest plain-PyTorch time / kernel time an entry must reach for `auto` to run it

# (op, variant) -> implementation ids shipped in kernels/, the newest last (what SPECTRALAR_KERNELS=triton runs).
IMPLEMENTATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("dct2d", "plane"): ("plane-v2",),
    ("dct2d", "blockwise"): ("blockwise-v1", "blockwise-v2"),
    ("spectral_subimages", "one_window"): ("subimages-v2",),
    ("spectral_subimages", "all_prefixes"): ("subimages-v2",),
    ("vq_nearest", "l2"): ("vq-v1", "vq-v2"),
    ("vq_nearest", "cosine"): ("vq-v1", "vq-v2"),
    ("attention", "full"): ("attention-v2",),
    ("attention", "causal"): ("attention-v2",),
    ("attention", "prefix"): ("attention-v2",),
    ("attention_with_kvcache", "decode"): ("decode-v2",),
}

# implementation id -> the files (relative to this package) whose code a call of it runs: the op's public
# wrapper and launcher modules. A change to any of them voids the implementation's measurements.
SOURCES: dict[str, tuple[str, ...]] = {
    "plane-v2": ("transforms/__init__.py", "transforms/triton.py"),
    "blockwise-v1": ("transforms/__init__.py", "transforms/blockwise.py", "transforms/triton.py"),
    "blockwise-v2": ("transforms/__init__.py", "transforms/blockwise.py", "transforms/triton.py"),
    "subimages-v2": ("subimages/__init__.py", "subimages/triton.py"),
    "vq-v1": ("vq/__init__.py", "vq/shared.py", "vq/triton_v1.py"),
    "vq-v2": ("vq/__init__.py", "vq/shared.py", "vq/triton.py"),
    "attention-v2": ("attn/__init__.py", "attn/sdpa.py", "attn/_tiles.py", "attn/triton.py"),
    "decode-v2": ("attn/__init__.py", "attn/kvcache.py", "attn/kvrun.py", "attn/_tiles.py", "attn/decode.py"),
}

MEASURED_PATH = Path(__file__).with_name("measured.json")


@functools.cache
def source_digest(kernel: str) -> str | None:
    """sha256 (16 hex digits) of the source files of implementation `kernel` as installed (`SOURCES`), or None
    for an unknown id or an unreadable file (no entry can match None)."""
    h = hashlib.sha256()
    try:
        for rel in SOURCES[kernel]:
            h.update(rel.encode() + b"\0" + (Path(__file__).parent / rel).read_bytes() + b"\0")
    except (KeyError, OSError):
        return None
    return h.hexdigest()[:16]

Bucket = tuple[tuple[str, int], ...]
DeviceClass = tuple[str, str]


def _pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1): the upper end of n's bucket."""
    return 1 << max(0, int(n) - 1).bit_length()


def _dct(variant, h, w, block=None):
    if variant == "plane":
        return (("H", _pow2(block or h)), ("W", _pow2(block or w)))
    return (("block", int(block)), ("H", _pow2(h)), ("W", _pow2(w)))


def _attn(variant, t, d, bh):
    return (("D", int(d)), ("T", _pow2(t)), ("BH", _pow2(bh)))


_RULES = {
    "dct2d": _dct,
    "spectral_subimages": lambda variant, s: (("S", _pow2(s)),),
    "vq_nearest": lambda variant, k, d: (("K", _pow2(k)), ("d", _pow2(d))),
    "attention": _attn,
    "attention_with_kvcache": _attn,
}


def bucket(op: str, variant: str, **dims) -> Bucket | None:
    """The shape bucket of a call from its raw sizes (see the module docstring), or None when the call site
    passed none (such a call can match no entry: the reference runs).

        bucket("vq_nearest", "l2", k=16384, d=12) == (("K", 16384), ("d", 16))
    """
    rule = _RULES.get(op)
    if rule is None or not dims:
        return None
    try:
        return rule(variant, **dims)
    except TypeError:  # a call site passing other sizes than the rule names: no entry can match
        return None


def bucket_label(b) -> str:
    """Text of a bucket (tuple or dict): ranges as "K=8193..16384", exact dimensions as "D=64"."""

    def one(k, v):
        return f"{k}={v}" if k in ("block", "D") or v <= 1 else f"{k}={v // 2 + 1}..{v}"

    items = b.items() if isinstance(b, dict) else (b or ())
    return " ".join(one(k, v) for k, v in items) or "no bucket"


@functools.cache
def _cuda_class(index: int) -> DeviceClass:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{major}.{minor}", torch.cuda.get_device_name(index)


def device_class(t: torch.Tensor) -> DeviceClass:
    """(compute capability, name) of a CUDA tensor's device, e.g. ("9.0", "NVIDIA H200"); cached per device."""
    index = t.device.index
    return _cuda_class(index if index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class Measured:
    """One decision of a GPU report: `kernel` beat every plain-PyTorch path timed on the bucket's cases."""

    kernel: str  # implementation id that was checked and timed
    speedup: float  # fastest plain-PyTorch time / kernel time, the worst case of the bucket
    baseline: str  # the fastest plain-PyTorch path on that case
    speedup_vs_ref: float | None  # reference time / kernel time, same case (None: not recorded)
    case: str  # what was timed
    checked: str  # what the same run checked (cases, result)
    report: str  # where the numbers are
    date: str  # day of the run, YYYY-MM-DD
    source: str | None = None  # source_digest(kernel) when it was measured (None: not recorded)

    @property
    def current(self) -> bool:
        """Whether the installed code of `kernel` is the code that was measured."""
        return self.source is not None and self.source == source_digest(self.kernel)


Key = tuple[str, str, str, Bucket, DeviceClass]


def _entry(e: dict) -> tuple[Key, Measured]:
    """(key, Measured) of one JSON entry; ValueError naming what is wrong with it."""
    for name, kind in (("op", str), ("variant", str), ("dtype", str), ("kernel", str), ("report", str),
                       ("date", str), ("bucket", dict), ("device", dict), ("speedup", (int, float))):  # fmt: skip
        if not isinstance(e.get(name), kind):
            raise ValueError(f"entry {e!r}: {name!r} missing or not {getattr(kind, '__name__', 'a number')}")
    if e["dtype"] not in DTYPE_NAME.values():
        raise ValueError(f"entry {e!r}: dtype must be one of {sorted(DTYPE_NAME.values())}")
    if not math.isfinite(e["speedup"]):
        raise ValueError(f"entry {e!r}: speedup is not finite")
    dev = e["device"]
    if not (isinstance(dev.get("capability"), str) and isinstance(dev.get("name"), str)):
        raise ValueError(f"entry {e!r}: device must hold 'capability' and 'name' strings")
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in e["bucket"].items()):
        raise ValueError(f"entry {e!r}: bucket must map dimension names to ints")
    key = (e["op"], e["variant"], e["dtype"], tuple(e["bucket"].items()), (dev["capability"], dev["name"]))
    ref = e.get("speedup_vs_ref")
    return key, Measured(e["kernel"], float(e["speedup"]), str(e.get("baseline", "?")),
                         float(ref) if isinstance(ref, (int, float)) else None, str(e.get("case", "")),
                         str(e.get("checked", "")), e["report"], e["date"],
                         e["source"] if isinstance(e.get("source"), str) else None)  # fmt: skip


def load_measured(path: Path = MEASURED_PATH) -> dict[Key, Measured]:
    """The decisions in `path` ({"entries": [...]}). A missing, unreadable or malformed file gives {} (the
    reference everywhere) and a RuntimeWarning saying why."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data["entries"] if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError("expected an object with an 'entries' list")
        table = dict(_entry(e) if isinstance(e, dict) else _entry({"entry": e}) for e in entries)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"spectralar_kernels: cannot read the measured decisions {path} ({exc}); CUDA calls under "
                      "SPECTRALAR_KERNELS=auto run the PyTorch references", RuntimeWarning, stacklevel=2)  # fmt: skip
        return {}
    return table


MEASURED: dict[Key, Measured] = load_measured()


def latest(op: str, variant: str) -> str:
    """The newest shipped implementation of (op, variant): what SPECTRALAR_KERNELS=triton runs."""
    return IMPLEMENTATIONS[(op, variant)][-1]


def measured_choice(op: str, variant: str, dtype: torch.dtype, shape: Bucket | None,
                    device: DeviceClass) -> str | None:  # fmt: skip
    """The implementation `auto` runs for a CUDA call, or None for the reference (see the module docstring)."""
    if shape is None:
        return None
    entry = MEASURED.get((op, variant, DTYPE_NAME.get(dtype, str(dtype)), tuple(shape), tuple(device)))
    if entry is None or entry.speedup < MIN_SPEEDUP or not entry.current:
        return None
    return entry.kernel if entry.kernel in IMPLEMENTATIONS.get((op, variant), ()) else None


def table_markdown(table: dict[Key, Measured] | None = None) -> str:
    """Every entry `auto` reads, one row each (docs/benchmarks.md lists the same)."""
    table = MEASURED if table is None else table
    rows = ["| op | variant | dtype | shape bucket | device class | kernel | x fastest plain PyTorch (which) | "
            "x ref | checked | case | report | code |", "|" + "---|" * 12]  # fmt: skip
    for (op, variant, dt, shape, (cap, name)), m in sorted(table.items(), key=lambda kv: str(kv[0])):
        ref = f"{m.speedup_vs_ref:.2f}" if m.speedup_vs_ref is not None else "-"
        cells = (op, variant, dt, bucket_label(shape), f"{name} (sm {cap})", m.kernel,
                 f"{m.speedup:.2f} ({m.baseline})", ref, m.checked, m.case, f"{m.report}, {m.date}",
                 "as measured (used)" if m.current else "changed since (not used)")  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
