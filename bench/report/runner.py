"""Phases, child processes, the time budget, and the command line of `python -m bench.gpu_report`.

Every section runs in its own child process (`python -m bench.gpu_report --child NAME`), so a crash or a hung
kernel in one section becomes a FAIL row and the rest still runs; a child writes its rows to JSON as it goes, so
one killed at its deadline keeps what it measured. Phases run one after another; each ends at a fixed share of
--budget-s, and sections still running then write SKIP rows (killed GRACE_S later); sections not started are listed
as SKIP.

Work folder (--work-dir): sections/ holds each section's JSON (a section that finished within its budget is marked
complete, and --resume keeps it instead of running it again), cache/ the Triton, autotuning and Inductor caches
every child uses (a second run, or a resumed one, loads compiled kernels instead of compiling them), and
measured.json the decisions of the last run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from .. import floors as fl

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "bench.gpu_report"  # what the children run, with ROOT on their PYTHONPATH
GRACE_S = 15  # a child still running this long after its deadline is killed
DEFAULT_BUDGET_S = 480.0  # CUDA: with GRACE_S, start-up and the report, one command stays under 9 minutes
OPS = ("dct", "subimages", "vq", "attention", "kvcache")
OP_NAMES = {"dct": "dct2d", "subimages": "spectral_subimages", "vq": "vq_nearest", "attention": "attention",
            "kvcache": "attention_with_kvcache"}  # fmt: skip
MODELS = ("fmnist", "d16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARTS = ("awkward", "realistic")
WARM_OPS = ("dct", "subimages", "attention")  # ops whose timings torch.compile baselines (timing.compiled)
# heaviest first in the parallel check phase (compiles + work): the compile warm-ups, then by op
WEIGHT = {"warm": -2, "sampling": -1, "attention": 0, "subimages": 1, "dct": 2, "kvcache": 3, "vq": 4}


def ensure_packages() -> None:
    """Import spectralar_kernels as installed (pip install -e .); from the source tree when it is not."""
    if "spectralar_kernels" in sys.modules or importlib.util.find_spec("spectralar_kernels") is not None:
        return
    sys.path.insert(0, str(ROOT / "kernels" / "src"))


def older_ids(op: str) -> list[str]:
    """Implementation ids of `op` that still ship but are not the newest of their variant."""
    from spectralar_kernels._dispatch import IMPLEMENTATIONS

    ids = []
    for (name, _variant), shipped in IMPLEMENTATIONS.items():
        if name == OP_NAMES[op]:
            ids += [i for i in shipped[:-1] if i not in ids]
    return ids


def sections() -> dict:
    """name -> (module, function, Ctx fields). Check sections cover one op x implementation x dtype x part, so
    that their JIT compiles (Triton specialises integer arguments: every shape family compiles its own variants,
    the slow part on a fresh machine) run on many CPU cores at once."""
    table = {"machine": ("machine", "section_machine", {})}
    for op in OPS:
        for impl in (None, *older_ids(op)):
            for dt, dtype in DTYPES.items():
                for part in PARTS:
                    name = f"check:{op}{'@' + impl if impl else ''}:{dt}:{part}"
                    table[name] = (op, f"check_{op}", {"only_dtype": dtype, "part": part, "impl": impl})
    for model in MODELS:
        table[f"check:sampling:{model}"] = ("generators", "check_sampling", {"model": model})
    for op in WARM_OPS:  # the timing section's compiled baselines, compiled on the CPU cores alongside the checks
        table[f"warm:{op}"] = (op, f"time_{op}", {"warm": True})
    for op in OPS:
        table[f"time:{op}"] = (op, f"time_{op}", {})
    for model in MODELS:
        table[f"generator:{model}"] = ("generators", "section_generator", {"model": model})
    return table


def phases(names) -> list[tuple[list[str], float]]:
    """(sections run side by side, end of the phase as a fraction of --budget-s). The checks and the baselines'
    compile warm-ups share the CPU cores; every timing phase runs one section alone on the GPU; the d16 compiles
    (its sampling checks warm them) come last, where a spent budget costs least. A phase that ends early leaves
    its slack to the next ones. The shares are estimates for a cold H100 or H200 (no run of this layout has been
    timed yet): checks and warm-ups ~170 s on 16 cores (the first run compiles every kernel; --resume and the
    caches make a second one faster), each op's timings 15-50 s, fmnist ~40 s, the d16 check and timings ~120 s."""
    checks = [s for s in names if (s.startswith("check:") and s != "check:sampling:d16") or s.startswith("warm:")]
    return [(["machine"], 0.04), (checks, 0.38), (["time:dct"], 0.43), (["time:subimages"], 0.48),
            (["time:vq"], 0.52), (["time:attention"], 0.62), (["time:kvcache"], 0.67),
            (["generator:fmnist"], 0.75), (["check:sampling:d16"], 0.87), (["generator:d16"], 1.0)]  # fmt: skip


def report_order(names) -> list[str]:
    """Sections in the order their tables appear in the report."""
    order = ["machine"]
    for op in OPS:
        order += [s for s in names if s.startswith(f"check:{op}:") or s.startswith(f"check:{op}@")]
        order.append(f"time:{op}")
    order += [f"warm:{op}" for op in WARM_OPS]
    order += [f"check:sampling:{m}" for m in MODELS] + [f"generator:{m}" for m in MODELS]
    return order


def matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ":") or name.startswith(pattern + "@")


def child_main(args) -> int:
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit module is imported
    ensure_packages()
    from .common import Ctx, Writer, short_error
    from .shapes import sizes

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
    module, function, fields = sections()[args.child]
    ctx = Ctx(device, args.dry_run, args.interpret, args.deadline, writer, floors, sizes(args.dry_run),
              compile_baselines=not args.dry_run or args.compile_baselines, **fields)  # fmt: skip
    writer.save()
    try:
        getattr(importlib.import_module(f".{module}", __package__), function)(ctx)
        writer.data["complete"] = not writer.data.get("skipped")  # --resume keeps it
    except Exception as exc:
        traceback.print_exc()
        writer.row(f"{args.child}: section error", ["result", "note"], {"result": "FAIL", "note": short_error(exc)})
    writer.save()
    return 0


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
    children that crashed or were killed, and sections never started because the budget was spent.

    Ctrl-C stops the run but keeps what it measured: the running children are stopped (their saved rows
    stay), every section not yet started is skipped, and `args.interrupted` is set for the report."""
    problems, skipped, running = [], [], []
    try:
        _run_phases(args, state, problems, skipped, running)
    except KeyboardInterrupt:
        args.interrupted = True
        for s, proc, err in running:
            _kill_group(proc)
            err.close()
            problems.append((s, "interrupted (Ctrl-C) while running; the rows it wrote are kept"))
        started = {s for s, _ in problems} | set(skipped) | set(args.kept)
        skipped += [s for s in args.sections if s not in started and not _finished(state, s)]
        print("\ninterrupted: writing the report of what finished", file=sys.stderr, flush=True)
    return problems, skipped


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child and everything it started. Each child leads its own process group, so the compilers and
    workers torch.compile forks (which inherit our stdout) go with it instead of holding the pipe open."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone (and reaped below)
        pass
    proc.wait()


def _finished(state: Path, section: str) -> bool:
    return (state / f"{section.replace(':', '_')}.json").exists()


def _complete(state: Path, section: str) -> bool:
    """Whether a previous run finished `section` within its budget (what --resume keeps)."""
    try:
        return bool(json.loads((state / f"{section.replace(':', '_')}.json").read_text(encoding="utf-8"))["complete"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare_work_dir(args) -> Path:
    """The sections folder of --work-dir: emptied, or with --resume, holding only the complete sections (listed in
    `args.kept`, not run again). The caches under cache/ are kept either way."""
    state = Path(args.work_dir) / "sections"
    state.mkdir(parents=True, exist_ok=True)
    args.kept = [s for s in args.sections if args.resume and _complete(state, s)]
    keep = {f"{s.replace(':', '_')}{ext}" for s in args.kept for ext in (".json", ".stderr")}
    for path in state.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return state


def child_env(args) -> dict:
    """The children's environment: the repository on PYTHONPATH, persistent compile caches under --work-dir."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    cache = Path(args.work_dir).resolve() / "cache"
    env["TRITON_CACHE_DIR"] = str(cache / "triton")
    env["TRITON_CACHE_AUTOTUNING"] = "1"  # autotuning results on disk: the timing phase reuses the checks' choice
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    if not args.dry_run:
        env.pop("TRITON_INTERPRET", None)
    return env


def _run_phases(args, state: Path, problems: list, skipped: list, running: list) -> None:
    t0 = time.time()
    flags = (["--dry-run"] if args.dry_run else []) + (["--interpret"] if args.interpret else [])
    flags += ["--compile-baselines"] if args.compile_baselines else []
    env = child_env(args)
    for names, end in phases(args.sections):
        pending = sorted((s for s in names if s in args.sections and s not in args.kept),
                         key=lambda s: WEIGHT.get(s.split(":")[1].split("@")[0], 9) if s.startswith("check:")
                         else WEIGHT["warm"] if s.startswith("warm:") else 0)
        if not pending:
            continue
        label = ", ".join(pending) if len(pending) < 4 else f"{len(pending)} sections"
        deadline = t0 + args.budget_s * end
        while pending or running:
            while pending and len(running) < args.jobs:
                s = pending.pop(0)
                if time.time() > deadline:
                    skipped.append(s)
                    continue
                err = open(state / f"{s.replace(':', '_')}.stderr", "w", encoding="utf-8")
                cmd = [sys.executable, "-m", ENTRY, "--child", s, "--state-dir", str(state),
                       "--deadline", str(deadline), *flags]  # fmt: skip
                # own process group: a terminal's Ctrl-C reaches only us, and we stop each child's whole group
                running.append((s, subprocess.Popen(cmd, stderr=err, env=env, start_new_session=True), err))
            time.sleep(0.1)
            for item in list(running):
                s, proc, err = item
                rc = proc.poll()
                if rc is None and time.time() <= deadline + GRACE_S:
                    continue
                _kill_group(proc)  # past its budget: killed (rc stays None); exited: its leftovers go
                err.close()
                running.remove(item)
                _finish(state, s, rc, problems)
        print(f"-- phase {label} done at {time.time() - t0:.0f} s", flush=True)


def main(argv=None, doc: str = "") -> int:
    parser = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="markdown file to write (default docs/gpu_report.md on CUDA; nothing on a dry run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every code path on CPU with tiny shapes (no GPU needed; CUDA-only parts through "
                             "CPU stand-ins)")  # fmt: skip
    parser.add_argument("--interpret", action="store_true",
                        help="with --dry-run: run the Triton kernels under TRITON_INTERPRET=1 instead of the reference")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"hard wall-clock cap in seconds (default {DEFAULT_BUDGET_S:.0f} on CUDA, 3600 on a dry "
                             "run); sections past their phase's share write SKIP rows")  # fmt: skip
    parser.add_argument("--sections", nargs="+", default=None,
                        help="run only these sections, by name or prefix (e.g. machine check:vq check:vq:fp32 "
                             "check:dct@blockwise-v1 warm:attention time:vq generator:d16); default all; an unknown "
                             "name lists them")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="most sections running at once in the parallel check phase (default: CPU count)")
    parser.add_argument("--work-dir", default=None,
                        help="sections' results, compile caches and this run's measured.json (default out/gpu_report, "
                             "or out/gpu_report_dry for --dry-run, under the repository root)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="keep the sections a previous run in --work-dir finished within its budget; run the rest")
    parser.add_argument("--measured", default=None,
                        help="measured-decisions table to merge this run's decisions into (default on CUDA: the one "
                             "`auto` reads, spectralar_kernels/measured.json; a dry run merges nowhere unless given)")
    parser.add_argument("--compile-baselines", action="store_true",
                        help="with --dry-run: also torch.compile the compiled baselines (CUDA runs always do; on a "
                             "small CPU it takes minutes)")  # fmt: skip
    parser.add_argument("--child", default=None, help="internal: run one section in this process")
    parser.add_argument("--state-dir", default=None, help="internal: where children write their JSON")
    parser.add_argument("--deadline", type=float, default=0.0, help="internal: epoch seconds a child must finish by")
    args = parser.parse_args(argv)
    if args.interpret and not args.dry_run:
        parser.error("--interpret needs --dry-run")
    if args.child:
        return child_main(args)  # first: a child sets TRITON_INTERPRET before the kernels are imported
    ensure_packages()
    names = list(sections())
    patterns = args.sections or list(names)
    args.sections = [s for s in names if any(matches(s, p) for p in patterns)]
    unknown = [p for p in patterns if not any(matches(s, p) for s in names)]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {' '.join(names)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("the GPU report needs a CUDA GPU (torch.cuda.is_available() is False). "
              "Use --dry-run to exercise every code path on CPU.", file=sys.stderr)  # fmt: skip
        return 2
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.dry_run else DEFAULT_BUDGET_S
    if args.work_dir is None:
        args.work_dir = str(ROOT / "out" / ("gpu_report_dry" if args.dry_run else "gpu_report"))
    if args.measured is None and not args.dry_run:
        from spectralar_kernels._dispatch import MEASURED_PATH

        args.measured = str(MEASURED_PATH)
    out = args.out if args.out is not None else (None if args.dry_run else str(ROOT / "docs" / "gpu_report.md"))
    from .writer import markdown

    t0 = time.time()
    state = prepare_work_dir(args)
    problems, skipped = run_phases(args, state)
    text, counts = markdown(state, report_order(names), problems, skipped, args, time.time() - t0)
    print("\n" + text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {time.time() - t0:.0f} s")
    if getattr(args, "interrupted", False):
        return 130  # the shell's code for an interrupted command
    return 1 if counts["FAIL"] else 0
