"""The measured-decisions table a run implies (spectralar_kernels/_dispatch.py `MEASURED`), from its timing records.

Rule, per (op, variant, dtype): every shipped implementation timed on every case of that variant (attention:
forward and forward+backward, all shapes) gets its worst speed-up over the same-precision reference of the
same run (reference time / kernel time, the smallest over the cases); the entry names the implementation
with the best worst speed-up. `auto` runs it iff that speed-up is >= 1, so a kernel that wins one case and
loses another is not chosen. An implementation missing from any case (it failed, or the budget ran out) is
not a candidate: nobody timed it on that case.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re


@dataclasses.dataclass
class Decision:
    op: str
    variant: str
    dtype: str
    kernel: str | None  # best implementation timed on every case, None when none was
    speedup: float | None  # its worst speed-up over the reference
    case: str  # the case that speed-up comes from, and how many cases were timed
    candidates: dict  # implementation -> worst speed-up (None: not timed on every case)

    @property
    def auto(self) -> str | None:
        from spectralar_kernels._dispatch import MIN_SPEEDUP  # the rule `auto` applies to the table

        return self.kernel if self.speedup is not None and self.speedup >= MIN_SPEEDUP else None


def derive(records: list[dict], implementations: dict) -> list[Decision]:
    """Decisions for every (op, variant) of `implementations` and every dtype the records time.

    records: {"op", "variant", "dtype", "case", "impl" (id or None), "baseline" (bool), "s"}, one per timing.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["op"], r["variant"], r["dtype"]), []).append(r)
    out = []
    for (op, variant, dtype), rows in sorted(groups.items(), key=lambda kv: _order(kv[0], implementations)):
        shipped = implementations.get((op, variant), ())
        base = {r["case"]: r["s"] for r in rows if r["baseline"]}
        cases = list(base)
        candidates = {}
        for impl in shipped:
            times = {r["case"]: r["s"] for r in rows if r["impl"] == impl and not r["baseline"]}
            if not cases or any(c not in times for c in cases):
                candidates[impl] = None
                continue
            ratios = {c: base[c] / times[c] for c in cases}
            worst = min(ratios, key=ratios.get)
            candidates[impl] = (ratios[worst], worst)
        timed = [(v[0], i, impl, v[1]) for i, (impl, v) in enumerate(candidates.items()) if v is not None]
        if timed:  # best worst speed-up; on a tie, the newer implementation
            speedup, _, kernel, worst = max(timed)
            case = worst if len(cases) == 1 else f"{worst} (worst of {len(cases)})"
        else:
            speedup, kernel, case = None, None, f"{len(cases)} case(s); no implementation timed on all"
        cands = {k: (v[0] if v is not None else None) for k, v in candidates.items()}
        out.append(Decision(op, variant, dtype, kernel, speedup, case, cands))
    return out


def _fmt(speedup: float) -> str:
    """Two decimals, rounded down (0.996 must not print as 1.00: `auto` reads >= 1 as a win); small ones as 2
    significant digits."""
    if speedup < 0.1:
        return f"{speedup:.2g}"
    return f"{math.floor(speedup * 100) / 100:.2f}"


def _order(key, implementations) -> tuple:
    names = list(implementations)
    op_variant = (key[0], key[1])
    dtypes = ("fp32", "bf16", "fp16")
    return (names.index(op_variant) if op_variant in names else len(names),
            dtypes.index(key[2]) if key[2] in dtypes else 9, key)  # fmt: skip


def report_constant(machine: dict, date: str, dry: bool) -> tuple[str, str]:
    """(name, value) of the constant the MEASURED entries cite, e.g. H200_2026_12_02."""
    gpu = machine.get("gpu", "unknown GPU")
    tag = re.sub(r"[^A-Za-z0-9]+", "_", gpu.split()[-1] if gpu.split() else "GPU").upper().strip("_") or "GPU"
    if dry:
        tag = "DRY_RUN"
    name = f"{tag}_{date.replace('-', '_')}"
    short = lambda v: ".".join(str(v).split("+")[0].split(".")[:2])  # noqa: E731  2.13.0+cu130 -> 2.13
    value = (f"docs/gpu_report.md, one {gpu}, {date} (torch {short(machine.get('torch', '?'))}, "
             f"triton {short(machine.get('triton', '?'))})")  # fmt: skip
    return name, value


def markdown(decisions: list[Decision], auto_now=None) -> list[str]:
    """Table rows; `auto_now(op, variant, dtype)` names what `auto` runs with the MEASURED table in the tree."""
    lines = ["| op | variant | dtype | auto would run | auto runs now | best kernel | x ref (worst case) | "
             "worst case | every implementation: worst x ref |", "|" + "---|" * 9]  # fmt: skip
    for d in decisions:
        cands = ", ".join(f"{k} {_fmt(v)}" if v is not None else f"{k} not timed on every case"
                          for k, v in d.candidates.items())  # fmt: skip
        speed = _fmt(d.speedup) if d.speedup is not None else "-"
        now = (auto_now(d.op, d.variant, d.dtype) or "reference") if auto_now else "-"
        lines.append(f"| {d.op} | {d.variant} | {d.dtype} | {d.auto or 'reference'} | {now} | {d.kernel or '-'} | "
                     f"{speed} | {d.case} | {cands or '-'} |")  # fmt: skip
    return lines


def python_literal(decisions: list[Decision], constant: tuple[str, str]) -> list[str]:
    """Lines to paste into spectralar_kernels/_dispatch.py: the report constant and the MEASURED dict."""
    name, value = constant
    q = json.dumps  # double-quoted literals, as the house style writes them
    lines = [f"{name} = {q(value)}", "", "MEASURED: dict[tuple[str, str, str], Measured] = {"]
    for d in decisions:
        if d.kernel is None:
            continue
        key = f"    ({q(d.op)}, {q(d.variant)}, {q(d.dtype)}): "
        args = f"{q(d.kernel)}, {_fmt(d.speedup)}, {q(d.case)}, {name}"
        call = f"Measured({args}),"
        if len(key + call) <= 120:
            lines.append(key + call)
        else:
            lines += [key + "Measured(", f"        {args}", "    ),"]
    lines.append("}")
    return lines
