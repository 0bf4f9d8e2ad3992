"""`python -m bench.gpu_report`: the CPU dry run writes its tables and the dispatch table; the dispatch-table rule.

`bench` imports as a package because the root conftest.py puts the repository root on sys.path."""

import os
import subprocess
import sys
from pathlib import Path

from bench.report.dispatch import derive, markdown, python_literal, report_constant
from spectralar_kernels._dispatch import Measured

ROOT = Path(__file__).resolve().parent.parent

IMPLS = {("vq_nearest", "l2"): ("vq-v1", "vq-v2"), ("attention", "causal"): ("attention-v2",),
         ("dct2d", "blockwise"): ("blockwise-v1", "blockwise-v2")}  # fmt: skip


def _env():
    """The report as a user runs it, from another folder (output lands in tmp_path), with the repository on
    PYTHONPATH as `python -m bench.gpu_report` from the root would have it."""
    env = {k: v for k, v in os.environ.items() if k != "SPECTRALAR_KERNELS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


CMD = [sys.executable, "-m", "bench.gpu_report", "--dry-run", "--jobs", "2"]


def _run(args, tmp_path, timeout=120):
    return subprocess.run([*CMD, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_dry_run_writes_tables_and_dispatch_table(tmp_path):
    out = tmp_path / "report.md"
    proc = _run(["--sections", "check:vq:fp32:realistic", "time:vq", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    for heading in ("## vq_nearest: correctness", "## vq_nearest: timing", "## Dispatch table this run implies"):
        assert heading in text
    assert "| realistic l2 | M=256 K=512 d=12 | fp32 |" in text and "| PASS |" in text
    assert "| ref (chunked) |" in text and "| torch.cdist+argmin |" in text
    assert "MEASURED: dict[tuple[str, str, str], Measured] = {" in text
    assert '("vq_nearest", "cosine", "fp32"): Measured(' in text
    assert "DRY RUN: not measurements" in text
    assert "0 FAIL" in proc.stdout


def test_ctrl_c_keeps_what_finished(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops every child, writes the
    report of what finished with the rest marked interrupted, and exits 130 without a traceback."""
    import signal
    import time

    out = tmp_path / "report.md"
    mark = f"gpu-report-test-{os.getpid()}-{time.time_ns()}"  # inherited by every process the report starts
    env = {**_env(), "SPECTRALAR_TEST_MARK": mark}
    # as from a terminal: SIGINT at its default even when this suite runs in the background (`cmd &` in a script
    # starts with SIGINT ignored, which Python, and so the report, would inherit and respect)
    proc = subprocess.Popen([*CMD, "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(8)  # the machine section and a few checks have run; torch.compile may be running compilers
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout[-1000:] + stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    assert "## Machine and measured floors" in text and "not started: interrupted (Ctrl-C)" in text
    left = _marked_after(mark, 0)
    assert not left, f"processes of the report outlived it: {left}"


def _marked_after(mark: str, count: int) -> list[str]:
    """`_marked(mark)` once it has `count` entries, or after 5 s (processes take a moment to start or be reaped)."""
    import time

    for _ in range(50):
        found = _marked(mark)
        if len(found) == count:
            break
        time.sleep(0.1)
    return found


def _marked(mark: str) -> list[str]:
    """Command lines of the live processes whose environment holds `mark`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"SPECTRALAR_TEST_MARK={mark}".encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has exited; only its parent can reap it
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_spent_budget_skips_sections(tmp_path):
    out = tmp_path / "report.md"
    proc = _run(["--sections", "machine", "time:dct", "--budget-s", "0", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    assert "| machine | SKIP | not started: the time budget was spent |" in text
    assert "| time:dct | SKIP |" in text
    assert "No timings were recorded" in text


def test_unknown_section_is_an_error(tmp_path):
    proc = _run(["--sections", "time:nope"], tmp_path)
    assert proc.returncode == 2 and "unknown sections" in proc.stderr


def _rec(op, variant, case, provider, s, impl=None, dtype="bf16"):
    return {"op": op, "variant": variant, "dtype": dtype, "case": case, "provider": provider, "impl": impl,
            "baseline": provider == "ref", "s": s}  # fmt: skip


def test_dispatch_takes_the_best_worst_case_speedup():
    vq = [_rec("vq_nearest", "l2", case, "ref", 1.0) for case in ("K=4096", "K=16384")]
    vq += [_rec("vq_nearest", "l2", "K=4096", "vq-v1", 0.5, "vq-v1"),
           _rec("vq_nearest", "l2", "K=16384", "vq-v1", 0.5, "vq-v1"),
           # v2 wins one case 4x but loses the other: its worst case (0.5x) decides, so v1 (2x on both) is chosen
           _rec("vq_nearest", "l2", "K=4096", "vq-v2", 0.25, "vq-v2"),
           _rec("vq_nearest", "l2", "K=16384", "vq-v2", 2.0, "vq-v2"),
           _rec("vq_nearest", "l2", "K=16384", "cdist", 0.1)]  # a peer never becomes an entry
    (d,) = derive(vq, IMPLS)
    assert (d.kernel, d.speedup, d.auto) == ("vq-v1", 2.0, "vq-v1")
    assert d.candidates == {"vq-v1": 2.0, "vq-v2": 0.5}
    assert d.case.endswith("(worst of 2)")


def test_dispatch_keeps_losers_out_of_auto_and_needs_every_case():
    rows = [_rec("attention", "causal", c, "ref", 1.0, dtype="fp32") for c in ("fwd", "fwd+bwd")]
    rows += [_rec("attention", "causal", "fwd", "attention-v2", 2.0, "attention-v2", dtype="fp32"),
             _rec("attention", "causal", "fwd+bwd", "attention-v2", 1.25, "attention-v2", dtype="fp32")]
    # blockwise-v2 is faster where it was timed, but it failed (no record) on the second case: not a candidate
    rows += [_rec("dct2d", "blockwise", c, "ref", 1.0) for c in ("a", "b")]
    rows += [_rec("dct2d", "blockwise", c, "blockwise-v1", 0.5, "blockwise-v1") for c in ("a", "b")]
    rows += [_rec("dct2d", "blockwise", "a", "blockwise-v2", 0.1, "blockwise-v2")]
    att, blk = derive(rows, IMPLS)
    assert (att.kernel, att.auto) == ("attention-v2", None) and att.speedup == 0.5
    assert (blk.kernel, blk.speedup) == ("blockwise-v1", 2.0)
    assert blk.candidates["blockwise-v2"] is None
    lines = markdown([att, blk])
    assert "| attention | causal | fp32 | reference |" in lines[2]
    assert "blockwise-v2 not timed on every case" in lines[3]


def test_dispatch_literal_pastes_and_never_rounds_a_loss_up():
    rows = [_rec("vq_nearest", "l2", "K=4096", "ref", 0.996), _rec("vq_nearest", "l2", "K=4096", "vq-v2", 1.0, "vq-v2")]
    (d,) = derive(rows, IMPLS)
    assert d.auto is None  # 0.996x
    name, value = report_constant({"gpu": "NVIDIA H200", "torch": "2.13.0+cu130", "triton": "3.7.1"}, "2026-12-02",
                                  dry=False)  # fmt: skip
    assert name == "H200_2026_12_02" and "torch 2.13, triton 3.7" in value
    scope = {"Measured": Measured}
    exec("\n".join(python_literal([d], (name, value))), scope)
    entry = scope["MEASURED"][("vq_nearest", "l2", "bf16")]
    assert entry.kernel == "vq-v2" and entry.speedup == 0.99 and entry.report == value


def test_kernel_probe_catches_another_implementation():
    import torch

    from bench.report.common import KernelProbe, forced
    from spectralar_kernels import vq_nearest

    z, c = torch.randn(5, 4), torch.randn(7, 4)
    with forced("ref"), KernelProbe() as probe:
        vq_nearest(z, c)
    assert probe.seen == [None]
    assert probe.verdict(None)[0]
    ok, note = probe.verdict("vq-v2")  # asked for a kernel, the reference ran: the report must say FAIL
    assert not ok and "asked for vq-v2" in note
    import spectralar_kernels.vq as vq_module
    from spectralar_kernels._common import choose_kernel

    assert vq_module.choose_kernel is choose_kernel  # the probe put the original back


def test_stopping_a_section_stops_what_it_started():
    """A section's child is stopped with everything it forked (torch.compile's compilers and workers, which
    would otherwise keep running and hold the report's stdout open), even a grandchild that ignores SIGINT."""
    import time

    from bench.report.runner import _kill_group

    mark = f"gpu-report-group-{os.getpid()}-{time.time_ns()}"
    grandchild = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "SPECTRALAR_TEST_MARK": mark},
                            start_new_session=True)  # fmt: skip
    try:
        started = _marked_after(mark, 2)
        assert len(started) == 2, started
        _kill_group(proc)
        assert proc.returncode is not None
        left = _marked_after(mark, 0)
        assert not left, left
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
