"""Training under faults: refused overwrites, real signals, crashes during checkpoint writes, kill -9,
bad flags, and 2-process DDP that must equal a 1-process run. Micro preset, tiny batches, CPU.

Each case runs by default only where it catches a bug no other default case catches; the rest of each matrix is
marked slow (`pytest -m slow tests/test_train_faults.py`). Run as a script, this file is the torchrun worker of the
DDP tests (see `_worker`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from microrun import child_env, train_proc, wait_for_step
from safetensors.torch import load_file, save_file

import spectralar.checkpoint as ckmod
from spectralar.checkpoint import load_train_state, load_weights, read_meta, recover, save_checkpoint
from spectralar.train import main as train_main

FAST = ["--preset", "micro", "--log-every", "1", "--threads", "1"]


def rows(out, stage):
    return [json.loads(line) for line in (Path(out) / f"{stage}_log.jsonl").read_text().splitlines()]


def losses(out, stage):
    """{step: loss} of the train rows, asserting no step is logged twice."""
    steps = [r["step"] for r in rows(out, stage) if r["split"] == "train"]
    assert len(steps) == len(set(steps)), f"duplicate steps in the log: {sorted(steps)}"
    return {r["step"]: r["loss"] for r in rows(out, stage) if r["split"] == "train"}


def weights(ckpt):
    return load_weights(ckpt)


def assert_same_weights(a, b):
    """Bitwise equal trained weights, EMA weights (when there are any) and discriminator state."""
    assert read_meta(a).get("ema") == read_meta(b).get("ema")
    for ema in (False, True):
        wa, wb = load_weights(a, ema=ema), load_weights(b, ema=ema)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (ema, k)
    ta, tb = (load_file(str(Path(p) / "train.safetensors")) if (Path(p) / "train.safetensors").exists() else {}
              for p in (a, b))
    disc = sorted(k for k in ta if k.startswith("disc"))
    assert disc == sorted(k for k in tb if k.startswith("disc"))
    for k in disc:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def tok_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert train_main(["tokenizer", "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "16",
                       "--val-size", "0", *FAST]) == 0
    return out


def stage_args(stage, data, tok_run, steps, batch=16):
    extra = ["--tokenizer", str(tok_run / "tokenizer")] if stage == "generator" else []
    return [stage, "--data", str(data), "--steps", str(steps), "--batch-size", str(batch), *FAST, *extra]


# ---- never destroy a checkpoint ----------------------------------------------------------------------

def test_refuses_to_overwrite_a_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["tokenizer", "--data", str(data), "--out", str(out), "--batch-size", "16", "--val-size", "0", *FAST]
    assert train_main([*args, "--steps", "4"]) == 0
    before = (out / "tokenizer_log.jsonl").read_text()
    capsys.readouterr()
    assert train_main([*args, "--steps", "2"]) == 2  # the case of the issue: no --resume into a trained folder
    err = capsys.readouterr().err
    assert "already holds a tokenizer checkpoint at step 4" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert read_meta(out / "tokenizer")["step"] == 4 and (out / "tokenizer_log.jsonl").read_text() == before
    assert train_main([*args, "--steps", "0"]) == 2  # used to write a random-weight checkpoint, then fail
    assert train_main([*args, "--steps", "4", "--resume"]) == 2  # must exceed the checkpoint's step
    assert "must exceed" in capsys.readouterr().err
    assert read_meta(out / "tokenizer")["step"] == 4
    assert train_main([*args, "--steps", "2", "--overwrite"]) == 0
    assert read_meta(out / "tokenizer")["step"] == 2
    assert sorted(losses(out, "tokenizer")) == [1, 2]  # a fresh log, not appended to the old one


def test_resume_needs_a_readable_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["tokenizer", "--data", str(data), "--out", str(out), "--batch-size", "16", "--val-size", "0", *FAST]
    assert train_main([*args, "--steps", "3", "--resume"]) == 2  # used to start afresh silently
    assert "no checkpoint" in capsys.readouterr().err and not (out / "tokenizer").exists()
    assert train_main([*args, "--steps", "2"]) == 0
    target = out / os.readlink(out / "tokenizer")
    (target / "config.json").write_text('{"format": "spectralar-chec')
    assert train_main([*args, "--steps", "3", "--resume"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    shutil.rmtree(target)  # a link to nothing
    assert train_main([*args, "--steps", "3", "--resume"]) == 2
    assert "which is missing" in capsys.readouterr().err


def test_stale_temporaries_removed_at_startup(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["tokenizer", "--data", str(data), "--out", str(out), "--batch-size", "16", "--val-size", "0", *FAST]
    assert train_main([*args, "--steps", "2"]) == 0
    dead = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f".tokenizer.tmp-{dead}", f".tokenizer.old-{dead}", "tokenizer.0000001", f".tokenizer.tmp-{dead}"):
        (out / name).mkdir(exist_ok=True)
        (out / name / "model.safetensors").write_bytes(b"partial")
    os.symlink("tokenizer.0000001", out / f".tokenizer.link-{dead}")
    (out / "codes_train.tmp").write_bytes(b"partial")
    capsys.readouterr()
    assert train_main([*args, "--steps", "3", "--resume"]) == 0
    assert "removed what an interrupted run left" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if "tokenizer" in p.name or "codes" in p.name) == [
        "tokenizer", "tokenizer.0000003", "tokenizer_curves.png", "tokenizer_log.jsonl"]


def test_generator_keeps_its_tokenizer(data, tok_run, tmp_path, capsys):
    """OUT/tokenizer is the tokenizer OUT/generator was trained on: not replaced by another --tokenizer, and
    a resume on another tokenizer is refused."""
    other = tmp_path / "other"
    assert train_main(["tokenizer", "--data", str(data), "--out", str(other), "--steps", "2", "--batch-size", "16",
                       "--val-size", "0", "--seed", "1", *FAST]) == 0
    out = tmp_path / "run"
    args = ["generator", "--data", str(data), "--out", str(out), "--batch-size", "16", "--val-size", "0", *FAST]
    assert train_main([*args, "--steps", "2", "--tokenizer", str(tok_run / "tokenizer")]) == 0
    capsys.readouterr()
    assert train_main([*args, "--steps", "4", "--resume", "--tokenizer", str(other / "tokenizer")]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    shutil.rmtree(out / os.readlink(out / "generator"))
    os.unlink(out / "generator")
    assert train_main([*args, "--steps", "2", "--tokenizer", str(other / "tokenizer")]) == 2
    assert "holds another tokenizer" in capsys.readouterr().err
    assert_same_weights(out / "tokenizer", tok_run / "tokenizer")
    assert train_main([*args, "--steps", "2", "--tokenizer", str(other / "tokenizer"), "--overwrite"]) == 0
    assert_same_weights(out / "tokenizer", other / "tokenizer")


# ---- crash-safe checkpoint writes ----------------------------------------------------------------------

class Faults:
    """Make the k-th file-system operation of a checkpoint write raise, as a crash at that point would stop it."""

    def __init__(self, monkeypatch, k):
        self.k, self.calls = k, 0
        for mod, name in [(ckmod, "save_file"), (os, "rename"), (os, "replace"), (os, "symlink"), (os, "fsync"),
                          (os, "mkdir"), (os, "unlink"), (shutil, "rmtree")]:
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))

    def _wrap(self, fn):
        def faulty(*a, **kw):
            self.calls += 1
            if self.calls == self.k:
                raise OSError(f"injected fault in {fn.__name__}")
            return fn(*a, **kw)
        return faulty


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "legacy-plain-dir"])
def test_checkpoint_write_fails_at_every_step(tmp_path, monkeypatch, legacy):
    """At every point of the write sequence the checkpoint reads back complete, old or new, and after
    `recover` (what training runs at start-up) nothing else is left beside it."""
    model, opt = torch.nn.Linear(3, 2), None
    path = tmp_path / "ck"
    k = 0
    while True:
        k += 1
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        old = torch.nn.Linear(3, 2)
        save_checkpoint(path, "tokenizer", old, {"v": 1}, step=1, save_rng=True, versioned=not legacy)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters())
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        with monkeypatch.context() as m:
            faults = Faults(m, k)
            try:
                save_checkpoint(path, "tokenizer", model, {"v": 2}, step=2, optimizer=opt, save_rng=True,
                                versioned=True)
                done = True
            except OSError:
                done = False
        for stage in ("as left", "after recover"):
            if legacy and stage == "as left" and not os.path.lexists(path):
                # converting a plain directory to the link takes two renames: in between, both versions
                # are complete beside the missing name, and recover links the newest
                assert {"ck.0000001", "ck.0000002"} <= {p.name for p in tmp_path.iterdir()}, k
                recover(path)
                continue
            meta = read_meta(path)
            assert meta["step"] == 2 or (meta["step"] == 1 and not done), (k, stage)
            want = model if meta["step"] == 2 else old
            assert torch.equal(load_weights(path, meta)["weight"], want.weight.detach()), (k, stage)
            if meta["step"] == 2:
                load_train_state(path, torch.optim.AdamW(torch.nn.Linear(3, 2).parameters()), meta)
            recover(path)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["ck", *([os.readlink(path)] if path.is_symlink() else [])], (k, left)
        if faults.calls < k:  # the sequence has fewer than k operations: each one has failed once
            assert done and read_meta(path)["step"] == 2
            break
    assert k > 8


def test_crash_mid_write_then_resume_is_exact(data, tmp_path, monkeypatch, capsys):
    """A training run whose second checkpoint write dies between the renames resumes from the first one
    (it used to find no checkpoint, start again at step 0 and append duplicate steps to the log)."""
    args = ["tokenizer", "--data", str(data), "--batch-size", "16", "--val-size", "0", "--ckpt-every", "2",
            "--steps", "6", *FAST]
    assert train_main([*args, "--out", str(tmp_path / "ref")]) == 0
    real_replace = os.replace
    calls = {"n": 0}

    class Crash(BaseException):
        """Like a crash: no handler runs after it."""

    def second_switch_dies(src, dst):
        if Path(dst).name == "tokenizer":  # the switch of the checkpoint (link or directory rename)
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash
        return real_replace(src, dst)

    out = tmp_path / "crash"
    with monkeypatch.context() as m:
        m.setattr(os, "replace", second_switch_dies)
        m.setattr(os, "rename", second_switch_dies)
        with pytest.raises(Crash):
            train_main([*args, "--out", str(out)])
    assert read_meta(out / "tokenizer")["step"] == 2
    capsys.readouterr()
    assert train_main([*args, "--out", str(out), "--resume"]) == 0
    assert "from step 2" in capsys.readouterr().out
    assert losses(out, "tokenizer") == losses(tmp_path / "ref", "tokenizer")
    assert_same_weights(out / "tokenizer", tmp_path / "ref" / "tokenizer")


# ---- real signals and kill -9 --------------------------------------------------------------------------

# Which runs the signal test needs by default. A real signal differs from `stop_at` (which every stage's exact
# resume is tested with in-process: tests/test_train.py, tests/test_training_objectives.py) only in *when* it lands:
# mid-forward, mid-backward, during validation or a DataLoader fetch, between micro-steps. That handling (StopFlag,
# the step boundary, the exit code) is the same code for every stage, so one run with the most resumable state
# catches its bugs: the tokenizer with a discriminator (its optimizer, its start step crossed between two signals),
# EMA weights and gradient accumulation, stopped once by SIGINT before adv_start and once by SIGTERM after it.
# The plain tokenizer, the generator and the generator with EMA add no code path a signal can hit differently
# and run with -m slow; so does a third signal.
ADV_EMA = (["--set", "adv_weight=0.5", "--set", "adv_start=10", "--set", "adv_adaptive=true", "--set",
            "ema_decay=0.9"], ["--accum", "2", "--batch-size", "8"])
GEN_EMA = (["--set", "ema_decay=0.9"], ["--accum", "2", "--batch-size", "8"])
SIGNAL_RUNS = [
    pytest.param("tokenizer", ADV_EMA, 16, [(3, signal.SIGINT), (11, signal.SIGTERM)], id="tokenizer-adv-ema-accum"),
    pytest.param("tokenizer", ADV_EMA, 60, [(3, signal.SIGINT), (20, signal.SIGTERM), (35, signal.SIGINT)],
                 id="tokenizer-adv-ema-accum-3-signals", marks=pytest.mark.slow),
    pytest.param("tokenizer", ([], []), 60, [(3, signal.SIGINT), (20, signal.SIGTERM), (35, signal.SIGINT)],
                 id="tokenizer", marks=pytest.mark.slow),
    pytest.param("generator", ([], []), 60, [(3, signal.SIGINT), (20, signal.SIGTERM), (35, signal.SIGINT)],
                 id="generator", marks=pytest.mark.slow),
    pytest.param("generator", GEN_EMA, 60, [(3, signal.SIGINT), (20, signal.SIGTERM), (35, signal.SIGINT)],
                 id="generator-ema-accum", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("stage, extra, steps, signals", SIGNAL_RUNS)
def test_signal_then_resume_is_exact(stage, extra, steps, signals, data, tok_run, tmp_path):
    """Real SIGINT / SIGTERM at several moments: each run finishes its step, checkpoints and exits 130 / 143;
    the resumed runs together log the same per-step losses and end with the same weights, bit for bit (EMA
    weights and the discriminator with its optimizer included)."""
    config, flags = extra
    args = [*stage_args(stage, data, tok_run, steps), "--eval-every", "8", "--ckpt-every", "1000",
            "--val-size", "16", *flags]
    assert train_main([*args, *config, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "sig"
    resume, stops = config, []
    for after, sig in signals:
        proc = train_proc([*args, "--out", str(out), *resume])
        assert wait_for_step(proc, out, stage, after), proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, err[-2000:]
        assert "Traceback" not in err
        stops.append(read_meta(out / stage)["step"])
        assert after <= stops[-1] < steps
        resume = ["--resume"]
    assert train_main([*args, "--out", str(out), "--resume"]) == 0
    assert stops == sorted(stops)
    ref = losses(tmp_path / "ref", stage)
    got = losses(out, stage)
    assert sorted(got) == list(range(1, steps + 1))
    for s in ref:
        assert got[s] == ref[s], (s, got[s], ref[s], stops)
    assert_same_weights(out / stage, tmp_path / "ref" / stage)


def test_stop_flag_second_sigint(monkeypatch):
    """A second Ctrl-C aborts at once (KeyboardInterrupt, no checkpoint), except under torchrun, whose workers
    get one Ctrl-C twice; the handlers are restored afterwards."""
    from spectralar.training.runtime import StopFlag

    before = signal.getsignal(signal.SIGINT)
    with StopFlag(1, torch.device("cpu"), False) as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.agreed() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    with StopFlag(1, torch.device("cpu"), False) as flag:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert flag.agreed() == signal.SIGINT


@pytest.mark.slow
@pytest.mark.parametrize("steps, kills", [(12, (3,)), (40, (3, 15, 27))], ids=["one-kill", "three-kills"])
def test_kill9_during_checkpoint_writes(steps, kills, data, tok_run, tmp_path):
    """kill -9 while a checkpoint is written at every step: the checkpoint is always complete (old or new),
    and resuming gives the uninterrupted run's losses and weights. Slow: by default every point of the write
    sequence is failed in this process (test_checkpoint_write_fails_at_every_step), a crash mid-write is resumed
    exactly (test_crash_mid_write_then_resume_is_exact), and real kill -9s of training processes are in
    tests/test_train_runs.py; this is the real thing at random points of checkpoint writes."""
    args = [*stage_args("tokenizer", data, tok_run, steps), "--eval-every", "1000", "--ckpt-every", "1",
            "--val-size", "0"]
    assert train_main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "k9"
    resume = []
    for after in kills:
        proc = train_proc([*args, "--out", str(out), *resume])
        assert wait_for_step(proc, out, "tokenizer", after), proc.communicate()
        proc.kill()
        proc.communicate()
        meta = read_meta(out / "tokenizer")  # complete: json, weights and train state all readable
        load_weights(out / "tokenizer", meta)
        load_train_state(out / "tokenizer", None, meta)
        assert meta["step"] >= after - 1
        resume = ["--resume"]
    assert train_main([*args, "--out", str(out), "--resume"]) == 0
    assert losses(out, "tokenizer") == losses(tmp_path / "ref", "tokenizer")
    assert_same_weights(out / "tokenizer", tmp_path / "ref" / "tokenizer")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".tokenizer", "tokenizer."))) == [
        f"tokenizer.{steps:07d}"]


# ---- flags checked before any work ---------------------------------------------------------------------

BAD_FLAGS = [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "100000"], "cannot fill one batch"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--stop-at", "9"], "--stop-at"),
    (["--lr", "nan"], "--lr"),
    (["--clip", "-1"], "--clip"),
    (["--eval-every", "0"], "--eval-every"),
    (["--device", "nonsense"], "not a device"),
    (["--device", "cuda:7"], "cuda"),
    (["--set", "width=abc"], "width must be a finite int"),
    (["--set", "mlp_ratio=inf"], "mlp_ratio must be a finite float"),
    (["--set", "nosuch=1"], "expected KEY=VALUE"),
    (["--set", "heads=3"], "not divisible"),
    (["--set", "width=1000000"], "do not fit in"),
    (["--set", "width=0"], "width=0 must be >= 1"),
    (["--resume", "--overwrite"], "pass one of them"),
    (["--batch-size", "x"], "invalid int value"),
    (["--accum", "0"], "--accum must be >= 1"),
    (["--accum", "100"], "cannot fill one batch"),
    (["--set", "ema_decay=1.0"], "ema_decay=1.0 must be in [0, 1)"),
    (["--set", "adv_weight=-1"], "adv_weight=-1.0 must be >= 0"),
]


@pytest.mark.parametrize("flags, match", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_fail_before_work(flags, match, data, tmp_path, capsys, monkeypatch):
    """One-line error, exit 2, nothing trained or written."""
    if flags[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    import spectralar.training.stages as stages

    def no_model(*a, **k):
        raise AssertionError("a model was built before the flags were checked")

    for name in ("build_tokenizer", "PatchDiscriminator", "adamw"):
        monkeypatch.setattr(stages, name, no_model)
    out = tmp_path / "run"
    argv = ["tokenizer", "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "16", *FAST]
    try:
        rc = train_main(argv + flags)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "tokenizer").exists()


@pytest.mark.parametrize("where", ["/proc/spectralar-nope", "FILE", "FILE/sub"])
def test_unwritable_out_fails_before_work(where, data, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    out = where.replace("FILE", str(f))
    assert train_main(["tokenizer", "--data", str(data), "--out", out, *FAST]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_malformed_checkpoint_config_fails_before_work(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["tokenizer", "--data", str(data), "--out", str(out), "--batch-size", "16", "--val-size", "0", *FAST]
    assert train_main([*args, "--steps", "2"]) == 0
    cfg = out / "tokenizer" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["config"]["width"] = "32"  # a string where an int belongs
    cfg.write_text(json.dumps(meta))
    capsys.readouterr()
    assert train_main([*args, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and len(err.strip().splitlines()) == 1


# ---- DDP: 2 Gloo processes ----------------------------------------------------------------------------

def _torchrun(dump, argv, signal_after=None, out=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(dump), *argv, "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if signal_after is not None:
        assert wait_for_step(proc, out, "tokenizer", signal_after), proc.communicate()
        proc.send_signal(signal.SIGINT)  # to torchrun, which passes it to the workers
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _dumps(dump, prefix=""):
    """{step: (rank 0 params, rank 1 params)} written by the workers at every checkpoint."""
    found = {}
    for f in dump.glob(f"{prefix}rank0-step*.safetensors"):
        step = int(f.stem.split("step")[1])
        found[step] = (load_file(str(f)), load_file(str(dump / f"{prefix}rank1-step{step}.safetensors")))
    return found


def _assert_replicas_equal(dump, prefix=""):
    found = _dumps(dump, prefix)
    assert found
    for step, (a, b) in found.items():
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k, (a[k] - b[k]).abs().max().item())
    return found


@pytest.mark.slow
def test_ddp_tokenizer_replicas_resume_and_one_process_match(data, tmp_path):
    """2 processes x 8 = 1 process x 16: replicas identical at every checkpoint, logged losses equal to the
    one-process run's (before the first dead-code restart), SIGINT to torchrun stops both ranks at one step,
    and the resumed 2-process run (a restart after the resume) equals the uninterrupted one bit for bit.
    Slow (three torchrun launches); by default DDP is covered by the generator's and the adversarial runs."""
    steps = 30
    base = ["tokenizer", "--data", str(data), "--steps", str(steps), "--val-size", "16", "--eval-every", "8",
            "--ckpt-every", "10", *FAST]
    one = tmp_path / "one"
    assert train_main([*base, "--batch-size", "16", "--out", str(one), "--stop-at", "10",
                       "--set", "restart_every=12"]) == 0
    two = [*base, "--batch-size", "8", "--set", "restart_every=12"]
    rc, _, err = _torchrun(tmp_path / "dA", [*two, "--out", str(tmp_path / "A")])
    assert rc == 0, err[-3000:]
    out = tmp_path / "B"
    rc, _, err = _torchrun(tmp_path / "dB", [*two, "--out", str(out)], signal_after=2, out=out)
    stop = read_meta(out / "tokenizer")["step"]
    assert rc != 0 and 2 <= stop < steps, err[-3000:]
    rc, _, err = _torchrun(tmp_path / "dC", [*base, "--batch-size", "8", "--out", str(out), "--resume"])
    assert rc == 0, err[-3000:]
    a = _assert_replicas_equal(tmp_path / "dA")
    b = _assert_replicas_equal(tmp_path / "dB")
    c = _assert_replicas_equal(tmp_path / "dC")
    assert stop in b and steps in a and steps in c
    for k in a[steps][0]:
        assert torch.equal(a[steps][0][k], c[steps][0][k]), k
    assert losses(out, "tokenizer") == losses(tmp_path / "A", "tokenizer")
    l1, l2 = losses(one, "tokenizer"), losses(tmp_path / "A", "tokenizer")
    for s in range(1, 11):
        assert abs(l1[s] - l2[s]) <= 1e-5 * abs(l1[s]), (s, l1[s], l2[s])
    w1, w2 = weights(one / "tokenizer"), a[10][0]
    for k in w2:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), (k, (w1[k] - w2[k]).abs().max().item())


def test_ddp_generator_matches_one_process(data, tok_run, tmp_path):
    """The generator stage used to call ddp.module.loss, bypassing DDP: no all-reduce, the replicas drifted."""
    base = ["generator", "--data", str(data), "--steps", "6", "--val-size", "0", "--tokenizer",
            str(tok_run / "tokenizer"), "--set", "class_dropout=0.5", *FAST]
    assert train_main([*base, "--batch-size", "16", "--out", str(tmp_path / "one")]) == 0
    rc, _, err = _torchrun(tmp_path / "d", [*base, "--batch-size", "8", "--out", str(tmp_path / "two")])
    assert rc == 0, err[-3000:]
    found = _assert_replicas_equal(tmp_path / "d")
    w1, w2 = weights(tmp_path / "one" / "generator"), found[6][0]
    for k in w2:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), (k, (w1[k] - w2[k]).abs().max().item())
    l1, l2 = losses(tmp_path / "one", "generator"), losses(tmp_path / "two", "generator")
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-5 * abs(l1[s]), (s, l1[s], l2[s])


@pytest.mark.parametrize("adaptive", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fixed", "adaptive"])
def test_ddp_adversarial_ema_accum(adaptive, data, tmp_path):
    """2 processes x 4 images x 2 micro-steps (no_sync on the first) = 1 process x 16 images: the tokenizer and
    the discriminator (each under its own DDP) stay bitwise equal across the replicas, and the trained, EMA and
    discriminator weights match the one-process run. With the adaptive weight (per-rank gradient norms inside
    the DDP forward) the replicas stay in sync too."""
    base = ["tokenizer", "--data", str(data), "--steps", "4", "--val-size", "0", "--ckpt-every", "2",
            "--set", "adv_weight=0.5", "--set", "adv_start=1", "--set", "ema_decay=0.9", "--set", "restart_every=0",
            *FAST]
    assert train_main([*base, "--batch-size", "16", "--out", str(tmp_path / "one")]) == 0
    two = [*base, "--batch-size", "4", "--accum", "2"]
    rc, _, err = _torchrun(tmp_path / "d", [*two, "--out", str(tmp_path / "two")])
    assert rc == 0, err[-3000:]
    assert sorted(_assert_replicas_equal(tmp_path / "d")) == [2, 4]
    assert sorted(_assert_replicas_equal(tmp_path / "d", "disc-")) == [2, 4]
    one, got = tmp_path / "one" / "tokenizer", tmp_path / "two" / "tokenizer"
    for ema in (False, True):
        w1, w2 = load_weights(one, ema=ema), load_weights(got, ema=ema)
        for k in w1:
            if k.startswith("quantizer.") and k != "quantizer.codebook":  # per-rank code usage buffers
                continue
            assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), (ema, k, (w1[k] - w2[k]).abs().max().item())
    d1, d2 = (load_file(str(p / "train.safetensors")) for p in (one, got))
    disc = [k for k in d1 if k.startswith("disc.")]
    assert disc
    for k in disc:
        assert torch.allclose(d1[k], d2[k], rtol=1e-4, atol=1e-6), (k, (d1[k] - d2[k]).abs().max().item())
    l1, l2 = losses(tmp_path / "one", "tokenizer"), losses(tmp_path / "two", "tokenizer")
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-5 * abs(l1[s]), (s, l1[s], l2[s])
    if adaptive:
        rc, _, err = _torchrun(tmp_path / "d2", [*two, "--set", "adv_adaptive=true", "--out", str(tmp_path / "ada")])
        assert rc == 0, err[-3000:]
        _assert_replicas_equal(tmp_path / "d2")
        _assert_replicas_equal(tmp_path / "d2", "disc-")


def _worker():
    """torchrun worker: train with the given flags, dumping this rank's parameters at every checkpoint (the
    discriminator's to disc-rank*, when there is one)."""
    import spectralar.train as train
    import spectralar.training.loop as training

    dump, argv = Path(sys.argv[1]), sys.argv[2:]
    dump.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ["RANK"])
    check = training.check_replicas

    def check_and_dump(model, step):
        prefix = "disc-" if type(model).__name__ == "PatchDiscriminator" else ""
        save_file({k: v.detach().cpu().contiguous() for k, v in model.named_parameters()},
                  str(dump / f"{prefix}rank{rank}-step{step}.safetensors"))
        check(model, step)

    training.check_replicas = check_and_dump
    sys.exit(train.main(argv))


if __name__ == "__main__":
    _worker()
