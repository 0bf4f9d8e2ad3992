"""A run folder as users hit it: one owner at a time, nothing of an old run lost or mixed with a new one, caches keyed
by what they were computed from, validation never on training images, resume refusing what is no longer exact and
accepting what is, damaged checkpoints and bad values refused in one line, Ctrl-C answered truthfully."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import fake_fmnist
from microrun import child_env, log_rows, train_proc, wait_for_step
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import spectralar.training.stages as stages
from spectralar.checkpoint import read_meta
from spectralar.data import DataError, collate, fashion_mnist, make_dataset, training_data
from spectralar.pretrained import load_model
from spectralar.train import main as _train_main
from spectralar.training import lock_holder

FAST = ["--preset", "micro", "--log-every", "1", "--threads", "1", "--batch-size", "16"]


def train_main(argv):
    """`python -m spectralar.train ARGV` in this process."""
    return _train_main([str(a) for a in argv])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def tok(data, tmp_path_factory):
    """A micro tokenizer checkpoint (1 step)."""
    out = tmp_path_factory.mktemp("tok")
    assert train_main(["tokenizer", "--data", data, "--out", out, "--steps", "1", "--val-size", "0", *FAST]) == 0
    return out / "tokenizer"


def tok_args(data, out, *extra):
    return ["tokenizer", "--data", str(data), "--out", str(out), "--val-size", "0", *FAST, *map(str, extra)]


def train_losses(out, stage="tokenizer"):
    return {r["step"]: r["loss"] for r in log_rows(out, stage) if r["split"] == "train"}


def image_folder(root, per_class=12, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(root / c / f"{i:03d}.png")
    return root


# ---- D11: one process owns a run folder ---------------------------------------------------------------------------

def test_one_process_owns_a_run_folder(data, tmp_path, capsys):
    """Two `train tokenizer --out X` at once used to interleave their logs and delete each other's checkpoint
    files. The second now stops at once, naming the first and touching nothing; when the first dies (kill -9), the
    kernel drops its lock and the next run says it takes over."""
    out = tmp_path / "run"
    first = train_proc(tok_args(data, out, "--steps", "100000", "--ckpt-every", "100000"))
    try:
        assert wait_for_step(first, out, "tokenizer", 1), first.communicate()
        holder = lock_holder(out)
        assert holder and holder["pid"] == first.pid and "spectralar.train" in holder["command"]
        before = sorted(p.name for p in out.iterdir())
        assert train_main(tok_args(data, out, "--steps", "3", "--overwrite")) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {first.pid}" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        first.kill()
        first.communicate()
    assert lock_holder(out) is None
    assert train_main(tok_args(data, out, "--steps", "2")) == 0
    assert f"taking over the lock of pid {first.pid}" in capsys.readouterr().out
    assert sorted(train_losses(out)) == [1, 2]  # the killed run never checkpointed: none of its rows
    assert lock_holder(out) is None


# ---- D12: --overwrite destroys nothing before the new run has a checkpoint ---------------------------------------

def test_overwrite_killed_before_its_first_checkpoint_keeps_the_old_run(data, tmp_path):
    """The new run's log used to replace the old one at start: killed before its first checkpoint, the folder paired
    the old checkpoint with the new log, and a resume kept the new run's rows as the old run's."""
    out = tmp_path / "run"
    assert train_main(tok_args(data, out, "--steps", "4", "--val-size", "16", "--eval-every", "2")) == 0
    old_log = (out / "tokenizer_log.jsonl").read_text()
    old_pictures = sorted(p.name for p in (out / "tokenizer_samples").iterdir())
    new = train_proc(tok_args(data, out, "--steps", "100000", "--ckpt-every", "100000", "--overwrite", "--seed", "7",
                              "--val-size", "16", "--eval-every", "2"))
    assert wait_for_step(new, out, "tokenizer", 3, pending=True), new.communicate()
    new.kill()
    new.communicate()
    assert (out / "tokenizer_log.jsonl").read_text() == old_log
    assert sorted(p.name for p in (out / "tokenizer_samples").iterdir()) == old_pictures
    assert read_meta(out / "tokenizer")["step"] == 4
    ref = train_losses(out)
    assert train_main(tok_args(data, out, "--steps", "6", "--resume")) == 0
    got = train_losses(out)
    assert sorted(got) == list(range(1, 7)) and all(got[s] == ref[s] for s in range(1, 5))
    assert not list(out.glob(".tokenizer_log.*")) and not list(out.glob(".tokenizer_samples.*"))


def test_overwrite_replaces_log_and_pictures_at_its_first_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    assert train_main(tok_args(data, out, "--steps", "4", "--val-size", "16", "--eval-every", "4")) == 0
    assert train_main(tok_args(data, out, "--steps", "2", "--overwrite", "--seed", "3")) == 0
    assert sorted(train_losses(out)) == [1, 2] and not (out / "tokenizer_samples").exists()  # val-size 0: none


# ---- D1 / D24: the generator's code cache ----------------------------------------------------------------------

def _cached_codes(out):
    """(codes, labels, key) of a run's code cache."""
    with safe_open(str(out / "codes_train.safetensors"), framework="pt") as f:
        return f.get_tensor("codes"), f.get_tensor("labels"), f.metadata()


def test_code_cache_follows_the_data(tok, tmp_path):
    """Generator on data A, then --overwrite on data B of the same size into the same folder: the cache (keyed by
    the tokenizer and the image count) used to serve A's codes, so the generator trained on A while recording B."""
    a, b = fake_fmnist(tmp_path / "A", seed=1), fake_fmnist(tmp_path / "B", seed=2)
    out = tmp_path / "run"
    base = ["generator", "--out", out, "--tokenizer", tok, "--steps", "1", "--val-size", "0", *FAST]
    assert train_main([*base, "--data", a]) == 0
    assert train_main([*base, "--data", b, "--overwrite"]) == 0
    codes, labels, key = _cached_codes(out)
    x, y = collate(fashion_mnist("train", root=b), list(range(256)))
    assert torch.equal(labels, y) and torch.equal(codes.long(), load_model(tok, "tokenizer").encode(x))
    assert key["split"] == "train" and len(key["data"]) == 40 and len(key["tokenizer"]) == 40


def test_codebook_beyond_int16(data, tmp_path):
    """--set codebook_size=40000: the int16 cache wrapped codes negative and the generator died with an IndexError
    after encoding; the cache's dtype now holds every code."""
    out = tmp_path / "run"
    assert train_main(tok_args(data, out, "--steps", "1", "--set", "codebook_size=40000")) == 0
    assert train_main(["generator", "--data", data, "--out", out, "--steps", "1", "--val-size", "0", *FAST]) == 0
    codes, _, _ = _cached_codes(out)
    x, _ = collate(fashion_mnist("train", root=data), list(range(256)))
    want = load_model(out / "tokenizer", "tokenizer").encode(x)
    assert int(want.max()) > 32767  # the case of the bug is exercised
    assert torch.equal(codes.long(), want) and codes.dtype == torch.int32


# ---- D8 / D7: validation data ----------------------------------------------------------------------------------

def test_plain_folder_validates_on_held_out_images(tmp_path, capsys):
    """A plain image folder used to validate on its own training images."""
    root = image_folder(tmp_path / "imgs", per_class=12)
    out = tmp_path / "run"
    assert train_main(["tokenizer", "--data", root, "--out", out, "--steps", "1", "--val-size", "5", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "validation: 3 images held out of the 36" in printed and "33 training items" in printed
    d = training_data(str(root), 32, 1, val_size=5)
    assert len(d.val) == 3 and not {p for p, _ in d.val.files} & {p for p, _ in d.train.files}
    assert training_data(str(root), 32, 1, val_size=5).val.files == d.val.files  # the same images every run


def test_train_val_layout_uses_its_val_folder(tmp_path, capsys):
    """ROOT/train + ROOT/val used to validate on ImageFolder(ROOT): classes ['train', 'val'], wrong labels."""
    image_folder(tmp_path / "imgs" / "train", per_class=8)
    image_folder(tmp_path / "imgs" / "val", per_class=2, seed=1)
    root, out = tmp_path / "imgs", tmp_path / "run"
    assert train_main(["tokenizer", "--data", root, "--out", out, "--steps", "1", "--val-size", "100", *FAST]) == 0
    assert f"validation: {root / 'val'}" in capsys.readouterr().out
    d = training_data(str(root), 32, 1, val_size=100)
    assert d.val.classes == d.train.classes == ["a", "b", "c"] and len(d.val) == 6 and len(d.train) == 24
    with pytest.raises(DataError, match="has a train/ folder but no test/"):  # evaluate --split test used ROOT
        make_dataset(str(root), "test", 32, 1)


def test_skip_bad_images_also_in_validation_and_counted(tmp_path, capsys):
    """--skip-bad-images skipped in training only: validation loaded the same folder without skipping and died;
    the skipped count was never printed."""
    root = image_folder(tmp_path / "imgs", per_class=12)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "run"
    assert train_main(["tokenizer", "--data", root, "--out", out, "--steps", "1", "--val-size", "1000",
                       "--eval-every", "1", "--skip-bad-images", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in printed and "broken.jpg" in printed


# ---- D18 / D19: what a resume accepts ------------------------------------------------------------------------------

def test_resume_refuses_other_data_or_preset(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(tok_args(data, out, "--steps", "4", "--stop-at", "2")) == 0
    other = fake_fmnist(tmp_path / "other", seed=5)
    capsys.readouterr()
    assert train_main(tok_args(other, out, "--steps", "4", "--resume")) == 2
    assert "trained on other data than --data" in capsys.readouterr().err
    argv = tok_args(data, out, "--steps", "4", "--resume")
    argv[argv.index("micro")] = "fmnist"
    assert train_main(argv) == 2
    assert "trained with --preset micro, this run has fmnist" in capsys.readouterr().err
    assert read_meta(out / "tokenizer")["step"] == 2


def test_resume_accepts_settings_equal_to_the_checkpoints(data, tmp_path, capsys):
    """docs/training.md's tokenizer command (with --mapping gain) plus --resume was refused."""
    out = tmp_path / "run"
    cmd = tok_args(data, out, "--mapping", "gain", "--set", "width=32", "--set", "ema_decay=0.5", "--steps", "4")
    assert train_main([*cmd, "--stop-at", "2"]) == 0
    assert train_main([*cmd, "--resume"]) == 0
    assert read_meta(out / "tokenizer")["step"] == 4
    assert train_main(tok_args(data, out, "--mapping", "power", "--steps", "6", "--resume")) == 2
    assert "mapping='power' (it has 'gain')" in capsys.readouterr().err


# ---- D17: a damaged resume checkpoint ------------------------------------------------------------------------------

def _config(key, value):
    def change(ck):
        meta = json.loads((ck / "config.json").read_text())
        where, _, name = key.rpartition(".")
        target = meta["train"] if where == "train" else meta
        if value is None:
            del target[name]
        else:
            target[name] = value
        (ck / "config.json").write_text(json.dumps(meta))
    return change


def _tensors(change):
    def apply(ck):
        t = load_file(str(ck / "train.safetensors"))
        change(t)
        save_file(t, str(ck / "train.safetensors"))
    return apply


def _reshape_first_moment(t):
    k = next(k for k in t if k.endswith(".exp_avg") and t[k].dim() == 2)
    t[k] = t[k][:, :1].contiguous()


DAMAGE = [("train.epoch missing", _config("train.epoch", None), "lacks train.epoch"),
          ("step abc", _config("step", "abc"), "step must be an integer >= 0, got 'abc'"),
          ("step 10.5", _config("step", 10.5), "got 10.5"),
          ("step -5", _config("step", -5), "got -5"),
          ("batch -3", _config("train.batch", -3), "train.batch must be an integer >= 0, got -3"),
          ("batch beyond the epoch", _config("train.batch", 10**6), "beyond the"),
          ("optimizer tensor shape", _tensors(_reshape_first_moment), "for a parameter of shape"),
          ("rng truncated", _tensors(lambda t: t.__setitem__("rng.cpu", t["rng.cpu"][:100].clone())),
           "random state"),
          ("rng missing", _tensors(lambda t: t.pop("rng.cpu")), "rng.cpu is missing")]


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    assert train_main(tok_args(data, out, "--steps", "4", "--stop-at", "2")) == 0
    return out


@pytest.mark.parametrize("what, damage, needle", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_resume_checkpoint_is_one_line(what, damage, needle, data, stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out, symlinks=True)
    damage(out / "tokenizer")
    capsys.readouterr()
    assert train_main(tok_args(data, out, "--steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


# ---- D30, D15, D20 -------------------------------------------------------------------------------------------------

def test_partial_log_interval_counts_its_own_steps(data, tmp_path):
    """Rows after a partial interval (the last step, the first after a resume) used to divide `log_every` steps by
    the interval's time: 1179 steps/s for a real 46."""
    out = tmp_path / "run"
    assert train_main(tok_args(data, out, "--steps", "7", "--log-every", "4", "--stop-at", "3")) == 0
    assert train_main(tok_args(data, out, "--steps", "7", "--log-every", "4", "--resume")) == 0
    rows = [r for r in log_rows(out, "tokenizer") if r["split"] == "train"]
    assert [r["step"] for r in rows] == [4, 7]  # 1 step after the resume, then 3 to the end
    for r in rows:  # items per step = the batch, whatever the interval's length
        assert r["items_per_s"] / r["steps_per_s"] == pytest.approx(16, rel=1e-6), r


def test_a_run_that_fails_at_start_leaves_no_folder(data, tmp_path, capsys):
    """A typo in --data used to leave OUT holding only the lock file, which export then refused as a run folder;
    a folder that existed before keeps what it held."""
    out = tmp_path / "run"
    assert train_main(tok_args(tmp_path / "no-such-data", out)) == 2
    assert "no such directory" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_main(tok_args(tmp_path / "no-such-data", out)) == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert train_main(tok_args(data, tmp_path / "fresh", "--steps", 1)) == 0  # a real run keeps its folder
    assert (tmp_path / "fresh" / "tokenizer").is_dir()


def test_huge_seed_fails_before_work(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(stages, "build_tokenizer", None)  # nothing may be built
    assert train_main(tok_args(data, tmp_path / "run", "--seed", str(10**20))) == 2
    err = capsys.readouterr().err
    assert "--seed must be an integer in [0, 4294967295]" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_during_startup_says_what_happened(data, tmp_path, capsys, monkeypatch):
    """A first Ctrl-C during start-up used to say 'aborted by a second Ctrl-C; the last checkpoint written is
    intact' with no checkpoint anywhere."""
    real = stages.training_data

    def ctrl_c_while_loading(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        return real(*a, **k)

    monkeypatch.setattr(stages, "training_data", ctrl_c_while_loading)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    try:
        assert train_main(tok_args(data, tmp_path / "run", "--steps", "2")) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.strip()
    assert "during start-up, before training began; no checkpoint was written" in err and "second" not in err
    assert lock_holder(tmp_path / "run") is None


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    """A Ctrl-C while torch loads ends the command with one line, by SIGINT, whenever it comes. An interrupt
    inside numpy's C initialisation used to be swallowed (the command ran on, exit 0) or to leave numpy
    half-loaded (an ImportError traceback): on this machine around 0.3 s after start."""
    for delay in (0.1, 0.3, 0.6):  # torch takes over a second to import
        proc = subprocess.Popen([sys.executable, "-m", "spectralar.train", "--help"], env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err and proc.returncode in (-signal.SIGINT, 130), (delay, proc.returncode, err)
        assert err == "" or err.strip().endswith("interrupted (Ctrl-C)"), err


def test_generator_help_mentions_the_encoding_phase(capsys):
    with pytest.raises(SystemExit):
        train_main(["generator", "--help"])
    assert "first encodes every training image with the tokenizer" in " ".join(capsys.readouterr().out.split())


# ---- Done-when of the run-folder issue: the documented commands, Ctrl-C, --resume ---------------------------------

def _documented_commands() -> list[list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [line.split()[3:] for line in block.splitlines() if line.startswith("python -m spectralar.train ")]


def _shortened(argv, data, out, steps):
    """A documented command on fake data, with a few small steps."""
    argv = list(argv)
    for flag, value in (("--out", out), ("--steps", steps), ("--batch-size", 16), ("--val-size", 16),
                        ("--eval-every", 2), ("--ckpt-every", 2), ("--threads", 1), ("--log-every", 1)):
        argv[argv.index(flag) + 1] = str(value)
    return [*argv, "--data", str(data)]


def test_documented_commands_resume_after_ctrl_c(data, tmp_path):
    commands = _documented_commands()
    assert [c[0] for c in commands] == ["tokenizer", "generator"]
    out = tmp_path / "runs"
    tok_cmd = _shortened(commands[0], data, out, 3)
    proc = train_proc(tok_cmd)
    assert wait_for_step(proc, out, "tokenizer", 1), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert train_main([*tok_cmd, "--resume"]) == 0
    gen_cmd = _shortened(commands[1], data, out, 2)
    assert train_main([*gen_cmd, "--stop-at", "1"]) == 0
    assert train_main([*gen_cmd, "--resume"]) == 0
    assert read_meta(out / "tokenizer")["step"] == 3 and read_meta(out / "generator")["step"] == 2
