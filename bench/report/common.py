"""What every section shares: its context, rows saved as they are produced, checks, the timing helper.

A section runs in its own child process (see runner.py) and writes its tables to one JSON file after every
row, so a child killed at its deadline keeps what it measured. Timings also go into a structured list
(`Writer.timing`), from which dispatch.py derives the measured-decisions table.
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

CHECK_COLS = ["case", "shape", "dtype", "max err", "ref err", "rule", "result", "note"]
TIME_COLS = ["case", "dtype", "provider", "ms", "GB/s", "TFLOP/s", "bound", "% of floor", "x ref", "peak MB",
             "result", "note"]  # fmt: skip
LOWP = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Writer:
    """Tables of one section, saved as JSON after every row (a killed child keeps what it wrote)."""

    def __init__(self, path: Path, section: str):
        self.path, self.section = path, section
        self.data = {"tables": [], "floors": None, "timings": [], "machine": {}}

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
        """One measured time, for the dispatch table: op, variant, dtype, case, provider, impl, baseline, s."""
        self.data["timings"].append(record)
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
    seed: int = 0

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

    def time(self, fn) -> float:
        return fl.time_fn(fn, self.device, warmup_ms=10, rep_ms=40, cpu_reps=2)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@contextlib.contextmanager
def forced(mode: str | None):
    """SPECTRALAR_KERNELS=mode for the calls inside (read per call by the public functions); None: unset."""
    old = os.environ.get("SPECTRALAR_KERNELS")
    if mode is None:
        os.environ.pop("SPECTRALAR_KERNELS", None)
    else:
        os.environ["SPECTRALAR_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPECTRALAR_KERNELS", None)
        else:
            os.environ["SPECTRALAR_KERNELS"] = old


class KernelProbe:
    """Records the implementation ids `choose_kernel` returns inside the block (None = the reference).

    The public functions import `choose_kernel` by name, so the wrapper replaces that name in every loaded
    spectralar_kernels module. An op that does not call `choose_kernel` leaves `seen` empty."""

    def __enter__(self):
        import spectralar_kernels._common as common

        self.seen, self.patched = [], []
        original = getattr(common, "choose_kernel", None)
        if original is None:
            return self

        def recording(*args, **kwargs):
            impl = original(*args, **kwargs)
            self.seen.append(impl)
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
        ran = sorted({str(s) if s is not None else "reference" for s in self.seen})
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
        return None
    try:
        values = fn(*args)
        ctx.sync()  # an asynchronous kernel fault belongs to this row, not the next
    except Exception as exc:  # one failure is a row of the report, not the end of it
        traceback.print_exc()
        values = {"result": "FAIL", "note": short_error(exc)}
    ctx.writer.row(title, columns, {**keys, **values})
    gc.collect()
    if ctx.cuda:
        with contextlib.suppress(Exception):  # after a sticky CUDA error, later rows fail on their own
            torch.cuda.empty_cache()
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


@dataclasses.dataclass
class Provider:
    """One timed implementation. `impl`: a shipped id (a kernel of ours), else None (reference or a peer);
    `mode`: SPECTRALAR_KERNELS while it runs; the first provider of a list is the "x ref" baseline."""

    name: str
    fn: object
    impl: str | None = None
    mode: str = "ref"
    expect: str | None = None


def kernel_providers(ctx: Ctx, key, fn) -> list[Provider]:
    """One provider per shipped implementation of `key` = (op, variant), oldest first, all calling `fn` (the
    public function) under the SPECTRALAR_KERNELS that selects it."""
    out = []
    for impl in implementations()[key]:
        mode = ctx.mode(key, impl)
        name = impl if ctx.kernels_run else f"{impl} (ref backend)"
        out.append(Provider(name, fn, impl=impl, mode=mode, expect=ctx.expected(key, impl)))
    return out


def time_providers(ctx: Ctx, title: str, key, case: str, dtype, providers, cost: fl.Cost) -> None:
    """Time every provider side by side, the reference (providers[0]) first. Ours failing, or running another
    implementation than asked, is FAIL; a peer failing (e.g. no bf16 support) is n/a."""
    ref_s = {}
    if not ctx.floors.measured:
        ctx.writer.note(title, TIME_COLS, "% of floor uses nominal H200 datasheet rates: the machine section did "
                                          "not measure them")  # fmt: skip

    def one(p: Provider, baseline: bool):
        note = ""
        try:
            with forced(p.mode):
                if p.impl is not None:  # an untimed first call: which implementation actually runs
                    with KernelProbe() as probe:
                        p.fn()
                    ok, note = probe.verdict(p.expect)
                    if not ok:
                        return {"result": "FAIL", "note": note}
                seconds = ctx.time(p.fn)
                peak = "-"
                if ctx.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    p.fn()
                    torch.cuda.synchronize()
                    peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
        except Exception as exc:
            if p.impl is not None or baseline:
                raise
            return {"result": "n/a", "note": short_error(exc)}
        if baseline:
            ref_s["s"] = seconds
        ctx.writer.timing({"op": key[0], "variant": key[1], "dtype": dname(dtype), "case": case, "provider": p.name,
                           "impl": p.impl, "baseline": baseline, "s": seconds})  # fmt: skip
        a = fl.achieved(cost, seconds, ctx.floors, dtype)
        return {"ms": f"{seconds * 1e3:.4g}", "GB/s": f"{a['gbps']:.4g}", "TFLOP/s": f"{a['tflops']:.3g}",
                "bound": a["bound"], "% of floor": f"{100 * a['frac']:.3g}" if a["frac"] is not None else "-",
                "x ref": f"{ref_s['s'] / seconds:.2f}" if "s" in ref_s and not baseline else "-",
                "peak MB": peak, "result": "ok", "note": "" if note.startswith("ran ") else note}

    for i, p in enumerate(providers):
        run_case(ctx, title, TIME_COLS, {"case": case, "dtype": dname(dtype), "provider": p.name}, one, p, i == 0)
