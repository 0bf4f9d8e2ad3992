"""End to end on tiny data: data readers, checkpoints, exact resume, 2-process DDP, the CLIs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import fake_fmnist, write_idx
from PIL import Image

from spectralar.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from spectralar.data import DataError, ImageFolder, fashion_mnist, index_batches
from spectralar.pretrained import load_model, load_pretrained
from spectralar.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--preset", "micro", "--batch-size", "16", "--log-every", "1", "--eval-every", "4", "--ckpt-every", "3",
          "--val-size", "32", "--threads", "1"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def losses(out, stage):
    rows = [json.loads(line) for line in (Path(out) / f"{stage}_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train_main(["tokenizer", "--data", str(data), "--out", str(out), "--steps", "6", *COMMON]) == 0
    assert train_main(["generator", "--data", str(data), "--out", str(out), "--steps", "6", *COMMON]) == 0
    return out


# ---- data ----------------------------------------------------------------------------------------

def test_fmnist_reader(data):
    ds = fashion_mnist("train", root=data)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # padded with the background
    assert len(ds) == 256 and set(ds.labels.tolist()) <= {0, 1, 2}


def test_fmnist_missing_and_truncated(tmp_path, data):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)
    for f in data.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))  # count mismatch
    with pytest.raises(DataError, match="expected images"):
        fashion_mnist("train", root=tmp_path)
    import gzip

    raw = gzip.decompress((data / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist("train", root=tmp_path)


def test_image_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "cats" / "a.png")
    Image.fromarray(np.full((50, 30), 10, np.uint8), mode="L").save(tmp_path / "dogs" / "gray.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = ImageFolder(tmp_path, size=16)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y.item() == 0
    assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1))
    gray = [i for i, (p, _) in enumerate(ds.files) if p.name == "gray.png"][0]
    xg, yg = ds[gray]
    assert xg.shape == (3, 16, 16) and yg.item() == 1
    broken = [i for i, (p, _) in enumerate(ds.files) if p.name == "broken.jpg"][0]
    with pytest.raises(DataError, match="broken.jpg"):
        ds[broken]
    skipping = ImageFolder(tmp_path, size=16, skip_bad=True)
    assert len(skipping) == 2 and skipping.skipped == [str(tmp_path / "dogs" / "broken.jpg")]
    assert sorted(skipping.labels.tolist()) == [0, 1]


def test_index_batches_shard_and_repeat():
    a = index_batches(100, 8, seed=1, epoch=0)
    assert a == index_batches(100, 8, seed=1, epoch=0) and a != index_batches(100, 8, seed=1, epoch=1)
    r0, r1 = index_batches(100, 8, 1, 0, rank=0, world=2), index_batches(100, 8, 1, 0, rank=1, world=2)
    flat0, flat1 = sum(r0, []), sum(r1, [])
    assert not set(flat0) & set(flat1) and len(r0) == len(r1) == 6


# ---- checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_errors(run_dir, tmp_path):
    import shutil

    ck = tmp_path / "tok"
    shutil.copytree(run_dir / "tokenizer", ck)
    load_model(ck, "tokenizer")
    with pytest.raises(CheckpointError, match="holds a tokenizer"):
        load_model(ck, "generator")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(ck, "tokenizer")
    (ck / "model.safetensors").write_bytes(data)
    meta = json.loads((ck / "config.json").read_text())
    meta["config"]["width"] = 48
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(ck, "tokenizer")
    (ck / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_meta(ck)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        read_meta(tmp_path / "nothing")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ck", "tokenizer", model, {"a": 1}, step=1)
    import spectralar.checkpoint as ckmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckmod, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", "tokenizer", torch.nn.Linear(3, 2), {"a": 2}, step=2)
    assert read_meta(tmp_path / "ck")["step"] == 1  # the previous checkpoint survives
    assert torch.equal(load_weights(tmp_path / "ck")["weight"], model.weight.detach())


def _to_old_layout(ck):
    """Rewrite checkpoint `ck` as written before the training knobs left the model config: one 'config' object."""
    meta = json.loads((ck / "config.json").read_text())
    meta["config"] = {**meta["config"], **meta["train"].pop("config")}
    meta["train"].pop("run", None)
    meta["train"].pop("data", None)
    (ck / "config.json").write_text(json.dumps(meta))


def test_every_checkpoint_format_loads(data, tmp_path):
    """The bundled model (model config and training config apart) and the same checkpoints in the older layout load
    to the same models; an older training checkpoint resumes exactly, its training settings (here EMA and the
    prefix-length distribution) taken from its one config object."""
    import shutil

    from spectralar.pretrained import PRETRAINED_DIR

    for kind in ("tokenizer", "generator"):
        bundled = PRETRAINED_DIR / "fmnist" / kind
        assert "ema_decay" not in read_meta(bundled)["config"] and "ema_decay" in read_meta(bundled)["train"]["config"]
        old = tmp_path / "old" / kind
        shutil.copytree(bundled, old)
        _to_old_layout(old)
        a, b = load_model(bundled, kind), load_model(old, kind)
        assert a.config == b.config and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    args = ["tokenizer", "--data", str(data), "--steps", "6", *COMMON, "--set", "ema_decay=0.5",
            "--set", "prefix_dist=linear"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_main([*args, "--out", str(full)]) == 0
    assert train_main([*args, "--out", str(part), "--stop-at", "4"]) == 0
    _to_old_layout(part / "tokenizer")
    assert train_main([*args[:-4], "--out", str(part), "--resume"]) == 0
    assert losses(full, "tokenizer") == losses(part, "tokenizer")
    assert read_meta(part / "tokenizer")["train"]["config"]["prefix_dist"] == "linear"  # rewritten in the new layout


# ---- training --------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["tokenizer", "generator"])
def test_resume_is_exact(stage, data, run_dir, tmp_path):
    extra = ["--tokenizer", str(run_dir / "tokenizer")] if stage == "generator" else []
    args = [stage, "--data", str(data), "--steps", "6", *COMMON, *extra]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_main([*args, "--out", str(full)]) == 0
    assert train_main([*args, "--out", str(part), "--stop-at", "4"]) == 0  # "interrupted" after step 4
    assert read_meta(part / stage)["step"] == 4
    assert train_main([*args, "--out", str(part), "--resume"]) == 0
    a, b = losses(full, stage), losses(part, stage)
    assert set(a) == set(b) == set(range(1, 7))
    for step in range(1, 7):
        assert a[step] == b[step], (step, a[step], b[step])


@pytest.mark.slow  # a smoke test of the command under torchrun; tests/test_train_faults.py checks DDP by default
def test_ddp_two_processes_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "spectralar.train", "tokenizer", "--data", str(data), "--out", str(out), "--steps", "3",
           *COMMON, "--device", "cpu"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2" in res.stdout
    meta = read_meta(out / "tokenizer")
    assert meta["step"] == 3
    assert len(losses(out, "tokenizer")) == 3  # rank 0 logs alone


# ---- CLIs: in-process, one subprocess smoke test each -------------------------------------------------------

def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], env=_env(), capture_output=True, text=True,
                          timeout=300)


def _main(main, capsys, *args):
    """(exit code, stdout, stderr) of a CLI's main() run in this process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_cli_smoke(run_dir, tmp_path):
    """The real command line, once: `python -m spectralar.generate --kv-cache ...` writes its grids."""
    a = tmp_path / "a.png"
    r = _cli("spectralar.generate", "--kv-cache", "--checkpoint", str(run_dir), "--classes", "0,2",
             "--num-per-class", "3", "--seed", "4", "--out", str(a), "--scale", "1", "--progressive")
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout and "tokens/s" in r.stdout
    assert Image.open(a).size == (3 * 34 + 2, 2 * 34 + 2)  # 3 columns, 2 rows of 32 px with 2 px gaps
    assert Image.open(tmp_path / "a_progressive.png").size == (4 * 34 + 2, 2 * 34 + 2)


def test_generate_cli(run_dir, tmp_path, capsys):
    from spectralar.generate import main

    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    same = ["--checkpoint", run_dir, "--classes", "0,2", "--num-per-class", "3", "--scale", "1"]
    assert _main(main, capsys, "--kv-cache", *same, "--seed", "4", "--out", a)[0] == 0
    assert _main(main, capsys, "--no-kv-cache", *same, "--seed", "4", "--out", b)[0] == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # same seed, with or without cache
    code, out, err = _main(main, capsys, "--compile", *same, "--seed", "4", "--out", b)
    assert code == 0, err
    assert "compiled" in out and "compile warm-up" in out
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # compiled decode step: same images
    assert _main(main, capsys, *same, "--seed", "5", "--out", c)[0] == 0
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))


@pytest.mark.parametrize("flags, match", [
    (["--classes", "99"], "class ids"),
    (["--top-p", "1.5"], "top-p"),
    (["--num-per-class", "0"], "num-per-class"),
    (["--temperature", "-1"], "temperature"),
    (["--checkpoint", "/nonexistent"], "neither a bundled model"),
    (["--bogus"], "unrecognized"),
    (["--no-kv-cache", "--compile"], "--compile"),
])
def test_generate_cli_bad_flags(run_dir, flags, match, capsys):
    from spectralar.generate import main

    args = ["--checkpoint", str(run_dir)] + flags if "--checkpoint" not in flags else flags
    code, _, err = _main(main, capsys, *args)
    assert code == 2
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_reconstruct_cli(run_dir, tmp_path, capsys):
    from spectralar.reconstruct import main

    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    r = _cli("spectralar.reconstruct", str(tmp_path / "x.png"), "--checkpoint", str(run_dir),
             "--out", str(tmp_path / "r.png"), "--scale", "1")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "r.png").size == (5 * 34 + 2, 34 + 2)  # input + 4 prefixes
    code, _, err = _main(main, capsys, tmp_path / "missing.png", "--checkpoint", run_dir, "--out", tmp_path / "r2.png")
    assert code == 2 and "missing.png" in err


def test_bundled_model_loads_and_generates(tmp_path):
    tok, gen = load_pretrained("fmnist")
    assert not tok.training and not gen.training
    assert gen.config.num_classes == 10 and tok.config.image_size == 32
    codes = gen.generate(torch.arange(10), cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    imgs = tok.decode(codes)
    assert imgs.shape == (10, 1, 32, 32) and torch.isfinite(imgs).all()
