"""A run folder as training writes it (tokenizer/ and generator/ checkpoints), with untrained micro models built
directly: what the evaluation and sampling tests need, without a training run; and the helpers of the tests that
start training runs as a user does (a real process, its log, its signals)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from spectralar.checkpoint import save_checkpoint
from spectralar.data import FMNIST_CLASSES
from spectralar.models.config import preset, to_dict
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer


def micro_run(root, seed=0, classes=FMNIST_CLASSES) -> Path:
    """ROOT with a micro tokenizer and a micro generator for `classes` (Fashion-MNIST's ten by default)."""
    root = Path(root)
    torch.manual_seed(seed)
    tok = SpectralTokenizer(preset("tokenizer", "micro"))
    t = tok.config
    gen = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=t.num_tokens,
                                          codebook_size=t.codebook_size, num_classes=len(classes)))
    for kind, model in (("tokenizer", tok), ("generator", gen)):
        save_checkpoint(root / kind, kind, model, to_dict(model.config), step=1, train={"classes": list(classes)})
    return root


# ---- training runs as a user starts them: a real process, its log, its signals -------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """The environment of a training process started by a test: this tree first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_proc(argv) -> subprocess.Popen:
    """`python -m spectralar.train ARGV` in its own process, SIGINT at its default (a script run in the background
    inherits it ignored)."""
    return subprocess.Popen([sys.executable, "-m", "spectralar.train", *map(str, argv)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def log_rows(out, stage, pending=False) -> list[dict]:
    """The rows of OUT/<stage>_log.jsonl (pending=True: of the log a fresh run keeps until its first checkpoint)."""
    out = Path(out)
    paths = sorted(out.glob(f".{stage}_log.*.jsonl")) if pending else [out / f"{stage}_log.jsonl"]
    rows = []
    for p in paths:
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line being written
                pass
    return rows


def wait_for_step(proc, out, stage, step, pending=None, timeout=300) -> bool:
    """Poll the run's logs until `step` is in them (pending=None: either log; True / False: only the pending log /
    only OUT/<stage>_log.jsonl); False if the process ended first."""
    t = time.time()
    which = (False, True) if pending is None else (pending,)
    while time.time() - t < timeout:
        if proc.poll() is not None:
            return False
        if any(r.get("step", 0) >= step for p in which for r in log_rows(out, stage, p)):
            return True
        time.sleep(0.005)
    raise TimeoutError(f"step {step} never appeared in the {stage} log of {out}")
