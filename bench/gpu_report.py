"""One-shot GPU report: every kernel's correctness and speed, and generator sampling, in one markdown file.

    python bench/gpu_report.py --out docs/gpu_report.md    # CUDA: aims at ~4 min on an H200, hard cap --budget-s
    python bench/gpu_report.py --dry-run                   # CPU, tiny shapes, reference backend, perf_counter
    python bench/gpu_report.py --dry-run --interpret       # same, with the Triton kernels under TRITON_INTERPRET=1

Phases; every section runs in its own child process, so a crash or a hung kernel in one section becomes a
FAIL row and the rest still runs (a child killed at its deadline keeps the rows it already wrote):
  1. machine: GPU, torch / triton / CUDA versions and the floors measured here: device-to-device copy
     bandwidth and square-GEMM TFLOP/s (bf16, fp16, fp32 with TF32 off, TF32).
  2. correctness, up to --jobs sections at once (one per op x dtype x shape family, plus the sampling
     agreement check; running them side by side spreads the JIT compiles of every kernel configuration the
     timings use over the CPU cores): the Triton path (SPECTRALAR_KERNELS=triton) against the float64
     reference on awkward and realistic shapes in fp32 / bf16 / fp16. The launcher also writes into a
     NaN-filled `out=`, so an element it never writes fails.
  3. timings, one section at a time on an otherwise idle GPU: triton.testing.do_bench (warm-up, L2 flushed,
     mean) of the Triton path vs the same-precision reference and peers (torch.cdist + argmin, expanded
     matmul VQ, SDPA inside the reference, flash-attn and torch-dct when importable); achieved GB/s and
     TFLOP/s by the formulas of bench/floors.py and the fraction of the measured roofline.
  4. sampling: the fmnist and d16 generators (random init, bf16; fmnist also fp32) with and without the
     KV cache, and with the decode step compiled (torch.compile, CUDA graphs), images/s and tokens/s; d16's
     exact parameter count.
Every phase ends at a fixed share of --budget-s; past it, sections write SKIP rows instead of running.

Tolerances (the rule of tests/tolerances.py, which does the comparing): fp32 outputs need
|out - oracle| <= atol + 1e-4 |oracle| elementwise, atol = 1e-5 max(1, max|oracle|) (VQ l2 distances:
1e-5 max(1, max|z|^2 + max|c|^2), the test suite's, since ||z||^2 - 2 z.c + ||c||^2 cancels); fp16 / bf16
outputs need max error <= 2 x the max error of the same-precision PyTorch reference + 1e-3 max|oracle|.
Exit status: 0 all PASS, 1 some FAIL (the report is written either way), 2 no CUDA and no --dry-run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT)]  # floors, tolerances, spectralar

import floors as fl  # noqa: E402

OPS = ("dct", "subimages", "vq", "attention", "kvcache")
GRACE_S = 30  # a child still running this long after its deadline is killed
CHECK_COLS = ["case", "shape", "dtype", "max err", "ref err", "rule", "result", "note"]
TIME_COLS = ["case", "dtype", "provider", "ms", "GB/s", "TFLOP/s", "bound", "% of floor", "x ref", "peak MB",
             "result", "note"]  # fmt: skip
LOWP = (torch.float16, torch.bfloat16)


def sizes(dry: bool) -> dict:
    """Shapes per section. Realistic = this model's: 64 x 3 x 256^2 images, 64-token windows, VQ of 64 x 64
    code vectors (d = 12) against K = 4096 / 16384, generator T = 65 (B = 64 with CFG -> 128), encoder
    256 patches + 64 queries (prefix-LM), decoder T = 320 (full), head dim 64. Timings reuse the realistic
    shapes of the checks, so they run kernels the checks compiled."""
    if dry:
        img, vq, gen, enc = (2, 3, 32, 32), (256, 512, 12), (4, 17, 2, 32), (2, 80, 2, 32)
        return {
            "dct": [("awkward", (5, 1, 1), None), ("awkward", (2, 7, 33), None), ("awkward", (2, 3, 40, 24), 8),
                    ("realistic", img, None), ("realistic", img, 8)],
            "dct_time": [(img, None), (img, 8)],
            "sub": [("awkward", (3, 1, 7, 7), 7, False), ("awkward", (2, 1, 17, 17), [1, 3, 8, 17], True),
                    ("realistic", img, 16, False), ("realistic", img, 16, True)],
            "sub_time": [(img, 16, False), (img, 16, True)],
            "vq": [("awkward", 7, 100, 12), ("awkward", 33, 65, 3), ("realistic", *vq)],
            "vq_time": [vq],
            "attn": [("awkward", (2, 7, 2, 40), ("full", "causal", "prefix")), ("awkward", (1, 17, 2, 24), ("prefix",)),
                     ("generator", gen, ("causal",)), ("encoder", enc, ("prefix=64",)), ("decoder", enc, ("full",))],
            "attn_time": [("generator", gen, "causal"), ("encoder", enc, "prefix=64")],
            "kv": [("awkward", 3, 20, 2, 40, 1, [0, 5, 19]), ("awkward", 2, 20, 1, 24, 3, [0, 10]),
                   ("realistic", 4, 17, 2, 32, 1, [16] * 4)],
            "kv_time": [(4, 17, 2, 32, 1, [16] * 4)],
            "sampling": {"models": ["fmnist", "d16"], "batches": [1, 4], "reps": 1, "agree_batch": 4},
            "copy_bytes": 32 << 20, "gemm_n": 256,
        }  # fmt: skip
    img, gen, enc = (64, 3, 256, 256), (128, 65, 16, 64), (64, 320, 12, 64)
    return {
        "dct": [("awkward", (5, 1, 1), None), ("awkward", (2, 7, 33), None), ("awkward", (3, 65, 17), None),
                ("awkward", (2, 300, 257), None), ("awkward", (2, 3, 40, 24), 8), ("awkward", (2, 12, 20), 4),
                ("realistic", img, None), ("realistic", img, 8)],
        "dct_time": [(img, None), (img, 8)],
        "sub": [("awkward", (3, 1, 7, 7), 7, False), ("awkward", (2, 2, 33, 33), 16, False),
                ("awkward", (1, 1, 257, 257), 64, False), ("awkward", (2, 1, 17, 17), [1, 3, 8, 17], True),
                ("awkward", (1, 3, 64, 64), 16, True),
                ("realistic", img, 64, False), ("realistic", (8, 3, 256, 256), 64, True)],
        "sub_time": [(img, 64, False), ((8, 3, 256, 256), 64, True)],
        "vq": [("awkward", 1, 1, 12), ("awkward", 7, 1000, 12), ("awkward", 1000, 4097, 12),
               ("awkward", 300, 333, 3), ("awkward", 129, 1025, 40),
               ("realistic", 4096, 4096, 12), ("realistic", 4096, 16384, 12)],
        "vq_time": [(4096, 4096, 12), (4096, 16384, 12)],
        "attn": [("awkward", (2, 1, 3, 24), ("full", "causal")),
                 ("awkward", (2, 7, 2, 40), ("full", "causal", "prefix")),
                 ("awkward", (1, 65, 3, 64), ("full", "causal", "prefix")),
                 ("awkward", (1, 257, 2, 80), ("full", "causal", "prefix")),
                 ("generator", gen, ("causal",)), ("encoder", enc, ("prefix=256",)), ("decoder", enc, ("full",))],
        "attn_time": [("generator", gen, "causal"), ("encoder", enc, "prefix=256"), ("decoder", enc, "full")],
        "kv": [("awkward", 3, 257, 2, 40, 1, [0, 5, 256]), ("awkward", 3, 257, 2, 40, 7, [0, 100, 250]),
               ("awkward", 1, 1, 1, 24, 1, [0]), ("awkward", 2, 150, 3, 80, 1, [149, 17]),
               ("realistic", 128, 65, 16, 64, 1, [64] * 128), ("realistic", 128, 65, 16, 64, 1, [10] * 128),
               ("realistic", 2, 65, 16, 64, 1, [64] * 2)],
        "kv_time": [(128, 65, 16, 64, 1, [64] * 128), (2, 65, 16, 64, 1, [64] * 2)],
        "sampling": {"models": ["fmnist", "d16"], "batches": [1, 64], "reps": 3, "agree_batch": 16},
        "copy_bytes": 1 << 30, "gemm_n": 8192,
    }  # fmt: skip


# ---- child side: context, rows, checks --------------------------------------------------------------


class Writer:
    """Tables of one section, saved as JSON after every row (a killed child keeps what it wrote)."""

    def __init__(self, path: Path, section: str):
        self.path, self.section = path, section
        self.data = {"tables": [], "floors": None}

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
        self.table(title, columns)["notes"].append(text)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        os.replace(tmp, self.path)


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
    part: str | None = None  # ... and either the "awkward" shapes or the realistic ones
    seed: int = 0

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def kernel_mode(self) -> str:
        """SPECTRALAR_KERNELS for the "triton" provider: the reference on a dry run without the interpreter."""
        return "triton" if self.cuda or self.interpret else "ref"

    @property
    def provider(self) -> str:
        return "triton" if self.kernel_mode == "triton" else "public (ref backend)"

    def wants(self, tag: str) -> bool:
        return self.part is None or (tag == "awkward") == (self.part == "awkward")

    @property
    def check_dtypes(self):
        return (self.only_dtype,) if self.only_dtype is not None else (torch.float32, torch.bfloat16, torch.float16)

    @property
    def time_dtypes(self):
        return (torch.float32, torch.bfloat16) if self.cuda else (torch.float32,)

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


@contextlib.contextmanager
def forced(mode: str):
    """SPECTRALAR_KERNELS=mode for the calls inside (read per call by the public functions)."""
    old = os.environ.get("SPECTRALAR_KERNELS")
    os.environ["SPECTRALAR_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPECTRALAR_KERNELS", None)
        else:
            os.environ["SPECTRALAR_KERNELS"] = old


def dname(dtype: torch.dtype) -> str:
    return fl.DTYPE_NAME[dtype]


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split())
    return f"{type(exc).__name__}: {text}"[:300]


def run_case(ctx: Ctx, title: str, columns, keys: dict, fn, *args):
    """One row: fn(*args) -> {column: value}; an exception becomes a FAIL row, a spent budget a SKIP row."""
    if time.time() > ctx.deadline:
        ctx.writer.row(title, columns, {**keys, "result": "SKIP", "note": "time budget spent"})
        return None
    try:
        values = fn(*args)
        if ctx.cuda:
            torch.cuda.synchronize()  # an asynchronous kernel fault belongs to this row, not the next
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
    """items: (name, out, float64 oracle, same-precision reference or None). tests/tolerances.py decides."""
    from tolerances import assert_close_to_oracle, max_err

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


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device)


def _launcher(name: str, *modules: str):
    """Launcher `name` from the first of `modules` (under spectralar_kernels) that defines it."""
    for m in modules:
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(f"spectralar_kernels.{m}"), name)
    raise ImportError(f"no {name} in spectralar_kernels.{' / '.join(modules)}")


def launcher_check(ctx: Ctx, run) -> tuple[list, str]:
    """On the Triton path, `run()` reruns the launcher into NaN-filled outputs and returns check items.
    A launcher that moved or changed its signature (ImportError / TypeError) skips this extra check with a
    note rather than failing the row: the public function is checked either way."""
    if ctx.kernel_mode != "triton":
        return [], ""
    try:
        return run(), ""
    except (ImportError, TypeError) as exc:
        return [], f"launcher out=NaN check skipped: {short_error(exc)}"


def time_providers(ctx: Ctx, title: str, case: str, dtype, providers, cost: fl.Cost) -> None:
    """providers: (name, fn, ours), the reference first (the "x ref" baseline). Ours failing is FAIL; a peer
    failing (e.g. no bf16 support) is n/a."""
    ref_s = {}
    baseline = providers[0][0]
    if not ctx.floors.measured:
        ctx.writer.note(title, TIME_COLS, "% of floor uses DESIGN.md's nominal H200 rates: the machine section did "
                                          "not measure them")  # fmt: skip

    def one(name, fn, ours):
        try:
            with forced(ctx.kernel_mode if ours else "ref"):
                seconds = ctx.time(fn)
                peak = "-"
                if ctx.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    torch.cuda.synchronize()
                    peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
        except Exception as exc:
            if ours:
                raise
            return {"result": "n/a", "note": short_error(exc)}
        if name == baseline:
            ref_s["s"] = seconds
        a = fl.achieved(cost, seconds, ctx.floors, dtype)
        return {"ms": f"{seconds * 1e3:.4g}", "GB/s": f"{a['gbps']:.4g}", "TFLOP/s": f"{a['tflops']:.3g}",
                "bound": a["bound"], "% of floor": f"{100 * a['frac']:.3g}" if a["frac"] is not None else "-",
                "x ref": f"{ref_s['s'] / seconds:.2f}" if "s" in ref_s and name != baseline else "-",
                "peak MB": peak, "result": "ok"}  # fmt: skip

    for name, fn, ours in providers:
        run_case(ctx, title, TIME_COLS, {"case": case, "dtype": dname(dtype), "provider": name}, one, name, fn, ours)


def optional_module(name: str):
    """The module if it is installed and imports cleanly, else None (a broken install counts as absent)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def fmt_shape(shape) -> str:
    return "x".join(map(str, shape))


# ---- sections ---------------------------------------------------------------------------------------


def section_machine(ctx: Ctx) -> None:
    import triton

    title, cols = "Machine and measured floors", ["quantity", "value", "result", "note"]
    w = ctx.writer
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        info = [("GPU", p.name), ("compute capability", f"sm_{p.major}{p.minor}"),
                ("SMs", p.multi_processor_count), ("memory", f"{p.total_memory / 2**30:.0f} GiB"),
                ("CUDA (torch build)", torch.version.cuda)]  # fmt: skip
    else:
        info = [("device", f"CPU ({platform.processor() or platform.machine()}), dry run"),
                ("torch threads", torch.get_num_threads())]  # fmt: skip
    info += [("torch", torch.__version__), ("triton", triton.__version__), ("python", platform.python_version())]
    for mod in ("flash_attn", "torch_dct"):
        m = optional_module(mod)
        info.append((mod, getattr(m, "__version__", "installed") if m else "not installed (peer skipped)"))
    for k, v in info:
        w.row(title, cols, {"quantity": k, "value": v, "result": "info"})
        print(f"{k}: {v}", flush=True)

    measured = {"copy_gbps": None, "tflops": {}}
    nominal = fl.Floors.nominal()

    def save_floors():  # after every measurement: a section killed later still leaves what it measured
        w.data["floors"] = {"copy_gbps": measured["copy_gbps"] or nominal.copy_gbps,
                            "tflops": {**nominal.tflops, **measured["tflops"]},
                            "measured": measured["copy_gbps"] is not None and len(measured["tflops"]) == 4}  # fmt: skip
        w.save()

    save_floors()

    def copy():
        measured["copy_gbps"] = fl.measure_copy_gbps(ctx.device, ctx.sizes["copy_bytes"])
        save_floors()
        return {"value": f"{measured['copy_gbps']:.4g} GB/s", "result": "ok",
                "note": f"{ctx.sizes['copy_bytes'] >> 20} MiB device-to-device copy; read + write counted"}  # fmt: skip

    def gemm(key, dtype, tf32):
        n = ctx.sizes["gemm_n"]
        measured["tflops"][key] = fl.measure_matmul_tflops(ctx.device, dtype, n, tf32=tf32)
        save_floors()
        mode = ("TF32 allowed" if tf32 else "TF32 off") if dtype == torch.float32 else "fp32 accumulation"
        return {"value": f"{measured['tflops'][key]:.4g} TFLOP/s", "result": "ok", "note": f"{n}^3 GEMM, {mode}"}

    run_case(ctx, title, cols, {"quantity": "copy bandwidth"}, copy)
    for key, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                             ("fp32", torch.float32, False), ("tf32", torch.float32, True)):  # fmt: skip
        run_case(ctx, title, cols, {"quantity": f"GEMM {key}"}, gemm, key, dtype, tf32)
    if not w.data["floors"]["measured"]:
        w.note(title, cols, "some floors were not measured: DESIGN.md's nominal H200 numbers stand in for them")


def check_dct(ctx: Ctx) -> None:
    from spectralar_kernels import dct2d, idct2d
    from spectralar_kernels.dct import ref

    def case(shape, block, inverse, dtype):
        x = ctx.randn(shape, dtype)
        with forced(ctx.kernel_mode):
            y = (idct2d if inverse else dct2d)(x, block=block)
        ref_fn = ref.idct2d if inverse else ref.dct2d
        oracle, same = ref_fn(x, block, upcast=True), ref_fn(x, block)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launcher("dct2d_fwd", "dct.triton")(
            x, block, inverse, out=nan_like(x)), oracle, same)])  # fmt: skip
        return check([("public", y, oracle, same), *extra], note=note)

    for tag, shape, block in ctx.sizes["dct"]:
        if not ctx.wants(tag):
            continue
        for inverse in (False, True):
            for dtype in ctx.check_dtypes:
                keys = {"case": f"{'idct2d' if inverse else 'dct2d'} {tag} block={block}", "shape": fmt_shape(shape),
                        "dtype": dname(dtype)}  # fmt: skip
                run_case(ctx, "dct2d / idct2d: correctness", CHECK_COLS, keys, case, shape, block, inverse, dtype)


def time_dct(ctx: Ctx) -> None:
    from spectralar_kernels import dct2d
    from spectralar_kernels.dct import ref

    torch_dct = optional_module("torch_dct")

    def run(shape, block, dtype):
        x = ctx.randn(shape, dtype)
        providers = [("ref", lambda: ref.dct2d(x, block), False), (ctx.provider, lambda: dct2d(x, block=block), True)]
        if torch_dct is not None and block is None:
            providers.append(("torch-dct", lambda: torch_dct.dct_2d(x, norm="ortho"), False))
        cost = fl.dct2d_cost(shape, block, x.element_size())
        time_providers(ctx, "dct2d: timing", f"dct2d {fmt_shape(shape)} block={block}", dtype, providers, cost)

    for shape, block in ctx.sizes["dct_time"]:
        for dtype in ctx.time_dtypes:
            run(shape, block, dtype)


def _sub_windows(ctx: Ctx, shape, spec, all_prefixes: bool):
    """Prefix list (all_prefixes) or an int64 tensor [B] of per-sample windows drawn from the power mapping."""
    from spectralar_kernels import spectral_windows

    s = shape[-1]
    windows = list(spec) if isinstance(spec, list) else spectral_windows(s, min(spec, s), "power")
    if all_prefixes:
        return windows
    pick = ctx.randint(0, len(windows), (shape[0],))
    return torch.tensor(windows, dtype=torch.int64, device=ctx.device)[pick]


def check_subimages(ctx: Ctx) -> None:
    from spectralar_kernels import spectral_subimages
    from spectralar_kernels.subimages import ref

    def case(shape, spec, all_prefixes, dtype):
        x = ctx.randn(shape, dtype)
        windows = _sub_windows(ctx, shape, spec, all_prefixes)
        with forced(ctx.kernel_mode):
            y = spectral_subimages(x, windows, all_prefixes=all_prefixes)
        oracle = ref.spectral_subimages(x, windows, all_prefixes, upcast=True)
        same = ref.spectral_subimages(x, windows, all_prefixes)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launcher(
            "spectral_subimages_fwd", "subimages.triton")(x, windows, all_prefixes, out=nan_like(y)), oracle, same)])
        return check([("public", y, oracle, same), *extra], note=note)

    for tag, shape, spec, all_prefixes in ctx.sizes["sub"]:
        if not ctx.wants(tag):
            continue
        n = len(spec) if isinstance(spec, list) else min(spec, shape[-1])
        what = f"all_prefixes N={n}" if all_prefixes else "one window per sample"
        for dtype in ctx.check_dtypes:
            keys = {"case": f"{tag} {what}", "shape": fmt_shape(shape), "dtype": dname(dtype)}
            run_case(ctx, "spectral_subimages: correctness", CHECK_COLS, keys, case, shape, spec, all_prefixes, dtype)


def time_subimages(ctx: Ctx) -> None:
    from spectralar_kernels import spectral_subimages
    from spectralar_kernels.subimages import ref

    def run(shape, spec, all_prefixes, dtype):
        x = ctx.randn(shape, dtype)
        windows = _sub_windows(ctx, shape, spec, all_prefixes)
        providers = [("ref", lambda: ref.spectral_subimages(x, windows, all_prefixes), False),
                     (ctx.provider, lambda: spectral_subimages(x, windows, all_prefixes), True)]  # fmt: skip
        listed = windows if all_prefixes else windows.tolist()
        cost = fl.subimages_cost(shape, listed, all_prefixes, x.element_size())
        what = f"all_prefixes N={len(windows)}" if all_prefixes else "one window per sample"
        time_providers(ctx, "spectral_subimages: timing", f"{what} {fmt_shape(shape)}", dtype, providers, cost)

    for shape, spec, all_prefixes in ctx.sizes["sub_time"]:
        for dtype in ctx.time_dtypes:
            run(shape, spec, all_prefixes, dtype)


def _vq_atol(z: torch.Tensor, c: torch.Tensor, metric: str) -> float:
    if metric == "cosine":
        return 1e-5
    scale = z.double().pow(2).sum(1).max().item() + c.double().pow(2).sum(1).max().item()
    return 1e-5 * max(1.0, scale)


def check_vq(ctx: Ctx) -> None:
    from spectralar_kernels import vq_nearest
    from spectralar_kernels.vq import ref

    def case(m, k, d, metric, dtype):
        z, c = ctx.randn((m, d), dtype), ctx.randn((k, d), dtype)
        with forced(ctx.kernel_mode):
            idx, dist = vq_nearest(z, c, metric)
        idx64, dist64 = ref.vq_nearest_ref(z, c, metric, upcast=True)
        _, dist_same = ref.vq_nearest_ref(z, c, metric)
        if idx.dtype != torch.int64 or not bool(((idx >= 0) & (idx < k)).all()):
            return {"result": "FAIL", "note": f"indices out of range or not int64 ({idx.dtype})"}
        # float64 distance of the code the kernel chose: a nearest code within tolerance (ties are legal)
        chosen = ref._direct_distance(z.double(), c.double()[idx], metric == "cosine")
        out = (torch.full((m,), -1, dtype=torch.int64, device=z.device), nan_like(dist))
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launcher("vq_nearest_fwd", "vq.triton")(
            z, c, metric, out=out)[1], dist64, dist_same)])  # fmt: skip
        same_idx = 100 * (idx == idx64).double().mean().item()
        items = [("distance", dist, dist64, dist_same), ("chosen code", chosen, dist64, None), *extra]
        note = "; ".join(n for n in (f"indices = float64 argmin: {same_idx:.2f}%", note) if n)
        return check(items, atol=_vq_atol(z, c, metric), note=note)

    for tag, m, k, d in ctx.sizes["vq"]:
        if not ctx.wants(tag):
            continue
        for metric in ("l2", "cosine"):
            for dtype in ctx.check_dtypes:
                keys = {"case": f"{tag} {metric}", "shape": f"M={m} K={k} d={d}", "dtype": dname(dtype)}
                run_case(ctx, "vq_nearest: correctness", CHECK_COLS, keys, case, m, k, d, metric, dtype)


def time_vq(ctx: Ctx) -> None:
    import torch.nn.functional as F

    from spectralar_kernels import vq_nearest
    from spectralar_kernels.vq import ref

    def run(m, k, d, metric, dtype):
        z, c = ctx.randn((m, d), dtype), ctx.randn((k, d), dtype)
        providers = [("ref (chunked)", lambda: ref.vq_nearest_ref(z, c, metric), False),
                     (ctx.provider, lambda: vq_nearest(z, c, metric), True)]  # fmt: skip
        # peers: the unfused forms, an M x K matrix in the input dtype
        if metric == "l2":
            providers.append(("torch.cdist+argmin", lambda: torch.cdist(z, c).argmin(1), False))
            providers.append(("matmul+argmin", lambda: (c.pow(2).sum(1) - 2 * z @ c.T).argmin(1), False))
        else:
            cosine = lambda: (F.normalize(z, dim=1) @ F.normalize(c, dim=1).T).argmax(1)
            providers.append(("matmul+argmax", cosine, False))
        cost = fl.vq_cost(m, k, d, z.element_size())
        time_providers(ctx, "vq_nearest: timing", f"{metric} M={m} K={k} d={d}", dtype, providers, cost)

    for m, k, d in ctx.sizes["vq_time"]:
        for metric in ("l2", "cosine"):
            for dtype in ctx.time_dtypes:
                run(m, k, d, metric, dtype)


def _mask(mask: str, t: int) -> tuple[bool, int, str]:
    """(causal, prefix_len, label) for "full", "causal", "prefix" (prefix T // 2) or "prefix=P"."""
    if mask.startswith("prefix"):
        prefix = int(mask.split("=")[1]) if "=" in mask else t // 2
        return True, prefix, f"prefix={prefix}"
    return mask == "causal", 0, mask


def _canonical(causal: bool, prefix_len: int, t: int) -> tuple[bool, int]:
    """The mask arguments the public `attention` hands its launcher (prefix 1 is causal, prefix T is full)."""
    if not causal or prefix_len >= t:
        return False, 0
    return True, 0 if prefix_len <= 1 else prefix_len


def check_attention(ctx: Ctx) -> None:
    from spectralar_kernels import attention
    from spectralar_kernels.attention import ref

    def forward(shape, causal, prefix, dtype):
        q, k, v = (ctx.randn(shape, dtype) for _ in range(3))
        with forced(ctx.kernel_mode):
            o = attention(q, k, v, causal=causal, prefix_len=prefix)
        oracle = ref.attention_ref(q.double(), k.double(), v.double(), causal, prefix)
        same = ref.attention_ref(q, k, v, causal, prefix)
        c2, p2 = _canonical(causal, prefix, shape[1])
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launcher("attention_fwd", "attention.triton")(
            q, k, v, c2, p2, shape[-1] ** -0.5, out=nan_like(q))[0], oracle, same)])  # fmt: skip
        return check([("public", o, oracle, same), *extra], note=note)

    def backward(shape, causal, prefix, dtype):
        q, k, v = (ctx.randn(shape, dtype).requires_grad_(True) for _ in range(3))
        do = ctx.randn(shape, dtype)
        with forced(ctx.kernel_mode):
            grads = torch.autograd.grad(attention(q, k, v, causal=causal, prefix_len=prefix), (q, k, v), do)
        x64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
        want = torch.autograd.grad(ref.attention_ref(*x64, causal, prefix), x64, do.double())
        same = torch.autograd.grad(ref.attention_ref(q, k, v, causal, prefix), (q, k, v), do)
        items = [(f"d{n}", g, g64, gs) for n, g, g64, gs in zip("qkv", grads, want, same)]

        def launched():
            fwd, bwd = _launcher("attention_fwd", "attention.triton"), _launcher("attention_bwd", "attention.triton")
            c2, p2 = _canonical(causal, prefix, shape[1])
            qd, kd, vd = (t.detach() for t in (q, k, v))
            scale = shape[-1] ** -0.5
            o2, lse = fwd(qd, kd, vd, c2, p2, scale)
            gl = bwd(do, qd, kd, vd, o2, lse, c2, p2, scale, dq=nan_like(qd), dk=nan_like(kd), dv=nan_like(vd))
            return [(f"launcher d{n} out=NaN", g, g64, gs) for n, g, g64, gs in zip("qkv", gl, want, same)]

        extra, note = launcher_check(ctx, launched)
        return check(items + extra, note=note)

    for tag, shape, masks in ctx.sizes["attn"]:
        if not ctx.wants(tag):
            continue
        for mask in masks:
            causal, prefix, label = _mask(mask, shape[1])
            for dtype in ctx.check_dtypes:
                for what, fn in (("fwd", forward), ("fwd+bwd", backward)):
                    keys = {"case": f"{tag} {label} {what}", "shape": fmt_shape(shape), "dtype": dname(dtype)}
                    run_case(ctx, "attention: correctness ([B, T, H, D])", CHECK_COLS, keys, fn, shape, causal, prefix,
                             dtype)  # fmt: skip


def time_attention(ctx: Ctx) -> None:
    from spectralar_kernels import attention
    from spectralar_kernels.attention import ref

    flash = optional_module("flash_attn") if ctx.cuda else None

    def run(name, shape, mask, dtype):
        b, t, h, d = shape
        causal, prefix, label = _mask(mask, t)
        c2, p2 = _canonical(causal, prefix, t)
        fwds = [("ref (SDPA)", lambda q, k, v: ref.attention_ref(q, k, v, causal, prefix), False),
                (ctx.provider, lambda q, k, v: attention(q, k, v, causal=causal, prefix_len=prefix), True)]  # fmt: skip
        if flash is not None and dtype in LOWP and p2 == 0:
            fwds.append(("flash-attn", lambda q, k, v: flash.flash_attn_func(q, k, v, causal=c2), False))
        q, k, v = (ctx.randn(shape, dtype) for _ in range(3))
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        do = ctx.randn(shape, dtype)
        for backward in (False, True):
            if backward:
                providers = [(n, lambda f=f: torch.autograd.grad(f(qg, kg, vg), (qg, kg, vg), do), ours)
                             for n, f, ours in fwds]  # fmt: skip
            else:
                providers = [(n, lambda f=f: f(q, k, v), ours) for n, f, ours in fwds]
            cost = fl.attention_cost(b, t, h, d, causal, prefix, q.element_size(), backward=backward)
            case = f"{name} {label} {'fwd+bwd' if backward else 'fwd'}"
            time_providers(ctx, f"attention: timing ({fmt_shape(shape)} = [B, T, H, D])", case, dtype, providers, cost)

    for name, shape, mask in ctx.sizes["attn_time"]:
        for dtype in ctx.time_dtypes:
            run(name, shape, mask, dtype)


def _kv_inputs(ctx: Ctx, b, t_max, h, d, t_q, seqlens, dtype):
    kc, vc = ctx.randn((b, t_max, h, d), dtype), ctx.randn((b, t_max, h, d), dtype)
    q, k, v = (ctx.randn((b, t_q, h, d), dtype) for _ in range(3))
    return kc, vc, q, k, v, torch.tensor(seqlens, dtype=torch.int32, device=ctx.device)


def check_kvcache(ctx: Ctx) -> None:
    from spectralar_kernels import attention_with_kvcache
    from spectralar_kernels.attention import ref

    def case(b, t_max, h, d, t_q, seqlens, dtype):
        kc, vc, q, k, v, sl = _kv_inputs(ctx, b, t_max, h, d, t_q, seqlens, dtype)
        kc0, vc0 = kc.clone(), vc.clone()
        with forced(ctx.kernel_mode):
            o = attention_with_kvcache(q, kc, vc, sl, k=k, v=v)
        pos = sl.long()[:, None] + torch.arange(t_q, device=ctx.device)  # [B, Tq]
        rows = torch.arange(b, device=ctx.device)[:, None].expand(b, t_q)
        written = torch.zeros(b, t_max, dtype=torch.bool, device=ctx.device)
        written[rows, pos] = True
        write_ok = all(torch.equal(a, b) for a, b in ((kc[rows, pos], k), (vc[rows, pos], v),
                                                       (kc[~written], kc0[~written]), (vc[~written], vc0[~written])))
        oracle = ref.attention_with_kvcache_ref(q.double(), kc.double(), vc.double(), sl)
        same = ref.attention_with_kvcache_ref(q, kc, vc, sl)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launcher(
            "attention_with_kvcache_fwd", "attention.decode", "attention.triton")(
            q, kc, vc, sl, d**-0.5, out=nan_like(q)), oracle, same)])  # fmt: skip
        res = check([("public", o, oracle, same), *extra], note=note)
        if not write_ok:
            res["result"], res["note"] = "FAIL", ("cache write wrong (new k/v not at cache_seqlens, or other rows "
                                                  "touched); " + res["note"])  # fmt: skip
        return res

    for tag, b, t_max, h, d, t_q, seqlens in ctx.sizes["kv"]:
        if not ctx.wants(tag):
            continue
        for dtype in ctx.check_dtypes:
            lens = f"{seqlens[0]}" if len(set(seqlens)) == 1 else ",".join(map(str, seqlens))
            keys = {"case": f"{tag} Tq={t_q} cache_seqlens={lens}", "shape": f"B={b} T_max={t_max} H={h} D={d}",
                    "dtype": dname(dtype)}  # fmt: skip
            run_case(ctx, "attention_with_kvcache: correctness (cache written in place, then read)", CHECK_COLS, keys,
                     case, b, t_max, h, d, t_q, seqlens, dtype)  # fmt: skip


def time_kvcache(ctx: Ctx) -> None:
    from spectralar_kernels import attention_with_kvcache
    from spectralar_kernels.attention import ref

    flash = optional_module("flash_attn") if ctx.cuda else None

    def run(b, t_max, h, d, t_q, seqlens, dtype):
        kc, vc, q, k, v, sl = _kv_inputs(ctx, b, t_max, h, d, t_q, seqlens, dtype)

        def reference():
            ref.write_kvcache(kc, vc, sl, k, v)
            return ref.attention_with_kvcache_ref(q, kc, vc, sl)

        providers = [("ref", reference, False),
                     (ctx.provider, lambda: attention_with_kvcache(q, kc, vc, sl, k=k, v=v), True)]  # fmt: skip
        if flash is not None and dtype in LOWP:
            fn = flash.flash_attn_with_kvcache
            providers.append(("flash-attn", lambda: fn(q, kc, vc, k=k, v=v, cache_seqlens=sl, causal=True), False))
        cost = fl.decode_cost(seqlens, t_q, h, d, q.element_size())
        case = f"decode B={b} T_max={t_max} H={h} D={d} Tq={t_q} seqlen={seqlens[0]}"
        time_providers(ctx, "attention_with_kvcache: timing (write k/v + one step)", case, dtype, providers, cost)

    for b, t_max, h, d, t_q, seqlens in ctx.sizes["kv_time"]:
        for dtype in ctx.time_dtypes:
            run(b, t_max, h, d, t_q, seqlens, dtype)


CFG_SCALE = 2.0
SAMPLING_TITLE = f"generator sampling (random init, CFG {CFG_SCALE}: 2 rows per image)"
SAMPLING_COLS = ["model", "dtype", "batch (rows)", "kv cache", "s/call", "images/s", "tokens/s", "result", "note"]


def _generators(ctx: Ctx):
    """(preset name, dtype) to sample: bf16 on CUDA, plus fmnist in fp32 for the exact-agreement check."""
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    runs = [(name, dtype) for name in ctx.sizes["sampling"]["models"]]
    return ([("fmnist", torch.float32)] if ctx.cuda else []) + runs


def _generator_api():
    """(preset, SpectralGPT). If the package's __init__ cannot import (e.g. safetensors missing), load just
    the modules sampling needs from the source tree."""
    try:
        import spectralar  # noqa: F401
    except ImportError:
        traceback.print_exc()
        for name in [m for m in sys.modules if m == "spectralar" or m.startswith("spectralar.")]:
            del sys.modules[name]
        package = types.ModuleType("spectralar")
        package.__path__ = [str(ROOT / "spectralar")]
        sys.modules["spectralar"] = package
    from spectralar.config import preset
    from spectralar.generator import SpectralGPT

    return preset, SpectralGPT


def _build_generator(ctx: Ctx, name: str, dtype: torch.dtype):
    preset, SpectralGPT = _generator_api()
    cfg, label = preset("generator", name), name
    if ctx.dry and name == "d16":  # same sequence length and codebook, tiny body: a dry run only
        cfg = dataclasses.replace(cfg, width=64, depth=2, heads=2)
        label = "d16 (dry run: width 64, depth 2)"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = SpectralGPT(cfg)
    return model.to(dtype).eval(), cfg, label


# sampling modes: eager KV cache, recompute (no cache), and the decode step through torch.compile (CUDA graphs)
MODES = {"yes": {"kv_cache": True}, "no": {"kv_cache": False}, "yes, compiled": {"kv_cache": True, "compile": True}}


def _generate(ctx: Ctx, model, batch: int, mode: str, **kw) -> torch.Tensor:
    labels = torch.arange(batch, device=ctx.device) % model.config.num_classes
    g = torch.Generator(device=ctx.device).manual_seed(0)
    codes = model.generate(labels, cfg_scale=CFG_SCALE, generator=g, **MODES[mode], **kw)
    if ctx.cuda:
        torch.cuda.synchronize()
    return codes


def check_sampling(ctx: Ctx) -> None:
    """Eager KV cache vs recompute and vs the compiled decode step; also one warm-up call per timed
    configuration, so the kernels sampling needs are compiled here, in parallel with the other checks, not
    during the timings (torch.compile's on-disk cache carries the compiled decode step to the timing process)."""
    sizes = ctx.sizes["sampling"]
    title = "generator sampling: KV cache vs recompute / compiled decode, same torch.Generator seed"
    cols = ["model", "dtype", "sampling", "equal codes", "result", "note"]

    def agreement(model, dtype, other, kw):
        a, b = (_generate(ctx, model, sizes["agree_batch"], mode, **kw) for mode in ("yes", other))
        frac = (a == b).double().mean().item()
        if dtype == torch.float32:
            return {"equal codes": f"{100 * frac:.1f}%", "result": "PASS" if frac == 1.0 else "FAIL"}
        return {"equal codes": f"{100 * frac:.1f}%", "result": "info",
                "note": "low precision: the two paths round differently, near-ties may flip and then diverge"}

    for name, dtype in _generators(ctx):
        keys = {"model": name, "dtype": dname(dtype)}
        try:
            model, _, keys["model"] = _build_generator(ctx, name, dtype)
        except Exception as exc:
            traceback.print_exc()
            ctx.writer.row(title, cols, {**keys, "result": "FAIL", "note": short_error(exc)})
            continue
        for other, vs in (("no", "vs recompute"), ("yes, compiled", "vs compiled decode")):
            for kw, what in (({}, "sampled (temperature 1)"), ({"top_k": 1}, "greedy (top_k=1)")):
                keys["sampling"] = f"{what}, batch {sizes['agree_batch']}, {vs}"
                run_case(ctx, title, cols, keys, agreement, model, dtype, other, kw)
        for batch in sizes["batches"]:
            for mode in MODES:
                if time.time() < ctx.deadline:
                    with contextlib.suppress(Exception):  # a failure here shows again, as a row, in the timings
                        _generate(ctx, model, batch, mode)
        del model


def section_sampling(ctx: Ctx) -> None:
    preset, SpectralGPT = _generator_api()
    sizes = ctx.sizes["sampling"]
    with torch.device("meta"):
        n_d16 = sum(p.numel() for p in SpectralGPT(preset("generator", "d16")).parameters())
    ctx.writer.note(SAMPLING_TITLE, SAMPLING_COLS, f"d16 parameters (exact): {n_d16:,}")

    def timing(model, cfg, batch, mode):
        t0 = time.perf_counter()
        _generate(ctx, model, batch, mode)  # warm-up: allocator, any kernel the checks did not compile
        warm = time.perf_counter() - t0
        times = []
        for _ in range(sizes["reps"]):
            t0 = time.perf_counter()
            _generate(ctx, model, batch, mode)
            times.append(time.perf_counter() - t0)
        s = sorted(times)[len(times) // 2]
        return {"s/call": f"{s:.3f}", "images/s": f"{batch / s:.1f}", "tokens/s": f"{batch * cfg.num_tokens / s:.0f}",
                "result": "ok", "note": f"median of {len(times)}, {cfg.num_tokens} tokens/image; "
                                        f"warm-up call {warm:.2f} s"}  # fmt: skip

    for name, dtype in _generators(ctx):
        keys = {"model": name, "dtype": dname(dtype)}
        try:
            model, cfg, keys["model"] = _build_generator(ctx, name, dtype)
        except Exception as exc:
            traceback.print_exc()
            ctx.writer.row(SAMPLING_TITLE, SAMPLING_COLS, {**keys, "result": "FAIL", "note": short_error(exc)})
            continue
        for batch in sizes["batches"]:
            for mode in MODES:
                keys.update({"batch (rows)": f"{batch} ({2 * batch})", "kv cache": mode})
                run_case(ctx, SAMPLING_TITLE, SAMPLING_COLS, keys, timing, model, cfg, batch, mode)
        del model


CHECKS = {"dct": check_dct, "subimages": check_subimages, "vq": check_vq, "attention": check_attention,
          "kvcache": check_kvcache}  # fmt: skip
TIMINGS = {"dct": time_dct, "subimages": time_subimages, "vq": time_vq, "attention": time_attention,
           "kvcache": time_kvcache}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARTS = ("awkward", "realistic")
# name -> (function, the one dtype and the part a check section covers). Checks are split by dtype and
# part so that their JIT compiles (Triton specialises integer arguments, so every shape family compiles
# its own variants: the slow part on a fresh machine) run on many CPU cores at once.
SECTIONS = {"machine": (section_machine, None, None),
            **{f"check:{op}:{dt}:{part}": (CHECKS[op], DTYPES[dt], part)
               for op in OPS for dt in DTYPES for part in PARTS},
            "check:sampling": (check_sampling, None, None),
            **{f"time:{op}": (TIMINGS[op], None, None) for op in OPS},
            "sampling": (section_sampling, None, None)}  # fmt: skip
PHASES = [  # (sections run side by side, end of the phase as a fraction of --budget-s)
    (["machine"], 0.07),
    ([s for s in SECTIONS if s.startswith("check:")], 0.45),
    (["time:dct"], 0.50),
    (["time:subimages"], 0.55),
    (["time:vq"], 0.61),
    (["time:attention"], 0.71),
    (["time:kvcache"], 0.75),
    (["sampling"], 1.0),
]


def child_main(args) -> int:
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit module is imported
    _ensure_packages()
    state = Path(args.state_dir)
    writer = Writer(state / f"{args.child.replace(':', '_')}.json", args.child)
    floors = fl.Floors.nominal()
    machine = state / "machine.json"
    if args.child != "machine" and machine.exists():
        saved = json.loads(machine.read_text(encoding="utf-8")).get("floors")
        if saved:
            floors = fl.Floors(saved["copy_gbps"], saved["tflops"], saved["measured"])
    device = "cpu" if args.dry_run else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references and oracles stay fp32
    torch.backends.cudnn.allow_tf32 = False
    if args.dry_run:
        torch.set_num_threads(1)  # on a shared CPU, OpenMP threads spin-waiting behind other jobs cost 10x
    fn, only_dtype, part = SECTIONS[args.child]
    ctx = Ctx(device, args.dry_run, args.interpret, args.deadline, writer, floors, sizes(args.dry_run), only_dtype,
              part)  # fmt: skip
    writer.save()
    try:
        fn(ctx)
    except Exception as exc:
        traceback.print_exc()
        writer.row(f"{args.child}: section error", ["result", "note"], {"result": "FAIL", "note": short_error(exc)})
    return 0


def _ensure_packages() -> None:
    """Import spectralar_kernels as installed (pip install -e .); from the source tree when it is not."""
    if importlib.util.find_spec("spectralar_kernels") is not None:
        return
    spec = importlib.util.spec_from_file_location("spectralar_kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["spectralar_kernels"] = module
    spec.loader.exec_module(module)


# ---- parent side: phases, report --------------------------------------------------------------------


def _finish(state: Path, section: str, rc: int | None, problems: list) -> None:
    if rc == 0:
        return
    tail = (state / f"{section.replace(':', '_')}.stderr").read_text(encoding="utf-8", errors="replace")
    tail = " ".join(tail.strip().splitlines()[-3:])[-400:]
    why = "killed at its time budget" if rc is None else f"exited with status {rc}"
    problems.append((section, f"{why}; the rows it wrote are kept. stderr: {tail}"))
    print(f"[{section}] {why}", flush=True)


def run_phases(args, state: Path) -> tuple[list, list]:
    """Run every phase's children, at most --jobs at once, heaviest first. Returns (problems, skipped):
    children that crashed or were killed, and sections never started because the budget was spent."""
    t0 = time.time()
    problems, skipped = [], []
    flags = (["--dry-run"] if args.dry_run else []) + (["--interpret"] if args.interpret else [])
    env = dict(os.environ)
    if not args.dry_run:
        env.pop("TRITON_INTERPRET", None)
    weight = {"attention": 0, "subimages": 1, "dct": 2, "kvcache": 3, "vq": 4}  # compile + work, largest first
    for sections, end in PHASES:
        pending = sorted((s for s in sections if s in args.sections), key=lambda s: weight.get(s.split(":")[1], 9)
                         if s.startswith("check:") else 0)  # fmt: skip
        if not pending:
            continue
        names = ", ".join(pending) if len(pending) < 4 else f"{len(pending)} sections"
        deadline = t0 + args.budget_s * end
        running = []
        while pending or running:
            while pending and len(running) < args.jobs:
                s = pending.pop(0)
                if time.time() > deadline:
                    skipped.append(s)
                    continue
                err = open(state / f"{s.replace(':', '_')}.stderr", "w", encoding="utf-8")
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", s, "--state-dir", str(state),
                       "--deadline", str(deadline), *flags]  # fmt: skip
                running.append((s, subprocess.Popen(cmd, stderr=err, env=env), err))
            time.sleep(0.1)
            for item in list(running):
                s, proc, err = item
                rc = proc.poll()
                if rc is None and time.time() > deadline + GRACE_S:
                    proc.kill()
                    proc.wait()
                elif rc is None:
                    continue
                err.close()
                running.remove(item)
                _finish(state, s, rc, problems)
        print(f"-- phase {names} done at {time.time() - t0:.0f} s", flush=True)
    return problems, skipped


def _cell(v: str) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(state: Path, problems, skipped, args, wall_s: float) -> tuple[str, dict]:
    """The report: one table per title (a check split across dtype sections merges back into one)."""
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    order = ["machine"]
    for op in OPS:
        order += [f"check:{op}:{dt}:{part}" for part in PARTS for dt in DTYPES] + [f"time:{op}"]
    order += ["check:sampling", "sampling"]
    tables: dict[str, dict] = {}
    for s in order:
        if s not in args.sections:
            continue
        path = state / f"{s.replace(':', '_')}.json"
        if not path.exists():
            if not any(name == s for name, _ in problems) and s not in skipped:
                problems.append((s, "wrote no results"))
            continue
        for t in json.loads(path.read_text(encoding="utf-8"))["tables"]:
            merged = tables.setdefault(t["title"], {"columns": t["columns"], "rows": [], "notes": []})
            merged["rows"] += t["rows"]
            merged["notes"] += [n for n in t["notes"] if n not in merged["notes"]]
    body = []
    for title, t in tables.items():
        body += [f"## {title}", ""]
        body += [f"- {n}" for n in t["notes"]] + ([""] if t["notes"] else [])
        body += ["| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
        for r in t["rows"]:
            body.append("| " + " | ".join(_cell(c) for c in r) + " |")
            if "result" in t["columns"]:
                res = r[t["columns"].index("result")]
                counts[res] = counts.get(res, 0) + 1
        body.append("")
    if problems or skipped:
        body += ["## Harness problems", "", "| section | result | problem |", "|---|---|---|"]
        body += [f"| {s} | FAIL | {_cell(p)} |" for s, p in problems]
        body += [f"| {s} | SKIP | not started: the time budget was spent |" for s in skipped]
        body.append("")
        counts["FAIL"] += len(problems)
        counts["SKIP"] += len(skipped)
    mode = "CUDA"
    if args.dry_run:
        backend = "Triton interpreter" if args.interpret else "reference backend"
        mode = f"DRY RUN on CPU (tiny shapes, {backend}, perf_counter timings: not GPU numbers)"
    head = [
        "# spectralar GPU report", "",
        f"- command: `python bench/gpu_report.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; mode: {mode}; "
        f"wall time {wall_s:.0f} s (budget {args.budget_s:.0f} s)",
        f"- results: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP (time budget)", "",
        "How to read: correctness compares the Triton path (forced with SPECTRALAR_KERNELS=triton) with the "
        "float64 reference; `ref err` is the same-precision PyTorch reference's own error. Rule (tests/tolerances.py): "
        "fp32 |out - oracle| <= atol + rtol |oracle| elementwise, atol = 1e-5 max(1, max|oracle|) (VQ l2: "
        "1e-5 max(1, max|z|^2 + max|c|^2)); fp16/bf16 max err <= 2 x ref err + 1e-3 max|oracle|. `launcher out=NaN` "
        "reruns the launcher into a NaN-filled output. Timings: triton.testing.do_bench mean; GB/s and TFLOP/s by the "
        "formulas in bench/floors.py; `% of floor` = roofline time max(bytes / copy bandwidth, flops / GEMM rate of "
        "the dtype, measured above; fp32 = TF32 off) / measured time; `bound` names the larger term; `x ref` = "
        "speed-up over the same-precision reference; `peak MB` = peak allocation above the inputs.", "",
    ]  # fmt: skip
    return "\n".join(head + body), counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="markdown file to write (default docs/gpu_report.md on CUDA; nothing on a dry run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every code path on CPU with tiny shapes and perf_counter timings (no GPU needed)")
    parser.add_argument("--interpret", action="store_true",
                        help="with --dry-run: run the Triton kernels under TRITON_INTERPRET=1 instead of the reference")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="hard wall-clock cap in seconds (default 330 on CUDA, 3600 on a dry run); sections past "
                             "their share write SKIP rows")  # fmt: skip
    parser.add_argument("--sections", nargs="+", default=None,
                        help="run only these sections, by name or prefix (e.g. machine check:vq:fp32 time:vq); "
                             f"default all: {' '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="most sections running at once in the parallel check phase (default: CPU count)")
    parser.add_argument("--child", default=None, help="internal: run one section in this process")
    parser.add_argument("--state-dir", default=None, help="internal: where children write their JSON")
    parser.add_argument("--deadline", type=float, default=0.0, help="internal: epoch seconds a child must finish by")
    args = parser.parse_args(argv)
    if args.interpret and not args.dry_run:
        parser.error("--interpret needs --dry-run")
    if args.child:
        return child_main(args)
    patterns = args.sections or list(SECTIONS)
    args.sections = [s for s in SECTIONS if any(s == p or s.startswith(p + ":") for p in patterns)]
    unknown = [p for p in patterns if not any(s == p or s.startswith(p + ":") for s in SECTIONS)]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {' '.join(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_report.py needs a CUDA GPU (torch.cuda.is_available() is False). "
              "Use --dry-run to exercise every code path on CPU.", file=sys.stderr)  # fmt: skip
        return 2
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.dry_run else 330.0
    out = args.out if args.out is not None else (None if args.dry_run else str(ROOT / "docs" / "gpu_report.md"))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu_report_") as tmp:
        state = Path(tmp)
        problems, skipped = run_phases(args, state)
        text, counts = markdown(state, problems, skipped, args, time.time() - t0)
    print("\n" + text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {time.time() - t0:.0f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
