"""Timing: every implementation of a case side by side, measured the way users run them.

Two numbers per provider and case:
  ms/call   wall time per call of a loop of calls synchronised once at the end (what a training or sampling
            loop pays: host launch overhead and host syncs included). The dispatch decisions use this one.
  kernel ms device time of one call between CUDA events, after an L2 flush (median). The host launches while
            the flush runs, so launch overhead disappears from this number by design; it is the kernel's own
            time, what GB/s, TFLOP/s and "% of floor" are computed from.
triton.testing.do_bench alone (the report's earlier method) gives only the second, which hides host cost.

Roles: `ref` is the op's PyTorch reference (the "x ref" baseline), `baseline` a plain-PyTorch path a user would
write instead (matmul forms, torch.compile, other SDPA backends, FlexAttention, ...) or an installed peer
(flash-attn, torch-dct), `kernel` one of our Triton implementations. A kernel's "x fastest" is the fastest
ref-or-baseline time of the case over its own: the bar `auto` holds it to (dispatch.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from .. import floors as fl
from .common import Ctx, KernelProbe, dname, forced, implementations, run_case, short_error

TIME_COLS = ["case", "dtype", "provider", "role", "ms/call", "kernel ms", "GB/s", "TFLOP/s", "bound", "% of floor",
             "x ref", "x fastest", "peak MB", "result", "note"]  # fmt: skip
ROLES = ("ref", "baseline", "kernel")
WARM_TITLE, WARM_COLS = "compile warm-up of the baselines", ["case", "dtype", "provider", "result", "note"]


@dataclasses.dataclass
class Provider:
    """One timed implementation. `role`: "ref", "baseline" or "kernel" (module docstring); `impl`: a shipped id
    (kernels only); `mode`: SPECTRALAR_KERNELS while it runs; `wrap`: how the call is run when timed (e.g.
    `ctx.dev.graph`: captured as a CUDA graph, replayed), built under `mode`."""

    name: str
    fn: object
    role: str = "baseline"
    impl: str | None = None
    mode: str = "ref"
    expect: str | None = None
    wrap: object = None


def kernel_providers(ctx: Ctx, key, fn, wrap=None) -> list[Provider]:
    """One provider per shipped implementation of `key` = (op, variant), oldest first, all calling `fn` (the
    public function) under the SPECTRALAR_KERNELS that selects it."""
    out = []
    for impl in implementations()[key]:
        name = impl if ctx.kernels_run else f"{impl} (ref backend)"
        out.append(Provider(name, fn, "kernel", impl, ctx.mode(key, impl), ctx.expected(key, impl), wrap))
    return out


def compiled(ctx: Ctx, fn):
    """torch.compile(fn) as a user would (static shapes); eager on a dry run without --compile-baselines
    (compiling takes minutes on a small CPU). Returns (callable, name suffix)."""
    if ctx.compile_baselines:
        return torch.compile(fn, dynamic=False), ""
    return fn, " (dry run: eager stand-in)"


def measure(ctx: Ctx, fn) -> tuple[float, float]:
    """(wall seconds per call in a loop synchronised once, kernel seconds per call between events after an L2
    flush). One untimed call first (compiles, autotuning, the allocator)."""
    dev = ctx.dev
    fn()
    dev.sync()
    t0 = time.perf_counter()
    fn()
    dev.sync()
    once = max(time.perf_counter() - t0, 1e-7)
    n = max(3, min(ctx.max_reps, int(ctx.rep_s / once)))
    dev.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dev.sync()
    wall = (time.perf_counter() - t0) / n
    k = max(3, min(n, 50))
    starts, ends = [dev.event() for _ in range(k)], [dev.event() for _ in range(k)]
    for i in range(k):
        dev.flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    dev.sync()
    kernel = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[k // 2] / 1e3
    return wall, kernel


def peak_mb(ctx: Ctx, fn) -> str:
    """Peak allocation of one call above what was allocated before it, MiB ("-" on a dry run)."""
    dev = ctx.dev
    dev.sync()
    dev.reset_peak()
    base = dev.allocated()
    fn()
    dev.sync()
    return "-" if dev.name == "cpu" else f"{(dev.peak() - base) / 2**20:.0f}"


def case_bucket(probe_fn, mode: str) -> dict | None:
    """The shape bucket `choose_kernel` sees for this case (one untimed call of the public function under the
    probe, with backend `mode`): the key the timings are filed under, as `auto` will look them up."""
    if probe_fn is None:
        return None
    try:
        with forced(mode), KernelProbe() as probe:
            probe_fn()
    except Exception:  # the kernel rows report the failure
        return None
    buckets = {b for _, b in probe.seen if b is not None}
    return dict(next(iter(buckets))) if len(buckets) == 1 else None


def time_providers(ctx: Ctx, title: str, key, case: str, dtype, providers, cost: fl.Cost, probe_fn=None) -> None:
    """Time every provider side by side: the reference, then the plain-PyTorch baselines, then our kernels (so a
    kernel row can show its ratio to the fastest of them). A kernel failing, or running another implementation
    than asked, is FAIL; a baseline failing (e.g. a backend that rejects the case) is n/a.
    `probe_fn`: the public call whose sizes give the case's bucket (default: the first kernel provider's)."""
    if not ctx.floors.measured:
        ctx.writer.note(title, TIME_COLS, "% of floor uses nominal H200 datasheet rates: the machine section did "
                                          "not measure them")  # fmt: skip
    providers = sorted(providers, key=lambda p: ROLES.index(p.role))
    if ctx.warm:
        return warm_up(ctx, case, dtype, providers)
    first = next((p for p in providers if p.role == "kernel"), None)
    probe_fn = probe_fn or (first.fn if first else None)
    bucket = case_bucket(probe_fn, first.mode if first else "ref")
    plain: dict[str, float] = {}

    def one(p: Provider):
        note = ""
        try:
            with forced(p.mode):
                if p.role == "kernel":  # an untimed first call: which implementation actually runs
                    with KernelProbe() as probe:
                        p.fn()
                    ok, note = probe.verdict(p.expect)
                    if not ok:
                        return {"result": "FAIL", "note": note}
                fn = p.wrap(p.fn) if p.wrap is not None else p.fn
                wall, kern = measure(ctx, fn)
                peak = peak_mb(ctx, fn)
        except Exception as exc:
            if p.role != "baseline":
                raise
            return {"result": "n/a", "note": short_error(exc)}
        ctx.writer.timing({"op": key[0], "variant": key[1], "dtype": dname(dtype), "case": case, "bucket": bucket,
                           "provider": p.name, "impl": p.impl, "role": p.role, "s": wall, "kernel_s": kern})
        a = fl.achieved(cost, kern, ctx.floors, dtype)
        fastest = min(plain, key=plain.get) if plain else None
        if p.role != "kernel":
            plain[p.name] = wall
        ref_s = next((plain[q.name] for q in providers if q.role == "ref" and q.name in plain), None)
        return {"ms/call": f"{wall * 1e3:.4g}", "kernel ms": f"{kern * 1e3:.4g}", "GB/s": f"{a['gbps']:.4g}",
                "TFLOP/s": f"{a['tflops']:.3g}", "bound": a["bound"],
                "% of floor": f"{100 * a['frac']:.3g}" if a["frac"] is not None else "-",
                "x ref": f"{ref_s / wall:.2f}" if ref_s and p.role != "ref" else "-",
                "x fastest": f"{plain[fastest] / wall:.2f} ({fastest})" if fastest and p.role == "kernel" else "-",
                "peak MB": peak, "result": "ok", "note": "" if note.startswith("ran ") else note}  # fmt: skip

    for p in providers:
        keys = {"case": case, "dtype": dname(dtype), "provider": p.name, "role": p.role}
        run_case(ctx, title, TIME_COLS, keys, one, p)
    with contextlib.suppress(Exception):
        ctx.dev.empty_cache()


def warm_up(ctx: Ctx, case: str, dtype, providers) -> None:
    """One call of every reference and baseline (the checks compile the kernels): fills the Inductor and Triton
    caches in the parallel phase, so the timing phase loads the compiled baselines instead of compiling them."""

    def one(p: Provider):
        try:
            with forced(p.mode):
                (p.wrap(p.fn) if p.wrap is not None else p.fn)()
                ctx.sync()
        except Exception as exc:
            return {"result": "n/a", "note": short_error(exc)}
        return {"result": "ok"}

    for p in providers:
        if p.role != "kernel":
            run_case(ctx, WARM_TITLE, WARM_COLS, {"case": case, "dtype": dname(dtype), "provider": p.name}, one, p)
