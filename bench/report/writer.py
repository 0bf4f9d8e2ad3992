"""The markdown report: the sections' tables merged by title, harness problems, and the dispatch table."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from . import dispatch

HOW_TO_READ = (
    "How to read: correctness compares each Triton implementation (forced with SPECTRALAR_KERNELS=triton for the "
    "newest, triton:ID for an older one that still ships) with the float64 reference; `ref err` is the same-precision "
    "PyTorch reference's own error; the note names the implementation `choose_kernel` returned (a different one than "
    "asked is a FAIL). Rule (spectralar_kernels.testing): fp32 |out - oracle| <= atol + rtol |oracle| elementwise, "
    "atol = 1e-5 max(1, max|oracle|) (VQ l2: 1e-5 max(1, max|z|^2 + max|c|^2)); fp16/bf16 max err <= 2 x ref err + "
    "1e-3 max|oracle|. `launcher out=NaN` reruns the launcher into a NaN-filled output. Timings (bench/report/"
    "timing.py), every implementation side by side in one process: `ms/call` = wall time per call of a loop of calls "
    "synchronised once (host overhead included; the dispatch decisions use it), `kernel ms` = device time of one call "
    "between CUDA events after an L2 flush (median); role `ref` = the op's PyTorch reference, `baseline` = a "
    "plain-PyTorch path a user would write instead or an installed peer, `kernel` = ours; `x ref` = reference ms/call "
    "/ this one, `x fastest` = the fastest ref-or-baseline ms/call of the case / this kernel's (named). GB/s and "
    "TFLOP/s (from kernel ms) by the formulas in bench/floors.py; `% of floor` = roofline time max(bytes / copy "
    "bandwidth, flops / GEMM rate of the dtype, measured above; fp32 = TF32 off) / kernel time; `bound` names the "
    "larger term; `peak MB` = peak allocation above the inputs."
)


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _load(state: Path, section: str) -> dict | None:
    path = state / f"{section.replace(':', '_')}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _device(machine: dict) -> tuple[str, str]:
    return str(machine.get("capability", "?")), str(machine.get("gpu", "unknown GPU"))


def dispatch_section(state: Path, sections: list[str], args, date: str) -> list[str]:
    """The decisions the run implies (checks and timings of every section), as tables; writes them as
    measured.json entries into the work folder and, on CUDA, merges them into the table `auto` reads."""
    from spectralar_kernels import _dispatch

    timings, checks, machine = [], [], {}
    for s in sections:
        data = _load(state, s)
        if data is None:
            continue
        timings += data.get("timings", [])
        checks += data.get("checks", [])
        machine = data.get("machine") or machine
    if not machine:  # the machine section did not run: this process's view
        import torch
        import triton

        cuda = torch.cuda.is_available() and not args.dry_run
        cap = "{}.{}".format(*torch.cuda.get_device_capability(0)) if cuda else "cpu"
        gpu = torch.cuda.get_device_name(0) if cuda else "CPU dry run"
        machine = {"gpu": gpu, "capability": cap, "torch": torch.__version__, "triton": triton.__version__}
    device = _device(machine)
    decisions = dispatch.derive(timings, checks, _dispatch.IMPLEMENTATIONS, device)
    dtype_of = {v: k for k, v in _dispatch.DTYPE_NAME.items()}

    def auto_now(d):
        if d.dtype not in dtype_of or d.bucket is None:
            return None
        return _dispatch.measured_choice(d.op, d.variant, dtype_of[d.dtype], tuple(d.bucket.items()), d.device)

    body = ["## Dispatch decisions this run implies", ""]
    if args.dry_run:
        body += ["- DRY RUN: CPU timings of tiny shapes on a CPU device class, which no CUDA call matches. Not "
                 "measurements.", ""]  # fmt: skip
    if not decisions:
        return body + ["No timings were recorded (no time:* section ran), so there is nothing to decide.", ""]
    body += ["The strongest plain-PyTorch path of every case (the fastest reference or baseline, ms/call):", ""]
    body += dispatch.strongest(decisions) + [""]
    body += ["Per (op, variant, dtype, shape bucket) on this device class: every implementation's worst speed-up over "
             "the fastest plain-PyTorch path of each case of the bucket, if the same run checked it there and every "
             "check passed; the best of those is the decision, and `auto` runs it iff it is >= 1 "
             "(bench/report/dispatch.py).", ""]  # fmt: skip
    body += dispatch.markdown(decisions, auto_now) + [""]
    name, report = dispatch.report_id(machine, date, args.dry_run)
    new = dispatch.entries(decisions, report, date)
    about = "Measured decisions that SPECTRALAR_KERNELS=auto reads; written by python -m bench.gpu_report."
    own = Path(args.work_dir) / "measured.json"
    own.unlink(missing_ok=True)
    dispatch.merge(own, new, decisions, about)
    body.append(f"- {len(new)} entr{'y' if len(new) == 1 else 'ies'} ({name}) written to `{own}`.")
    if args.measured:
        try:
            total = dispatch.merge(Path(args.measured), new, decisions, about)
            body.append(f"- merged into `{args.measured}` ({total} entries; the groups this run decided replaced): "
                        "`auto` reads it when spectralar_kernels is imported.")  # fmt: skip
        except OSError as exc:  # e.g. a read-only install: the run's own copy above still has the entries
            body.append(f"- FAILED to merge into `{args.measured}` ({exc}); copy the entries from `{own}`.")
    return body + [""]


def markdown(state: Path, order: list[str], problems, skipped, args, wall_s: float) -> tuple[str, dict]:
    """The report: one table per title (a check split across dtype sections merges back into one)."""
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    tables: dict[str, dict] = {}
    for s in order:
        if s not in args.sections:
            continue
        data = _load(state, s)
        if data is None:
            if not any(name == s for name, _ in problems) and s not in skipped:
                problems.append((s, "wrote no results"))
            continue
        for t in data["tables"]:
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
        why = "interrupted (Ctrl-C)" if getattr(args, "interrupted", False) else "the time budget was spent"
        body += [f"| {s} | SKIP | not started: {why} |" for s in skipped]
        body.append("")
        counts["FAIL"] += len(problems)
        counts["SKIP"] += len(skipped)
    now = datetime.datetime.now(datetime.timezone.utc)
    body += dispatch_section(state, [s for s in order if s in args.sections], args, f"{now:%Y-%m-%d}")
    mode = "CUDA"
    if args.dry_run:
        backend = "Triton interpreter" if args.interpret else "reference backend"
        mode = f"DRY RUN on CPU (tiny shapes, {backend}, perf_counter timings: not GPU numbers)"
    head = [
        "# spectralar GPU report", "",
        f"- command: `python -m bench.gpu_report {' '.join(sys.argv[1:])}`",
        f"- date: {now:%Y-%m-%d %H:%M UTC}; mode: {mode}; wall time {wall_s:.0f} s (budget {args.budget_s:.0f} s)",
        f"- results: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP (time budget)",
        *([f"- resumed: {len(args.kept)} section(s) kept from the previous run in {args.work_dir}: "
           f"{', '.join(args.kept)}"] if getattr(args, "kept", None) else []), "",
        HOW_TO_READ, "",
    ]  # fmt: skip
    return "\n".join(head + body), counts
