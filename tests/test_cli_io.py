"""What every command line owes a user on a shared machine: --threads with a default that survives a busy core,
one line saying what it used, progress bars on a terminal (and none in a log), and one-line errors for overflowing
guidance, absurd sizes, meaningless probe sizes and an existing --out."""

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from microrun import micro_run

from spectralar import evaluate, experiments, export, generate, reconstruct, train
from spectralar.cli import default_threads
from spectralar.models.config import preset
from spectralar.models.generator import SpectralGPT
from spectralar.sampling import NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
CLIS = {"generate": (generate.main, []), "reconstruct": (reconstruct.main, []), "export": (export.main, []),
        "evaluate reconstruct": (evaluate.main, ["reconstruct"]), "evaluate generate": (evaluate.main, ["generate"]),
        "evaluate train-classifier": (evaluate.main, ["train-classifier"]),
        "experiments truncation": (experiments.main, ["truncation"]),
        "experiments mapping-ablation": (experiments.main, ["mapping-ablation"]),
        "experiments causality-probe": (experiments.main, ["causality-probe"]),
        "train tokenizer": (train.main, ["tokenizer"]), "train generator": (train.main, ["generator"])}


def call(main, argv, capsys):
    """(exit code, stdout, stderr lines) of an in-process CLI run."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_io")
    return fake_fmnist(root / "data", n_train=64, n_test=32), micro_run(root / "run")


# ---- D21: threads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLIS))
def test_every_cli_takes_threads(name, capsys):
    main, sub = CLIS[name]
    code, out, _ = call(main, [*sub, "--help"], capsys)
    assert code == 0 and "--threads" in out and "leave idle" in out


def test_default_threads_leave_a_busy_core_alone(monkeypatch):
    """With another process spinning on a core, the default uses at most the cores left (on this 2-core
    machine, 1 thread: sampling took 11.7-18.5 s with torch's 2 threads instead of 0.93 s with 1)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2 or not os.path.exists("/proc/stat"):
        pytest.skip("needs two cores and /proc/stat")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        n, why = default_threads()
    finally:
        busy.kill()
        busy.wait()
    assert 1 <= n <= cores - 1 and "busy with other work" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "as OMP_NUM_THREADS asks")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cores))  # torchrun: the processes share the cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads()[0] == 1


def test_generate_says_what_it_used(micro, tmp_path, capsys, monkeypatch):
    _, run = micro
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n = torch.get_num_threads()
    try:
        code, _, err = call(generate.main, ["--checkpoint", run, "--out", tmp_path / "s.png", "--device", "cpu",
                                            "--num-per-class", 1], capsys)
        assert code == 0 and len(err) == 1 and err[0].startswith("python -m spectralar.generate: "), err
        used = int(err[0].split(": ")[1].split()[0])
        assert used == torch.get_num_threads() and "CPU thread" in err[0] and "--threads N" in err[0]
        code, _, err = call(generate.main, ["--checkpoint", run, "--out", tmp_path / "s.png", "--device", "cpu",
                                            "--num-per-class", 1, "--threads", 2], capsys)
        assert code == 0 and torch.get_num_threads() == 2 and err == [
            "python -m spectralar.generate: 2 CPU threads (as --threads asked)"]
    finally:
        torch.set_num_threads(n)


# ---- progress bars --------------------------------------------------------------------------------------

def _stderr_of(argv, tty: bool) -> str:
    """Run a CLI in a fresh process with stderr on a pseudo-terminal (tty) or a pipe; its stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    if not tty:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600).stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: 24 x 100
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    p.wait(timeout=600)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("what", ["generate", "evaluate reconstruct"])
def test_progress_bars_on_a_terminal_only(what, micro, tmp_path, capsys):
    """`evaluate reconstruct --num 200` was 84 s of silence. On a terminal a bar moves; in a log there is none."""
    data, run = micro
    main, argv = {"generate": (generate.main, ["--checkpoint", run, "--out", tmp_path / "s.png", "--device", "cpu",
                                               "--num-per-class", 3, "--batch-size", 10]),
                  "evaluate reconstruct": (evaluate.main, ["reconstruct", "--checkpoint", run, "--data", data,
                                                           "--num", 24, "--batch-size", 8, "--out", tmp_path / "ev",
                                                           "--device", "cpu"])}[what]
    desc = {"generate": "sample", "evaluate reconstruct": "reconstruct"}[what]
    shown = _stderr_of([sys.executable, "-m", main.__module__, *map(str, argv)], tty=True)
    assert f"{desc}:" in shown and "%|" in shown and "batch" in shown, shown
    code, _, logged = call(main, argv, capsys)  # stderr captured: not a terminal
    assert code == 0 and len(logged) == 1 and "CPU thread" in logged[0], logged


# ---- D14: non-finite logits ------------------------------------------------------------------------------

def test_overflowing_guidance_is_one_line(tmp_path, capsys):
    """--cfg 1e38 overflows the bundled model's guided logits: the library's message, as the only error line, no
    traceback."""
    code, _, err = call(generate.main, ["--out", tmp_path / "s.png", "--device", "cpu", "--classes", "0",
                                        "--num-per-class", 1, "--cfg", "1e38", "--threads", 1], capsys)
    assert code == 2 and not (tmp_path / "s.png").exists()
    assert err[-1].startswith("python -m spectralar.generate: error: non-finite logits (NaN or inf) at sampling step")
    assert len(err) <= 2 and not any("Traceback" in line for line in err), err  # the threads line, the error


def test_non_finite_error_is_both_kinds():
    gpt = SpectralGPT(preset("generator", "micro")).eval()
    with torch.no_grad():
        gpt.head.weight.fill_(float("nan"))
    for kind in (NonFiniteError, FloatingPointError, RuntimeError):
        with pytest.raises(kind, match="non-finite logits"):
            gpt.generate(torch.tensor([0]), temperature=0)


# ---- D23 / D26: sizes and an existing --out, refused up front -------------------------------------------

def test_train_classifier_refuses_an_existing_checkpoint(micro, tmp_path, capsys):
    data, run = micro
    out = tmp_path / "clf"
    args = ["train-classifier", "--data", data, "--out", out, "--steps", 2, "--batch-size", 16, "--width", 4,
            "--feature-dim", 8, "--device", "cpu", "--threads", 1]
    assert call(evaluate.main, args, capsys)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, _, err = call(evaluate.main, [*args, "--seed", 1], capsys)
    assert code == 2 and len(err) == 1 and "already holds a classifier checkpoint (step 2)" in err[0], err
    assert "--overwrite" in err[0] and (out / "model.safetensors").read_bytes() == before
    assert call(evaluate.main, [*args, "--seed", 1, "--overwrite"], capsys)[0] == 0
    assert (out / "model.safetensors").read_bytes() != before
    notes = tmp_path / "notes"  # a folder of other files: writing a checkpoint would replace it whole
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        code, _, err = call(evaluate.main, [*args[:4], notes, *args[5:], *extra], capsys)
        assert code == 2 and "not a checkpoint" in err[0] and (notes / "todo.txt").read_text() == "mine", err
    code, out_text, _ = call(evaluate.main, ["--help"], capsys)
    assert "spectralar/pretrained" not in out_text  # the help's example no longer writes into the bundled model


def test_train_classifier_refuses_an_absurd_width(micro, tmp_path, capsys):
    """--width 100000000 tried a 720 PB allocation; now the size is judged from the config first."""
    data, _ = micro
    t = time.perf_counter()
    code, _, err = call(evaluate.main, ["train-classifier", "--data", data, "--out", tmp_path / "c", "--width",
                                        100000000, "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "--width 100000000" in err[0] and "do not fit" in err[0], err
    assert time.perf_counter() - t < 60 and not (tmp_path / "c").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--num-train", "1"], "--num-train 1: the probe needs at least 25 training images"),
    (["--num-train", "5"], "--num-train 5: the probe needs at least 25"),
    (["--num-test", "1"], "--num-test 1: R^2 needs at least 10"),
    (["--alphas", "nan"], "--alphas 'nan': expected comma-separated finite numbers > 0"),
    (["--alphas", "1,inf"], "finite numbers > 0"),
    (["--alphas", "-1"], "finite numbers > 0"),
])
def test_causality_probe_refuses_meaningless_sizes(flags, needle, micro, tmp_path, capsys, monkeypatch):
    """--num-train 1 was a LinAlgError, --num-train 5 printed R^2 = -2.8e27, --alphas nan ran."""
    data, run = micro

    def no_work(*a, **k):
        raise AssertionError("the probe loaded data before checking its flags")

    import spectralar.evaluation.experiments as library

    monkeypatch.setattr(library, "load_subset", no_work)
    code, _, err = call(experiments.main, ["causality-probe", "--checkpoint", run, "--data", data, "--out",
                                           tmp_path, "--device", "cpu", "--num-test", 20, *flags], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_causality_probe_at_its_minimum_size_gives_sane_numbers(micro, tmp_path, capsys):
    data, run = micro
    code, _, _ = call(experiments.main, ["causality-probe", "--checkpoint", run, "--data", data, "--out", tmp_path,
                                         "--device", "cpu", "--num-train", 25, "--num-test", 10, "--threads", 1],
                      capsys)
    assert code == 0
    r = json.loads((tmp_path / "causality_probe.json").read_text())
    values = [v for series in r["r2"].values() for v in series if v is not None]
    assert values and all(-100 < v <= 1 for v in values), values
