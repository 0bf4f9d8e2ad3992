"""Checkpoints, exports and model pairs under the faults users met: an export aimed at its own run folder, a
tokenizer retrained under its generator, weights that are integers, NaN or beyond fp16, an unknown format version,
a full disk, and files other users cannot read. Real run folders made by `python -m spectralar.train` (micro
preset, fake Fashion-MNIST), real second processes where the user had one."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from microrun import micro_run
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import spectralar.checkpoint as ckmod
from spectralar import export, generate, reconstruct
from spectralar.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    fingerprint,
    load_weights,
    read_meta,
    recover,
    save_checkpoint,
)
from spectralar.pretrained import load_pretrained
from spectralar.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--preset", "micro", "--threads", "1", "--val-size", "0", "--batch-size", "16", "--log-every", "1"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"spectralar.{module}", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=600)


def call(main, argv, capsys):
    """(exit code, stderr lines) of an in-process CLI run."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def train(*argv) -> int:
    return train_main([str(a) for a in argv])


def snapshot(folder) -> dict:
    """Every entry under `folder`: link targets and file contents (hashed)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A run folder as training leaves it: tokenizer (4 steps) and generator (2 steps), versioned links."""
    out = tmp_path_factory.mktemp("trained") / "run"
    for stage, steps in (("tokenizer", 4), ("generator", 2)):
        assert train(stage, "--data", data, "--out", out, "--steps", steps, *FAST) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run folder (links kept as links)."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


# ---- D2: an export never touches a run folder ------------------------------------------------------------

def test_export_into_its_own_run_is_refused_and_the_run_resumes(run, data):
    """`export run run` replaced run/tokenizer by an fp16 copy, died on rmtree of the link, and the next resume
    deleted the fp32 checkpoint as a leftover. Now the export is refused before anything is written."""
    before = snapshot(run)
    r = cli("export", run, run)
    assert r.returncode == 2 and "is a training run folder" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert snapshot(run) == before
    assert train("generator", "--data", data, "--out", run, "--steps", 3, "--resume", *FAST) == 0
    assert read_meta(run / "generator")["step"] == 3


@pytest.mark.parametrize("dest, needle", [("{run}/shipped", "lies inside"), ("{parent}", "holds the training run")])
def test_export_inside_or_around_a_run_is_refused(dest, needle, run, capsys):
    before = snapshot(run)
    code, err = call(export.main, [run, dest.format(run=run, parent=run.parent)], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert snapshot(run) == before


def test_export_refuses_a_locked_folder(run, tmp_path):
    """A folder a training run holds the lock of (and nothing else yet) is a run folder too."""
    from spectralar.export import check_destination

    locked = tmp_path / "fresh"
    locked.mkdir()
    (locked / ".spectralar.lock").write_text('{"pid": 1}')
    with pytest.raises(ValueError, match="training run folder .*spectralar.lock"):
        check_destination(run, locked)
    (locked / "notes_log.jsonl").write_text("")  # any other log is not training's
    (locked / ".spectralar.lock").unlink()
    check_destination(run, locked)


def test_export_ships_a_pair_other_users_can_read(run, tmp_path):
    """DEST outside any run: a loadable weights-only pair, its generator recording the exported tokenizer's hash,
    files with the permissions the umask gives (safetensors wrote every weights file 0600)."""
    old = os.umask(0o022)
    try:
        r = cli("export", run, tmp_path / "shipped", "--dtype", "fp16")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "shipped"
    for f in dest.rglob("*"):
        want = 0o755 if f.is_dir() else 0o644
        assert f.stat().st_mode & 0o777 == want, (f, oct(f.stat().st_mode))
    meta = read_meta(dest / "generator")
    assert meta["train"]["tokenizer_sha1"] == fingerprint(dest / "tokenizer") != fingerprint(run / "tokenizer")
    assert "optimizer" not in meta["train"] and meta["train"]["exported"]["dtype"] == "fp16"
    tok, gen = load_pretrained(dest)
    assert next(tok.parameters()).dtype == torch.float32
    assert gen.generate(torch.tensor([0, 1]), temperature=0).shape == (2, gen.config.num_tokens)


@pytest.mark.parametrize("umask", [0o077, 0o027])
def test_checkpoint_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck", "tokenizer", torch.nn.Linear(3, 2), {}, save_rng=True)
    finally:
        os.umask(old)
    for f in (tmp_path / "ck").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_recover_never_deletes_a_checkpoint_nothing_supersedes(run):
    """What the old export left (run/tokenizer a weights-only plain folder beside the fp32 tokenizer.0000004):
    recover, which training runs first, used to delete tokenizer.0000004 as a leftover."""
    data_dir = run / os.readlink(run / "tokenizer")
    os.unlink(run / "tokenizer")
    save_checkpoint(run / "tokenizer", "tokenizer", torch.nn.Linear(3, 2), {}, step=4)  # weights only
    assert recover(run / "tokenizer") == []
    assert data_dir.is_dir() and "optimizer" in read_meta(data_dir)["train"]


def test_recover_gives_back_a_plain_checkpoint_moved_aside(tmp_path):
    """A plain write stopped between its two renames leaves the old checkpoint as .NAME.old-PID and no NAME."""
    ck = tmp_path / "ck"
    save_checkpoint(ck, "classifier", torch.nn.Linear(3, 2), {"v": 1}, step=7)
    dead = 2**22 + 4321  # above the default pid_max: no such process
    os.rename(ck, tmp_path / f".ck.old-{dead}")
    assert recover(ck) == []
    assert read_meta(ck)["step"] == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_plain_write_refuses_a_run_link(run):
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="training run's checkpoint"):
        save_checkpoint(run / "tokenizer", "tokenizer", torch.nn.Linear(3, 2), {})
    assert snapshot(run) == before


# ---- D29: a generator with another tokenizer ------------------------------------------------------------

def test_generate_refuses_a_retrained_tokenizer(run, data, tmp_path, capsys):
    """The tokenizer retrained with --overwrite under its generator: samples were garbage with exit 0."""
    assert train("tokenizer", "--data", data, "--out", run, "--steps", 4, "--seed", 1, "--overwrite",
                       *FAST) == 0
    capsys.readouterr()
    code, err = call(generate.main, ["--checkpoint", run, "--out", tmp_path / "s.png", "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1, err
    assert str(run / "generator") in err[0] and str(run / "tokenizer") in err[0] and "--overwrite" in err[0]
    assert not (tmp_path / "s.png").exists()
    r = cli("export", run, tmp_path / "shipped")  # an export of the mismatched pair is refused too
    assert r.returncode == 2 and "another" in r.stderr and not (tmp_path / "shipped").exists()


def test_exports_written_before_the_hash_was_kept_still_load(run, tmp_path):
    """An older export recorded the trained tokenizer's hash next to the cast tokenizer: it cannot be checked, and
    loads as before (the bundled model is one); the same pair in a run folder is refused."""
    assert export.main([str(run), str(tmp_path / "old")]) == 0
    for kind in ("tokenizer", "generator"):
        f = tmp_path / "old" / kind / "config.json"
        meta = json.loads(f.read_text())
        del meta["train"]["exported"]
        if kind == "generator":
            meta["train"]["tokenizer_sha1"] = fingerprint(run / "tokenizer")
        f.write_text(json.dumps(meta))
    load_pretrained(tmp_path / "old")
    (tmp_path / "old" / "generator_log.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="another"):
        load_pretrained(tmp_path / "old")


# ---- D16 / D25: weights and configs validated on load; fp16 refuses what it cannot hold -------------------

def _rewrite(ckpt, change):
    f = Path(ckpt) / "model.safetensors"
    w = load_file(str(f))
    change(w)
    save_file(w, str(f))


def _int32_head(run):
    _rewrite(run / "generator", lambda w: w.__setitem__("head.weight", w["head.weight"].to(torch.int32)))


def _nan_tokenizer(run):
    _rewrite(run / "tokenizer", lambda w: w.update({k: torch.full_like(v, float("nan")) for k, v in w.items()
                                                    if v.is_floating_point()}))


def _version_2(run):
    f = run / "tokenizer" / "config.json"
    f.write_text(f.read_text().replace('"version": 1', '"version": 2', 1))


@pytest.mark.parametrize("damage, needle", [
    (_int32_head, "head.weight is stored as int32, the model needs float32"),
    (_nan_tokenizer, "non-finite value(s) (NaN or inf)"),
    (_version_2, "format version 2 is unknown (this spectralar reads 1); it was written by a newer spectralar"),
], ids=["int32-generator", "nan-tokenizer", "version-2"])
def test_bad_weights_and_versions_fail_in_one_line(damage, needle, tmp_path, capsys):
    run = micro_run(tmp_path / "micro")  # no recorded tokenizer hash: the weights themselves are judged
    damage(run)
    code, err = call(generate.main, ["--checkpoint", run, "--out", tmp_path / "s.png", "--device", "cpu",
                                     "--num-per-class", 1], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "s.png").exists()


def test_reconstruct_refuses_nan_tokenizer_weights(run, tmp_path, capsys):
    from PIL import Image

    _nan_tokenizer(run)
    Image.new("L", (28, 28), 90).save(tmp_path / "a.png")
    code, err = call(reconstruct.main, [tmp_path / "a.png", "--checkpoint", run, "--out", tmp_path / "r.png",
                                        "--device", "cpu"], capsys)
    assert code == 2 and "non-finite" in err[-1] and not (tmp_path / "r.png").exists(), err


def test_fp16_export_refuses_values_beyond_its_range(run, tmp_path):
    _rewrite(run / "generator", lambda w: w["head.weight"].view(-1).__setitem__(0, 1e6))
    r = cli("export", run, tmp_path / "fp16", "--dtype", "fp16")
    assert r.returncode == 2 and "head.weight holds 1e+06" in r.stderr and "65504" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "fp16").exists()
    assert export.main([str(run), str(tmp_path / "fp32"), "--dtype", "fp32"]) == 0
    assert load_weights(tmp_path / "fp32" / "generator")["head.weight"].view(-1)[0] == 1e6


def test_save_dtype_fp16_refuses_values_beyond_its_range(tmp_path):
    """What training's --save-dtype fp16 calls: nothing is written."""
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.bias[1] = -7e4
    with pytest.raises(CheckpointError, match=r"bias holds 70000.*stored as inf"):
        save_checkpoint(tmp_path / "ck", "tokenizer", m, {}, dtype=torch.float16, versioned=True)
    assert list(tmp_path.iterdir()) == []


# ---- D13: a full disk ----------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                                   'StorageFull, message: "No space left on device" })')],
                         ids=["OSError", "SafetensorError"])
def test_disk_full_mid_write_keeps_the_previous_checkpoint(error, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    old = torch.nn.Linear(3, 2)
    save_checkpoint(ck, "tokenizer", old, {}, step=1, versioned=True)
    real = ckmod.save_file

    def full_disk(tensors, filename):
        real(tensors, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:40])  # what fitted
        raise error

    monkeypatch.setattr(ckmod, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError, match="no space left on device; the previous checkpoint"):
        save_checkpoint(ck, "tokenizer", torch.nn.Linear(3, 2), {}, step=2, versioned=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ck.0000001"]  # no temporary folder left
    assert torch.equal(load_weights(ck)["weight"], old.weight.detach())


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                                  capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_training_on_a_full_disk_stops_in_one_line(tiny_disk, data):
    """A real full file system: the resume's checkpoint does not fit. One line, exit 2, no temporary folder, the
    previous checkpoint intact (it was a SafetensorError traceback with a .tokenizer.tmp-PID folder left)."""
    out = tiny_disk / "run"
    args = ["tokenizer", "--data", data, "--out", out, *FAST]
    assert train(*args, "--steps", 2) == 0
    st = os.statvfs(tiny_disk)
    with open(tiny_disk / "filler", "wb") as f:  # leave 64 KiB: room for logs, not for a checkpoint
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))
    r = cli("train", *args, "--steps", 4, "--resume")
    assert r.returncode == 2 and "no space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("python -m spectralar.train: error: cannot write")
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert read_meta(out / "tokenizer")["step"] == 2 and load_weights(out / "tokenizer")
