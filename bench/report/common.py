"""What every section shares: its context, rows saved as they are produced, checks, the implementation probe.

A section runs in its own child process (see runner.py) and writes its tables to one JSON file after every
row, so a child killed at its deadline keeps what it measured. Alongside the tables it writes structured
records: every check of an implementation on a shape bucket (`Writer.check`) and every timing
(`Writer.timing`, timing.py), from which dispatch.py derives the measured decisions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .. import floors as fl
from .device import Cuda, for_device

CHECK_COLS = ["case", "shape", "dtype", "max err", "ref err", "rule", "result", "note"]
LOWP = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Writer:
    """Tables and records of one section, saved as JSON after every row (a killed child keeps what it wrote).
    `complete` is set when the section function returned without a spent budget (runner.py's --resume keeps
    complete sections)."""

    def __init__(self, path: Path, section: str):
        self.path, self.section = path, section
        self.data = {"tables": [], "floors": None, "timings": [], "checks": [], "machine": {}, "complete": False}

    def table(self, title: str, columns) -> dict:
        for t in self.data["tables"]:
            if t["title"] == title:
                return t
        t = {"title": title, "columns": list(columns), "rows": [], "notes": []}
        self.data["tables"].append(t)
        return t

    def row(self, title: str, columns, values: dict) -> None:
        t = self.table(title, columns)
        cells = [str(values.get(c, "-")) for c in t["columns"]]
        t["rows"].append(cells)
        self.save()
        print(f"[{self.section}] {title}: " + " | ".join(cells), flush=True)

    def note(self, title: str, columns, text: str) -> None:
        notes = self.table(title, columns)["notes"]
        if text not in notes:
            notes.append(text)
            self.save()

    def timing(self, record: dict) -> None:
        """One measured time: op, variant, dtype, case, bucket, provider, impl, role, s (wall), kernel_s."""
        self.data["timings"].append(record)
        self.save()

    def check(self, record: dict) -> None:
        """One correctness verdict: op, variant, dtype, impl, bucket, case, result ("PASS" / "FAIL")."""
        self.data["checks"].append(record)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        os.replace(tmp, self.path)


def implementations() -> dict:
    """(op, variant) -> implementation ids shipped, newest last (spectralar_kernels/_dispatch.py)."""
    from spectralar_kernels._dispatch import IMPLEMENTATIONS

    return IMPLEMENTATIONS


@dataclasses.dataclass
class Ctx:
    device: str
    dry: bool
    interpret: bool
    deadline: float
    writer: Writer
    floors: fl.Floors
    sizes: dict
    only_dtype: torch.dtype | None = None  # a check section covers one dtype ...
    part: str | None = None  # ... either the "awkward" shapes or the realistic ones ...
    impl: str | None = None  # ... and the newest implementations (None) or one older id that still ships
    model: str | None = None  # generator sections: the preset
    compile_baselines: bool = True  # torch.compile the baselines that are compiled forms (timing.compiled)
    warm: bool = False  # a timing section run only to compile its baselines (runner.py's warm:* sections)
    seed: int = 0
    probed: list | None = None  # (key, impl, bucket) of the public call the current check row ran (public_check)

    def __post_init__(self):
        self.dev: Cuda = for_device(self.device)  # torch.cuda, or its CPU stand-in (device.py)
        self.rep_s = 0.05 if self.cuda else 0.005  # time per measured loop (timing.measure)
        self.max_reps = 2000 if self.cuda else 5

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def kernels_run(self) -> bool:
        """Whether the Triton implementations run at all: on CUDA, or on CPU under the interpreter."""
        return self.cuda or self.interpret

    def mode(self, key, impl: str | None = None) -> str:
        """SPECTRALAR_KERNELS that runs implementation `impl` (default: this section's) of `key` = (op, variant):
        "triton" for the newest, "triton:ID" for an older one, "ref" on a dry run without the interpreter."""
        impl = impl or self.impl
        if not self.kernels_run:
            return "ref"
        return "triton" if impl is None or impl == implementations()[key][-1] else f"triton:{impl}"

    def expected(self, key, impl: str | None = None) -> str | None:
        """The implementation id `choose_kernel` should return under `self.mode(key, impl)`."""
        if not self.kernels_run:
            return None
        return impl or self.impl or implementations()[key][-1]

    def covers(self, key) -> bool:
        """Whether this section's implementation ships for `key` (older ids exist for some variants only)."""
        return self.impl is None or self.impl in implementations().get(key, ())

    def wants(self, tag: str) -> bool:
        return self.part is None or (tag == "awkward") == (self.part == "awkward")

    @property
    def check_dtypes(self):
        return (self.only_dtype,) if self.only_dtype is not None else ALL_DTYPES

    @property
    def time_dtypes(self):
        return ALL_DTYPES if self.cuda else (torch.float32,)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        self.seed += 1
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        return torch.randn(shape, generator=g, device=self.device).to(dtype)

    def randint(self, low: int, high: int, shape) -> torch.Tensor:
        self.seed += 1
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        return torch.randint(low, high, shape, generator=g, device=self.device)

    def sync(self) -> None:
        self.dev.sync()


def forced(mode: str | None):
    """The calls inside run with backend `mode` ("ref", "triton", "triton:ID"; None: "auto"), whatever
    SPECTRALAR_KERNELS says (spectralar_kernels.use_backend)."""
    from spectralar_kernels import use_backend

    return use_backend(mode or "auto")


class KernelProbe:
    """Records what `choose_kernel` returns inside the block and the shape bucket it was asked for:
    `seen` = [(implementation id or None for the reference, bucket tuple or None)].

    The public functions import `choose_kernel` by name, so the wrapper replaces that name in every loaded
    spectralar_kernels module. An op that does not call `choose_kernel` leaves `seen` empty."""

    def __enter__(self):
        import spectralar_kernels._common as common

        self.seen, self.patched = [], []
        original = getattr(common, "choose_kernel", None)
        if original is None:
            return self

        from spectralar_kernels._dispatch import bucket

        def recording(op, variant, *tensors, **sizes):
            impl = original(op, variant, *tensors, **sizes)
            self.seen.append((impl, bucket(op, variant, **sizes)))
            return impl

        for name, module in list(sys.modules.items()):
            if name.startswith("spectralar_kernels") and getattr(module, "choose_kernel", None) is original:
                module.choose_kernel = recording
                self.patched.append((module, original))
        return self

    def __exit__(self, *exc):
        for module, original in self.patched:
            module.choose_kernel = original
        return False

    def verdict(self, expected: str | None) -> tuple[bool, str]:
        """(ok, note): ok unless the op reported running something other than `expected`."""
        if not self.seen:
            return True, "implementation not reported (the op does not call choose_kernel)"
        ran = sorted({str(s) if s is not None else "reference" for s, _ in self.seen})
        want = expected if expected is not None else "reference"
        if want not in ran:
            return False, f"asked for {want}, choose_kernel returned {', '.join(ran)}"
        return True, f"ran {', '.join(ran)}"


def dname(dtype: torch.dtype) -> str:
    return fl.DTYPE_NAME[dtype]


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split())
    return f"{type(exc).__name__}: {text}"[:300]


def fmt_shape(shape) -> str:
    return "x".join(map(str, shape))


def run_case(ctx: Ctx, title: str, columns, keys: dict, fn, *args):
    """One row: fn(*args) -> {column: value}; an exception becomes a FAIL row, a spent budget a SKIP row."""
    if time.time() > ctx.deadline:
        ctx.writer.row(title, columns, {**keys, "result": "SKIP", "note": "time budget spent"})
        ctx.writer.data["skipped"] = True
        return None
    ctx.probed = None
    try:
        values = fn(*args)
        ctx.sync()  # an asynchronous kernel fault belongs to this row, not the next
    except Exception as exc:  # one failure is a row of the report, not the end of it
        traceback.print_exc()
        values = {"result": "FAIL", "note": short_error(exc)}
    ctx.writer.row(title, columns, {**keys, **values})
    for (op, variant), impl, shape in ctx.probed or ():  # a check row: its verdict, filed by shape bucket
        ctx.writer.check({"op": op, "variant": variant, "dtype": keys.get("dtype"), "impl": impl,
                          "bucket": dict(shape) if shape else None, "case": keys.get("case"),
                          "result": values.get("result")})  # fmt: skip
    ctx.probed = None
    gc.collect()
    with contextlib.suppress(Exception):  # after a sticky CUDA error, later rows fail on their own
        ctx.dev.empty_cache()
    return values


def _worst(values) -> float:
    values = list(values)
    return float("nan") if any(v != v for v in values) else max(values)


def check(items, atol: float | None = None, rtol: float = 1e-4, note: str = "") -> dict:
    """items: (name, out, float64 oracle, same-precision reference or None). spectralar_kernels.testing decides."""
    from spectralar_kernels.testing import assert_close_to_oracle, max_err

    errs, ref_errs, problems, atols, lowp = [], [], [], [], False
    for name, out, oracle, same in items:
        low = out.dtype in LOWP
        a = atol if atol is not None else 1e-5 * max(1.0, oracle.double().abs().max().item())
        errs.append(max_err(out, oracle))
        if same is not None:
            ref_errs.append(max_err(same, oracle))
        lowp |= low
        atols += [] if low else [a]
        try:
            assert_close_to_oracle(out, oracle, same if low else None, atol=a, rtol=rtol, name=name)
        except AssertionError as e:
            problems.append(str(e).splitlines()[0])
    return {"max err": f"{_worst(errs):.2e}", "ref err": f"{_worst(ref_errs):.2e}" if ref_errs else "-",
            "rule": "; ".join((["<= 2 ref err + 1e-3 max|oracle|"] if lowp else [])
                              + ([f"atol {max(atols):.1e} rtol {rtol:.0e}"] if atols else [])),
            "result": "FAIL" if problems else "PASS",
            "note": "; ".join(problems + ([note] if note else []))}  # fmt: skip


def public_check(ctx: Ctx, key, call):
    """Run `call()` (the public function) under the section's SPECTRALAR_KERNELS with the probe on.
    Returns (output, problem or None, note): a problem when the op ran another implementation than asked."""
    with forced(ctx.mode(key)), KernelProbe() as probe:
        out = call()
    ok, note = probe.verdict(ctx.expected(key))
    # what run_case files this row's verdict under: the implementation asked for, per bucket the op saw
    ctx.probed = [(tuple(key), ctx.expected(key), b) for b in dict.fromkeys(b for _, b in probe.seen)]
    return out, (None if ok else note), note


def with_probe(result: dict, problem: str | None, note: str) -> dict:
    """Fold the probe's verdict into a check() result."""
    if problem:
        result["result"] = "FAIL"
    result["note"] = "; ".join(n for n in (problem or note, result["note"]) if n)
    return result


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device)


def launcher(name: str, *modules: str):
    """Launcher `name` from the first of `modules` (under spectralar_kernels) that defines it."""
    for m in modules:
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(f"spectralar_kernels.{m}"), name)
    raise ImportError(f"no {name} in spectralar_kernels.{' / '.join(modules)}")


def launcher_check(ctx: Ctx, run) -> tuple[list, str]:
    """When the kernels run, `run()` reruns a launcher into NaN-filled outputs and returns check items.
    A launcher that moved or changed its signature (ImportError / TypeError / AssertionError on an argument)
    skips this extra check with a note rather than failing the row: the public function is checked either way."""
    if not ctx.kernels_run:
        return [], ""
    try:
        return run(), ""
    except (ImportError, TypeError, AssertionError) as exc:
        return [], f"launcher out=NaN check skipped: {short_error(exc)}"


def optional_module(name: str):
    """The module if it is installed and imports cleanly, else None (a broken install counts as absent)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception:
        return None
