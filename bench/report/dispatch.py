"""The measured decisions a run implies (spectralar_kernels/measured.json, which `auto` reads), from its records.

Rule, per (op, variant, dtype, shape bucket) on the run's device class: the bar of a case is the fastest
plain-PyTorch time timed on it (the reference or any baseline: timing.py); an implementation is a candidate
only if
  - the same run checked it on that bucket and dtype and every such check passed (a check row that failed, or
    no check at all, rules it out however fast it is), and
  - it was timed on every case of the bucket (missing from one, it is not a candidate: nobody timed it there);
its speed-up is bar / its time in the worst case of the bucket (attention: forward and forward + backward;
decoding: eager and CUDA graph). The decision names the candidate with the best worst speed-up, and `auto`
runs it iff that is >= 1: a kernel that beats the op's reference but not the strongest plain path, or wins one
case of its bucket and loses another, stays off. Times are wall time per call in a loop (timing.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from spectralar_kernels._dispatch import source_digest


@dataclasses.dataclass
class Decision:
    op: str
    variant: str
    dtype: str
    bucket: dict | None  # the shape bucket, as choose_kernel sees it
    device: tuple[str, str]  # (compute capability, name) the run measured on
    kernel: str | None  # best candidate, None when none qualifies
    speedup: float | None  # its worst speed-up over the fastest plain-PyTorch path
    baseline: str  # the fastest plain-PyTorch path on that worst case
    speedup_vs_ref: float | None  # reference time / kernel time on the same case
    case: str  # the worst case, and how many cases the bucket has
    checked: str  # what the run checked of the chosen kernel
    candidates: dict  # implementation -> text: worst speed-up, or why it is not a candidate
    fastest: dict  # case -> name of the fastest plain-PyTorch path there

    @property
    def auto(self) -> str | None:
        from spectralar_kernels._dispatch import MIN_SPEEDUP  # the rule `auto` applies to the table

        ok = self.kernel is not None and self.speedup is not None and self.speedup >= MIN_SPEEDUP
        return self.kernel if ok and self.bucket is not None else None


def _bkey(b) -> tuple:
    return tuple(b.items()) if isinstance(b, dict) else ()


def derive(timings: list[dict], checks: list[dict], implementations: dict, device: tuple[str, str]) -> list[Decision]:
    """Decisions for every (op, variant, dtype, bucket) the timings cover (module docstring for the rule).

    timings: {"op", "variant", "dtype", "case", "bucket", "provider", "impl", "role", "s"}, one per timing.
    checks:  {"op", "variant", "dtype", "impl", "bucket", "result"}, one per checked row.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in timings:
        groups.setdefault((r["op"], r["variant"], r["dtype"], _bkey(r.get("bucket"))), []).append(r)
    verdicts: dict[tuple, list[str]] = {}
    for c in checks:
        key = (c["op"], c["variant"], c["dtype"], _bkey(c.get("bucket")), c.get("impl"))
        verdicts.setdefault(key, []).append(str(c.get("result")))
    out = []
    for (op, variant, dtype, bkey), rows in sorted(groups.items(), key=lambda kv: _order(kv[0], implementations)):
        bar: dict[str, tuple[float, str]] = {}  # case -> (fastest plain time, its name)
        ref: dict[str, float] = {}
        for r in rows:
            if r["role"] in ("ref", "baseline") and (r["case"] not in bar or r["s"] < bar[r["case"]][0]):
                bar[r["case"]] = (r["s"], r["provider"])
            if r["role"] == "ref":
                ref[r["case"]] = r["s"]
        candidates, scored = {}, []
        for i, impl in enumerate(implementations.get((op, variant), ())):
            times = {r["case"]: r["s"] for r in rows if r["role"] == "kernel" and r["impl"] == impl}
            results = verdicts.get((op, variant, dtype, bkey, impl), [])
            ratios = {c: bar[c][0] / times[c] for c in bar if c in times}
            worst = min(ratios, key=ratios.get) if ratios else None
            fast = f" (timed {ratios[worst]:.2f}x)" if worst else ""
            if not bar or len(ratios) < len(bar):
                candidates[impl] = "not timed on every case"
            elif not results:
                candidates[impl] = f"not checked on this bucket{fast}"
            elif any(v != "PASS" for v in results):
                candidates[impl] = f"failed its check ({results.count('PASS')} of {len(results)} passed){fast}"
            else:
                candidates[impl] = f"{_fmt(ratios[worst])}x"
                scored.append((ratios[worst], i, impl, worst, len(results)))
        bucket = dict(bkey) if bkey else None
        fastest = {c: name for c, (_, name) in bar.items()}
        if scored:  # best worst speed-up; on a tie, the newer implementation
            speedup, _, kernel, worst, n_checks = max(scored)
            times = {r["case"]: r["s"] for r in rows if r["role"] == "kernel" and r["impl"] == kernel}
            vs_ref = ref[worst] / times[worst] if worst in ref else None
            case = worst if len(bar) == 1 else f"{worst} (worst of {len(bar)})"
            out.append(Decision(op, variant, dtype, bucket, device, kernel, speedup, bar[worst][1], vs_ref, case,
                                f"PASS: {n_checks} check(s) of {kernel} on this bucket", candidates, fastest))
        else:
            out.append(Decision(op, variant, dtype, bucket, device, None, None, "-", None,
                                f"{len(bar)} case(s); no candidate", "-", candidates, fastest))  # fmt: skip
    return out


def _fmt(speedup: float) -> str:
    """Two decimals, rounded down (0.996 must not print as 1.00: `auto` reads >= 1 as a win); small ones as 2
    significant digits."""
    if speedup < 0.1:
        return f"{speedup:.2g}"
    return f"{math.floor(speedup * 100) / 100:.2f}"


def _order(key, implementations) -> tuple:
    names = list(implementations)
    dtypes = ("fp32", "bf16", "fp16")
    return (names.index(key[:2]) if key[:2] in names else len(names), dtypes.index(key[2]) if key[2] in dtypes else 9,
            str(key))  # fmt: skip


_NOT_MODEL = re.compile(r"^(NVIDIA|GEFORCE|TESLA|QUADRO|\d+GB|HBM\d*E?|GDDR\d+X?|PCIE|SXM\d*|NVL|MIG.*)$", re.I)


def device_tag(name: str) -> str:
    """The model of a GPU name, for labels: "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-SXM4-80GB" -> "A100",
    "NVIDIA GeForce RTX 4090" -> "RTX_4090" (vendor, memory size and type, form factor dropped)."""
    words = [w for w in re.split(r"[\s\-_/]+", name) if w and not _NOT_MODEL.match(w)]
    tag = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(words[:2] if words[:1] == ["RTX"] else words[:1])).upper()
    return tag.strip("_") or "GPU"


def report_id(machine: dict, date: str, dry: bool) -> tuple[str, str]:
    """(short id, description) of the run the entries cite, e.g. ("H100_2026_12_02", "docs/gpu_report.md, one
    NVIDIA H100 80GB HBM3 (torch 2.13, triton 3.7)")."""
    gpu = machine.get("gpu", "unknown GPU")
    tag = "DRY_RUN" if dry else device_tag(gpu)
    short = lambda v: ".".join(str(v).split("+")[0].split(".")[:2])  # noqa: E731  2.13.0+cu130 -> 2.13
    value = (f"docs/gpu_report.md, one {gpu} (torch {short(machine.get('torch', '?'))}, "
             f"triton {short(machine.get('triton', '?'))})")  # fmt: skip
    return f"{tag}_{date.replace('-', '_')}", value


def entries(decisions: list[Decision], report: str, date: str) -> list[dict]:
    """The measured.json entries of the decisions `auto` will run (schema: spectralar_kernels/_dispatch.py)."""
    out = []
    for d in decisions:
        if d.auto is None:
            continue
        out.append({"op": d.op, "variant": d.variant, "dtype": d.dtype, "bucket": d.bucket,
                    "device": {"capability": d.device[0], "name": d.device[1]}, "kernel": d.kernel,
                    "speedup": float(_fmt(d.speedup)), "baseline": d.baseline,
                    "speedup_vs_ref": float(_fmt(d.speedup_vs_ref)) if d.speedup_vs_ref else None,
                    "case": d.case, "checked": d.checked, "report": report, "date": date,
                    "source": source_digest(d.kernel)})  # fmt: skip
    return out


def merge(path: Path, new: list[dict], decisions: list[Decision], about: str) -> int:
    """Write `new` into the table at `path`, replacing the entries of the (op, variant, dtype, bucket, device)
    groups this run decided (a re-measured loss removes an old win) and keeping every other entry (other
    devices, sections this run did not time). An unreadable table is replaced. Returns the entry count."""
    decided = {(d.op, d.variant, d.dtype, _bkey(d.bucket), d.device) for d in decisions}
    kept = []
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("entries", [])
    except (OSError, ValueError, AttributeError):
        old = []
    for e in old:
        try:
            key = (e["op"], e["variant"], e["dtype"], _bkey(e["bucket"]),
                   (e["device"]["capability"], e["device"]["name"]))  # fmt: skip
        except (KeyError, TypeError):
            continue
        if key not in decided:
            kept.append(e)
    table = {"schema": 1, "about": about, "entries": kept + new}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(table["entries"])


def markdown(decisions: list[Decision], auto_now=None) -> list[str]:
    """Table rows; `auto_now(decision)` names what `auto` runs for it with the table in the tree."""
    from spectralar_kernels._dispatch import bucket_label

    lines = ["| op | variant | dtype | shape bucket | auto would run | auto runs now | best candidate | x fastest "
             "plain PyTorch (worst case) | fastest plain PyTorch there | x ref | worst case | checked | every "
             "implementation |", "|" + "---|" * 13]  # fmt: skip
    for d in decisions:
        cands = ", ".join(f"{k}: {v}" for k, v in d.candidates.items()) or "-"
        now = (auto_now(d) or "reference") if auto_now else "-"
        speed = _fmt(d.speedup) if d.speedup is not None else "-"
        ref = _fmt(d.speedup_vs_ref) if d.speedup_vs_ref else "-"
        lines.append(f"| {d.op} | {d.variant} | {d.dtype} | {bucket_label(d.bucket)} | {d.auto or 'reference'} | "
                     f"{now} | {d.kernel or '-'} | {speed} | {d.baseline} | {ref} | {d.case} | {d.checked} | "
                     f"{cands} |")  # fmt: skip
    return lines


def strongest(decisions: list[Decision]) -> list[str]:
    """Per op: the fastest plain-PyTorch path of every case timed (the bar the kernels had to beat)."""
    seen: dict[tuple, set] = {}
    for d in decisions:
        for case, name in d.fastest.items():
            seen.setdefault((d.op, d.variant), set()).add(f"{name} ({d.dtype}, {case})")
    return [f"- {op} {variant}: {'; '.join(sorted(names))}" for (op, variant), names in seen.items()]
