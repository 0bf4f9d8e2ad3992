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
    "1e-3 max|oracle|. `launcher out=NaN` reruns the launcher into a NaN-filled output. Timings: "
    "triton.testing.do_bench mean, every implementation side by side in one process; GB/s and TFLOP/s by the formulas "
    "in bench/floors.py; `% of floor` = roofline time max(bytes / copy bandwidth, flops / GEMM rate of the dtype, "
    "measured above; fp32 = TF32 off) / measured time; `bound` names the larger term; `x ref` = speed-up over the "
    "same-precision reference; `peak MB` = peak allocation above the inputs."
)


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _load(state: Path, section: str) -> dict | None:
    path = state / f"{section.replace(':', '_')}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def dispatch_section(state: Path, sections: list[str], dry: bool, date: str) -> list[str]:
    """The decisions the timings imply, as a table and as the MEASURED literal for spectralar_kernels/_dispatch.py."""
    from spectralar_kernels import _dispatch

    records, machine = [], {}
    for s in sections:
        data = _load(state, s)
        if data is None:
            continue
        records += data.get("timings", [])
        machine = data.get("machine") or machine
    if not machine:  # the machine section did not run: this process's versions
        import torch
        import triton

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown GPU"
        machine = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__}
    decisions = dispatch.derive(records, _dispatch.IMPLEMENTATIONS)
    dtype_of = {v: k for k, v in _dispatch.DTYPE_NAME.items()}

    def auto_now(op, variant, dt):
        return _dispatch.measured_choice(op, variant, dtype_of[dt]) if dt in dtype_of else None

    body = ["## Dispatch table this run implies", ""]
    if dry:
        body += ["- DRY RUN: CPU perf_counter timings of tiny shapes. These are not measurements: do not paste.", ""]
    if not decisions:
        return body + ["No timings were recorded (no time:* section ran), so there is nothing to decide.", ""]
    body += ["Per (op, variant, dtype): each shipped implementation's smallest speed-up over the same-precision "
             "reference across the cases timed (attention: forward and forward+backward of every shape); the best "
             "of those is the entry, and `auto` runs it iff it is >= 1. An implementation missing from any case is "
             "not a candidate.", ""]  # fmt: skip
    body += dispatch.markdown(decisions, auto_now) + [""]
    constant = dispatch.report_constant(machine, date, dry)
    body += ["Entries for `MEASURED` in `_dispatch` (every (op, variant, dtype) timed; `auto` ignores the "
             "ones below 1.00):", "", "```python"]  # fmt: skip
    if dry:
        body.append("# DRY RUN: not measurements, do not paste")
    body += dispatch.python_literal(decisions, constant) + ["```", ""]
    return body


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
    timed = [s for s in order if s in args.sections and s.startswith("time:")]
    body += dispatch_section(state, ["machine", *timed], args.dry_run, f"{now:%Y-%m-%d}")
    mode = "CUDA"
    if args.dry_run:
        backend = "Triton interpreter" if args.interpret else "reference backend"
        mode = f"DRY RUN on CPU (tiny shapes, {backend}, perf_counter timings: not GPU numbers)"
    head = [
        "# spectralar GPU report", "",
        f"- command: `python -m bench.gpu_report {' '.join(sys.argv[1:])}`",
        f"- date: {now:%Y-%m-%d %H:%M UTC}; mode: {mode}; wall time {wall_s:.0f} s (budget {args.budget_s:.0f} s)",
        f"- results: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP (time budget)", "",
        HOW_TO_READ, "",
    ]  # fmt: skip
    return "\n".join(head + body), counts
