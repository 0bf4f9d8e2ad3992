"""`python -m bench.gpu_report`: the CPU dry run writes its tables and the dispatch table; the dispatch-table rule.

`bench` imports as a package because the root conftest.py puts the repository root on sys.path."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.dispatch import derive, device_tag, entries, merge, report_id

ROOT = Path(__file__).resolve().parent.parent

IMPLS = {("vq_nearest", "l2"): ("vq-v1", "vq-v2"), ("attention", "causal"): ("attention-v2",)}


def _env():
    """The report as a user runs it, from another folder (output lands in tmp_path), with the repository on
    PYTHONPATH as `python -m bench.gpu_report` from the root would have it."""
    env = {k: v for k, v in os.environ.items() if k != "SPECTRALAR_KERNELS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


CMD = [sys.executable, "-m", "bench.gpu_report", "--dry-run", "--jobs", "2"]


def _run(args, tmp_path, timeout=120):
    work = ["--work-dir", str(tmp_path / "work")]
    return subprocess.run([*CMD, *work, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_dry_run_writes_tables_decisions_and_the_measured_table(tmp_path):
    out, measured = tmp_path / "report.md", tmp_path / "measured.json"
    proc = _run(["--sections", "check:vq:fp32:realistic", "time:vq", "--out", str(out), "--measured", str(measured)],
                tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    for heading in ("## vq_nearest: correctness", "## vq_nearest: timing", "## Dispatch decisions this run implies"):
        assert heading in text
    assert "| realistic l2 | M=256 K=512 d=12 | fp32 |" in text and "| PASS |" in text
    assert "| ref (chunked) | ref |" in text and "| torch.cdist+argmin | baseline |" in text
    assert "| matmul+argmin | baseline |" in text and "| vq-v2 (ref backend) | kernel |" in text
    # the strongest path is named per op; which one wins is a timing (cdist and matmul trade places on a busy CPU)
    assert re.search(r"^- vq_nearest l2: (matmul\+argmin|torch\.cdist\+argmin|ref \(chunked\)) \(fp32,", text, re.M)
    assert re.search(r"^- vq_nearest cosine: (matmul\+argmax|torch\.cdist\+argmin|ref \(chunked\)) \(fp32,", text, re.M)
    assert "| vq_nearest | cosine | fp32 | K=257..512 d=9..16 | reference |" in text
    assert "DRY RUN" in text and "0 FAIL" in proc.stdout
    for path in (measured, tmp_path / "work" / "measured.json"):  # written, and readable by the dispatch
        assert json.loads(path.read_text(encoding="utf-8"))["entries"] == []
    assert json.loads((tmp_path / "work" / "sections" / "time_vq.json").read_text(encoding="utf-8"))["complete"]


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
    cmd = [*CMD, "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    machine = tmp_path / "work" / "sections" / "machine.json"
    for _ in range(600):  # the machine section has run, checks are running; torch.compile may run compilers
        if machine.exists() and json.loads(machine.read_text(encoding="utf-8") or "{}").get("complete"):
            break
        time.sleep(0.1)
    time.sleep(3)
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


H100 = ("9.0", "NVIDIA H100 80GB HBM3")
BUCKET = {"K": 16384, "d": 16}


def _t(case, provider, s, role="baseline", impl=None, bucket=BUCKET, op="vq_nearest", variant="l2", dtype="bf16"):
    return {"op": op, "variant": variant, "dtype": dtype, "case": case, "bucket": bucket, "provider": provider,
            "impl": impl, "role": role, "s": s}  # fmt: skip


def _c(impl, result="PASS", bucket=BUCKET, op="vq_nearest", variant="l2", dtype="bf16"):
    return {"op": op, "variant": variant, "dtype": dtype, "impl": impl, "bucket": bucket, "case": "c",
            "result": result}  # fmt: skip


def _case(case, ref=1.0, best=0.5, kernels=(), **kw):
    """A case timed with the reference, the strongest plain path (`best`) and kernels ((impl, seconds), ...)."""
    rows = [_t(case, "ref", ref, "ref", **kw), _t(case, "matmul+argmin", best, **kw), _t(case, "cdist", 0.9, **kw)]
    return rows + [_t(case, impl, s, "kernel", impl, **kw) for impl, s in kernels]


def test_derive_takes_the_best_worst_case_over_the_strongest_path():
    # v2 wins one case 4x but loses the other: its worst case decides, so v1 (2x the strongest path on both) wins
    rows = _case("K=4096", kernels=[("vq-v1", 0.25), ("vq-v2", 0.125)])
    rows += _case("K=16384", kernels=[("vq-v1", 0.25), ("vq-v2", 1.0)])
    (d,) = derive(rows, [_c("vq-v1"), _c("vq-v2")], IMPLS, H100)
    assert (d.kernel, d.speedup, d.auto, d.baseline) == ("vq-v1", 2.0, "vq-v1", "matmul+argmin")
    assert d.speedup_vs_ref == 4.0 and d.case.endswith("(worst of 2)")
    assert d.candidates == {"vq-v1": "2.00x", "vq-v2": "0.50x"}
    assert d.fastest == {"K=4096": "matmul+argmin", "K=16384": "matmul+argmin"}


def test_fast_kernels_that_failed_or_skipped_their_check_stay_on_the_reference():
    """Done-when: a fast kernel that failed its check in the same run gets no entry, however fast; nor does one
    the run never checked on that bucket (another bucket's PASS does not count)."""
    rows = _case("K=16384", kernels=[("vq-v1", 0.1), ("vq-v2", 0.05)])
    other = {"K": 4096, "d": 16}
    checks = [_c("vq-v2", "PASS"), _c("vq-v2", "FAIL"), _c("vq-v1", bucket=other), _c("vq-v2", dtype="fp32")]
    (d,) = derive(rows, checks, IMPLS, H100)
    assert d.kernel is None and d.auto is None
    assert d.candidates["vq-v2"].startswith("failed its check (1 of 2 passed) (timed 10.00x)")
    assert d.candidates["vq-v1"].startswith("not checked on this bucket")
    assert entries([d], "r", "2026-12-02") == []


def test_beating_only_the_own_reference_is_not_enough():
    """Done-when: 4x the op's reference but slower than matmul + argmin: the reference stays."""
    rows = _case("K=16384", ref=1.0, best=0.2, kernels=[("vq-v2", 0.25)])
    (d,) = derive(rows, [_c("vq-v2")], IMPLS, H100)
    assert d.kernel == "vq-v2" and d.speedup == 0.8 and d.auto is None and d.baseline == "matmul+argmin"
    assert d.speedup_vs_ref == 4.0 and entries([d], "r", "2026-12-02") == []
    # a kernel missing from one case of the bucket is not a candidate
    rows = _case("a", kernels=[("vq-v2", 0.1)]) + _case("b", kernels=[("vq-v1", 0.1)])
    (d,) = derive(rows, [_c("vq-v1"), _c("vq-v2")], IMPLS, H100)
    assert d.kernel is None and set(d.candidates.values()) == {"not timed on every case"}


def test_entries_reach_auto_only_in_their_bucket_and_device_class(tmp_path, monkeypatch):
    """Done-when: derive -> measured.json -> `auto`: the kernel runs for its bucket on its device class only."""
    from types import SimpleNamespace

    import torch

    from spectralar_kernels import _dispatch
    from spectralar_kernels._common import choose_kernel

    rows = _case("M=4096 K=16384 d=12", kernels=[("vq-v2", 0.1)])
    rows += _case("fwd", kernels=[("attention-v2", 0.1)], op="attention", variant="causal",
                  bucket={"D": 64, "T": 128, "BH": 2048})  # fmt: skip
    decisions = derive(rows, [_c("vq-v2")], IMPLS, H100)
    path = tmp_path / "measured.json"
    old = {"op": "vq_nearest", "variant": "l2", "dtype": "bf16", "bucket": BUCKET, "kernel": "vq-v1", "speedup": 3,
           "device": {"capability": "9.0", "name": "NVIDIA H200"}, "report": "old", "date": "2026-11-28",
           "source": _dispatch.source_digest("vq-v1")}
    stale = {**old, "device": {"capability": H100[0], "name": H100[1]}, "bucket": BUCKET, "kernel": "vq-v1"}
    path.write_text(json.dumps({"entries": [old, stale]}), encoding="utf-8")
    assert merge(path, entries(decisions, "H100 run", "2026-12-02"), decisions, "about") == 2  # stale replaced
    monkeypatch.setattr(_dispatch, "MEASURED", _dispatch.load_measured(path))
    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")
    on = lambda dev: monkeypatch.setattr(_dispatch, "device_class", lambda t: dev)  # noqa: E731
    x = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)
    on(H100)
    assert choose_kernel("vq_nearest", "l2", x, k=16384, d=12) == "vq-v2"
    assert choose_kernel("vq_nearest", "l2", x, k=9000, d=12) == "vq-v2"  # same bucket (8192, 16384]
    assert choose_kernel("vq_nearest", "l2", x, k=4096, d=12) is None  # outside the measured bucket
    assert choose_kernel("vq_nearest", "l2", x, k=16384, d=40) is None
    assert choose_kernel("vq_nearest", "l2", SimpleNamespace(is_cuda=True, dtype=torch.float32), k=16384, d=12) is None
    assert choose_kernel("attention", "causal", x, t=65, d=64, bh=2048) is None  # timed, never checked
    on(("9.0", "NVIDIA H200"))  # another device class: its own (older) entry
    assert choose_kernel("vq_nearest", "l2", x, k=16384, d=12) == "vq-v1"
    on(("8.0", "NVIDIA A100-SXM4-80GB"))
    assert choose_kernel("vq_nearest", "l2", x, k=16384, d=12) is None


def test_report_id_names_the_gpu_model():
    machine = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu130", "triton": "3.7.1"}
    name, value = report_id(machine, "2026-12-02", dry=False)
    assert name == "H100_2026_12_02" and "one NVIDIA H100 80GB HBM3 (torch 2.13, triton 3.7)" in value
    assert report_id({"gpu": "NVIDIA H200"}, "2026-12-02", dry=False)[0] == "H200_2026_12_02"
    assert device_tag("NVIDIA A100-SXM4-80GB") == "A100" and device_tag("NVIDIA GeForce RTX 4090") == "RTX_4090"


def test_kernel_probe_catches_another_implementation_and_sees_the_bucket():
    import torch

    from bench.report.common import KernelProbe, forced
    from spectralar_kernels import vq_nearest

    z, c = torch.randn(5, 4), torch.randn(7, 4)
    with forced("ref"), KernelProbe() as probe:
        vq_nearest(z, c)
    assert probe.seen == [(None, (("K", 8), ("d", 4)))]
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


def test_resume_keeps_finished_sections_and_the_caches(tmp_path):
    """--resume keeps the sections a previous run finished within budget and reruns the rest; without it every
    section reruns; the compile caches survive both, and every child is pointed at them."""
    from types import SimpleNamespace

    from bench.report.runner import child_env, prepare_work_dir

    state = tmp_path / "sections"
    state.mkdir()
    for name, complete in (("machine", True), ("time_vq", False), ("check_vq_fp32_awkward", True)):
        (state / f"{name}.json").write_text(json.dumps({"complete": complete}), encoding="utf-8")
        (state / f"{name}.stderr").write_text("log", encoding="utf-8")
    (tmp_path / "cache" / "inductor").mkdir(parents=True)
    args = SimpleNamespace(work_dir=str(tmp_path), resume=True, dry_run=True,
                           sections=["machine", "check:vq:fp32:awkward", "time:vq"])  # fmt: skip
    prepare_work_dir(args)
    assert args.kept == ["machine", "check:vq:fp32:awkward"]
    assert sorted(p.name for p in state.iterdir()) == ["check_vq_fp32_awkward.json", "check_vq_fp32_awkward.stderr",
                                                         "machine.json", "machine.stderr"]  # fmt: skip
    args.resume = False
    prepare_work_dir(args)
    assert args.kept == [] and not list(state.iterdir()) and (tmp_path / "cache" / "inductor").is_dir()
    env = child_env(args)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path.resolve() / "cache" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path.resolve() / "cache" / "triton") and env["TRITON_CACHE_AUTOTUNING"]


def _ctx(tmp_path, **fields):
    """A dry-run section context writing to tmp_path, as a child process builds it."""
    import time

    from bench import floors
    from bench.report.common import Ctx, Writer
    from bench.report.shapes import sizes

    writer = Writer(tmp_path / "section.json", "test")
    fields.setdefault("compile_baselines", False)
    return Ctx("cpu", True, False, time.time() + 600, writer, floors.Floors.nominal(), sizes(True), **fields)


def test_cuda_graph_timing_runs_through_the_stand_in(tmp_path):
    """The decode timings capture each step as a CUDA graph on a GPU; on CPU the same rows run through the
    stand-in graph, so a provider that breaks under `ctx.dev.graph` fails here, not first on a GPU."""
    from bench.report.kvcache import time_kvcache

    ctx = _ctx(tmp_path)
    calls = []
    graph = ctx.dev.graph
    ctx.dev.graph = lambda fn: calls.append(fn) or graph(fn)
    time_kvcache(ctx)
    rows = ctx.writer.data["tables"][0]["rows"]
    graphed = [r for r in rows if r[0].endswith("CUDA graph")]
    assert graphed and len(graphed) == len(rows) // 2 and len(calls) == len(graphed)
    assert {r[-2] for r in rows} == {"ok"}, rows
    assert any(r[2] == "index_put + SDPA (hand-written step)" for r in graphed)
    timings = ctx.writer.data["timings"]
    assert {t["role"] for t in timings} == {"ref", "baseline", "kernel"}
    # one bucket per case; on CPU without the interpreter the decode op never asks choose_kernel, so none
    assert {str(t["bucket"]) for t in timings} == {"None"}


def test_the_decode_step_finds_every_cache_tensor():
    """The sampling cache is a module (not iterable, which the CUDA-graph step once assumed): every k/v buffer
    is marked static, however the cache is held."""
    import torch

    from bench.report.generators import _static_tensors
    from spectralar.models.config import preset
    from spectralar.models.generator import SpectralGPT

    cfg = preset("generator", "fmnist")
    with torch.device("meta"):
        model = SpectralGPT(cfg)
    caches = model.setup_caches(2, torch.float32, torch.device("meta"))
    found = _static_tensors(caches)
    assert len(found) == len(list(caches.buffers())) >= 2 * cfg.depth
    assert {id(t) for t in found} == {id(t) for t in caches.buffers()}
    assert len(_static_tensors([caches, torch.zeros(1)])) == len(found) + 1


@pytest.mark.slow
def test_full_dry_run_names_the_strongest_path_of_every_op(tmp_path):
    """Done-when: `--dry-run` runs every section (the CUDA-only parts through the CPU stand-ins) and names the
    strongest plain-PyTorch path of every op. Minutes on 2 CPU cores."""
    from spectralar_kernels._dispatch import IMPLEMENTATIONS

    out = tmp_path / "report.md"
    proc = _run(["--out", str(out)], tmp_path, timeout=3000)
    text = out.read_text(encoding="utf-8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Harness problems" not in text and "section error" not in text
    for op, variant in IMPLEMENTATIONS:
        assert f"- {op} {variant}: " in text, (op, variant)
    assert "| CUDA graph (CPU: compiled, no graph) |" in text and "CUDA graph |" in text


def test_kernel_records_carry_warps_and_resident_ctas():
    """`--json` records: `warps` and `ctas_per_sm` from registers, shared memory and warps under each arch's limits
    (the numbers the sm_90 audit worked out by hand for plane-v2, vq-v2 and attention D=128)."""
    from spectralar_kernels.testing.aot import Result, ctas_per_sm

    assert ctas_per_sm(141, 8, 83 * 1024, 90) == 1  # plane-v2 bf16: registers allow 12 warps, one 8-warp CTA
    assert ctas_per_sm(156, 4, 26 * 1024, 90) == 3  # vq-v2: 3, not the 4 its launch plan assumed
    assert ctas_per_sm(120, 4, 132 * 1024, 90) == 1  # shared memory bound
    assert ctas_per_sm(32, 4, 0, 90) == 16 and ctas_per_sm(16, 1, 0, 80) == 32  # warp, then CTA count bound
    assert ctas_per_sm(40, 4, 100 * 1024, 90) == 2 and ctas_per_sm(40, 4, 100 * 1024, 80) == 1
    assert ctas_per_sm(64, 4, 228 * 1024, 90) == 0  # over the per-block limit: does not launch
    r = Result(op="vq", label="x", kernel="_k", arch=90, registers=156, spill_bytes=0, shared_bytes=26 * 1024,
               num_warps=4, jit_like=True)  # fmt: skip
    rec = r.record()
    assert rec["warps"] == 4 and rec["ctas_per_sm"] == 3
    assert Result(op="vq", label="x", kernel="_k", arch=90, error="boom").record()["ctas_per_sm"] == 0
