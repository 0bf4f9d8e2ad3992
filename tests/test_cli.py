"""Every CLI refuses bad input before any model is built or sampled: a one-line error and a non-zero exit.

Each case runs a CLI in-process through its `main(argv)`, with the model constructors (or, where the failure can
only show in the weights, the sampler and encoder) replaced by a function that fails the test if called.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import fake_fmnist
from PIL import Image

from spectralar import evaluate, experiments, export, generate, reconstruct, vary
from spectralar.data import fashion_mnist, read_idx
from spectralar.models.config import validate_config
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer
from spectralar.pretrained import PRETRAINED_DIR, load_pretrained

CLIS = {"generate": generate.main, "reconstruct": reconstruct.main, "evaluate": evaluate.main,
        "experiments": experiments.main, "export": export.main, "vary": vary.main}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _forbid(monkeypatch, *targets):
    def guard(original):
        def called(*a, **k):
            if torch.get_default_device().type == "meta":  # a size check: shapes only, nothing allocated or run
                return original(*a, **k)
            raise AssertionError("the CLI built or ran a model before refusing its input")
        return called

    for owner, name in targets:
        monkeypatch.setattr(owner, name, guard(getattr(owner, name)))


def _run(main, argv, capsys):
    """(exit code, stdout, stderr) of an in-process CLI run."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _edit(path, change):
    """Apply `change(meta)` to checkpoint directory `path`'s config.json."""
    meta = json.loads((path / "config.json").read_text())
    change(meta)
    (path / "config.json").write_text(json.dumps(meta))


def _truncate(path):
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _set(kind, key, value):
    return lambda ck: _edit(ck / kind, lambda m: m["config"].__setitem__(key, value))


def _classes(ck):
    _edit(ck / "generator", lambda m: m["train"].__setitem__("classes", m["train"]["classes"][:9]))


# (CLI, argv, text the one-line error must contain, how the checkpoint copy is damaged or None, what may run:
#  "nothing" = no model is built; "build" = models may be built (the fault is in the weights), none is run)
BAD = [
    ("generate", ["--cfg", "inf"], "--cfg", None, "nothing"),
    ("generate", ["--cfg", "nan"], "--cfg", None, "nothing"),
    ("generate", ["--cfg", "-1"], "--cfg", None, "nothing"),
    ("generate", ["--temperature", "-1"], "--temperature", None, "nothing"),
    ("generate", ["--temperature", "inf"], "--temperature", None, "nothing"),
    ("generate", ["--temperature", "nan"], "--temperature", None, "nothing"),
    ("generate", ["--top-p", "0"], "--top-p", None, "nothing"),
    ("generate", ["--top-p", "1.5"], "--top-p", None, "nothing"),
    ("generate", ["--top-p", "nan"], "--top-p", None, "nothing"),
    ("generate", ["--out", "/proc/x.png"], "/proc", None, "nothing"),
    ("generate", ["--out", "{tmp}/samples.txt"], "extension", None, "nothing"),
    ("generate", ["--out", "{tmp}"], "directory", None, "nothing"),
    ("generate", ["--out", "{ro}/x.png"], "cannot create", None, "nothing"),
    ("generate", ["--device", "nonsense"], "nonsense", None, "nothing"),
    pytest.param("generate", ["--device", "cuda"], "CUDA is not available", None, "nothing", marks=NO_CUDA),
    ("generate", ["--scale", "100000"], "pixels", None, "nothing"),
    ("generate", [], "width='192' must be an integer", _set("generator", "width", "192"), "nothing"),
    ("generate", [], "num_classes=True", _set("generator", "num_classes", True), "nothing"),
    ("generate", [], "9 class names for num_classes=10", _classes, "nothing"),
    ("generate", [], "GiB", _set("generator", "width", 2**30), "nothing"),
    ("generate", [], "GiB", _set("tokenizer", "width", 2**30), "nothing"),
    ("generate", [], "windows", _set("tokenizer", "windows", [1, 2, 3]), "nothing"),
    ("generate", [], "divisible by heads", _set("generator", "heads", 5), "nothing"),
    ("generate", [], "corrupt or truncated", lambda ck: _truncate(ck / "generator"), "build"),
    ("generate", ["--tokens", "0"], "--tokens", None, "nothing"),
    ("generate", ["--tokens", "99"], "--tokens 99: this model has 16 tokens", None, "nothing"),
    ("generate", ["--animate", "{tmp}/a.jpg"], "--animate", None, "nothing"),
    ("generate", ["--animate", "{tmp}/a.txt"], "extension", None, "nothing"),
    ("generate", ["--compile", "--no-kv-cache"], "--no-kv-cache", None, "nothing"),
    ("vary", ["--keep", "17"], "--keep [17]: keep 0 to 16 tokens", None, "nothing"),
    ("vary", ["--keep", "-1"], "--keep [-1]", None, "nothing"),
    ("vary", ["--keep", "x"], "--keep", None, "nothing"),
    ("vary", ["--class", "Sandals"], "unknown class", None, "nothing"),
    ("vary", ["--class", "10"], "class ids lie in [0, 10)", None, "nothing"),
    ("vary", ["{tmp}/notes.txt"], "notes.txt: unreadable image", None, "nothing"),
    ("vary", ["{tmp}/missing.png"], "missing.png", None, "nothing"),
    ("vary", [], "no classifier", lambda ck: shutil.rmtree(ck / "classifier"), "nothing"),
    ("vary", ["--num", "0"], "--num", None, "nothing"),
    ("vary", ["--cfg", "nan"], "--cfg", None, "nothing"),
    ("vary", ["--out", "/proc/x.png"], "/proc", None, "nothing"),
    ("reconstruct", ["--device", "nonsense"], "nonsense", None, "nothing"),
    pytest.param("reconstruct", ["--device", "cuda"], "CUDA is not available", None, "nothing", marks=NO_CUDA),
    ("reconstruct", ["--out", "/proc/x.png"], "/proc", None, "nothing"),
    ("reconstruct", ["--out", "{ro}/x.png"], "cannot create", None, "nothing"),
    ("reconstruct", [], "patch_size='4' must be an integer", _set("tokenizer", "patch_size", "4"), "nothing"),
    ("reconstruct", [], "GiB", _set("tokenizer", "codebook_size", 2**40), "nothing"),
    ("reconstruct", [], "corrupt or truncated", lambda ck: _truncate(ck / "tokenizer"), "build"),
    ("evaluate", ["generate", "--cfg", "inf"], "--cfg", None, "nothing"),
    ("evaluate", ["generate", "--top-p", "nan"], "--top-p", None, "nothing"),
    ("evaluate", ["generate", "--device", "nonsense"], "nonsense", None, "nothing"),
    ("evaluate", ["reconstruct", "--out", "/proc/x"], "/proc", None, "nothing"),
    ("evaluate", ["reconstruct", "--out", "{ro}/eval"], "cannot create", None, "nothing"),
    ("evaluate", ["generate"], "GiB", _set("generator", "width", 2**30), "nothing"),
    ("evaluate", ["train-classifier", "--lr", "nan"], "--lr", None, "nothing"),
    ("experiments", ["truncation", "--temperature", "inf"], "--temperature", None, "nothing"),
    ("experiments", ["causality-probe", "--out", "/proc/x"], "/proc", None, "nothing"),
    ("experiments", ["causality-probe"], "width='128'", _set("tokenizer", "width", "128"), "nothing"),
    ("export", ["{tmp}/dest"], "9 class names", _classes, "nothing"),
    ("export", ["/proc/x"], "/proc", None, "nothing"),
]


def _argv(cli, ck, tmp):
    """Arguments that make each CLI's run valid (on the checkpoint copy `ck`), before the case's own."""
    img = tmp / "in.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(img)
    (tmp / "notes.txt").write_text("not an image")
    return {"generate": ["--checkpoint", ck, "--out", tmp / "s.png", "--device", "cpu"],
            "vary": [img, "--keep", "4", "--checkpoint", ck, "--out", tmp / "v.png", "--device", "cpu"],
            "reconstruct": [img, "--checkpoint", ck, "--out", tmp / "r.png", "--device", "cpu"],
            "evaluate": ["--out", tmp / "eval", "--device", "cpu"],
            "experiments": ["--out", tmp / "exp", "--device", "cpu"],
            "export": [ck]}[cli]


@pytest.mark.parametrize("cli, argv, needle, damage, may", BAD)
def test_bad_input_fails_before_any_model_runs(cli, argv, needle, damage, may, tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ckpt"
    shutil.copytree(PRETRAINED_DIR / "fmnist", ck)
    if damage is not None:
        damage(ck)
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    if any("{ro}" in a for a in argv) and os.access(ro, os.W_OK):
        pytest.skip("running as root: a read-only mode does not stop writes")
    argv = [a.format(tmp=tmp_path, ro=ro) for a in argv]
    base = _argv(cli, ck, tmp_path)
    if cli in ("evaluate", "experiments"):  # subcommand first, then its flags
        full = argv[:1] + ["--checkpoint", ck] * (argv[0] != "train-classifier") + base + argv[1:]
        if argv[0] == "train-classifier":
            full += ["--data", tmp_path]
    else:
        full = base + argv
    if may == "nothing":
        _forbid(monkeypatch, (SpectralGPT, "__init__"), (SpectralTokenizer, "__init__"))
    _forbid(monkeypatch, (SpectralGPT, "generate"), (SpectralTokenizer, "encode"))
    code, _, err = _run(CLIS[cli], full, capsys)
    assert code not in (0, None), err
    assert len(err.splitlines()) == 1 and "error: " in err and "Traceback" not in err, err
    assert needle in err, err
    if cli == "export":
        assert not (tmp_path / "dest").exists()  # nothing half-written


@pytest.mark.parametrize("flags", [["--temperature", "0"], ["--top-p", "1", "--cfg", "0"], ["--cfg", "1"]])
def test_generate_accepts_edge_values(flags, tmp_path, capsys):
    """Greedy sampling (temperature 0), the whole nucleus and no guidance are valid and still sample."""
    out = tmp_path / "s.png"
    code, _, err = _run(generate.main, ["--classes", "1", "--num-per-class", "2", "--out", out, "--device", "cpu",
                                     "--scale", "1", *flags], capsys)
    assert code == 0, err
    assert out.is_file()


def test_export_round_trip(tmp_path, capsys):
    """The checks in front of export leave a good run exportable: every part lands in its own folder, same weights."""
    code, _, err = _run(export.main, [PRETRAINED_DIR / "fmnist", tmp_path / "dest"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["classifier", "generator", "tokenizer"]
    for a, b in zip(load_pretrained(tmp_path / "dest"), load_pretrained("fmnist")):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_validate_config_accepts_the_bundled_configs():
    for kind in ("tokenizer", "generator", "classifier"):
        meta = json.loads((PRETRAINED_DIR / "fmnist" / kind / "config.json").read_text())
        cfg = validate_config(kind, meta["config"], meta["train"].get("classes"))
        assert cfg.width == meta["config"]["width"]


def test_reconstruct_pads_native_size_as_in_training(tmp_path, capsys):
    """A 28x28 Fashion-MNIST image is padded with the background value exactly as training pads it (it was resized
    to 32x32 before: 3-5 dB lost); another size is resized and center-cropped; the command says which."""
    data = fake_fmnist(tmp_path / "data", n_train=4, n_test=4)
    raw = read_idx(data / "t10k-images-idx3-ubyte.gz")[0]
    Image.fromarray(raw).save(tmp_path / "native.png")
    Image.fromarray(np.full((30, 45), 90, np.uint8)).save(tmp_path / "other.png")
    out = tmp_path / "r.png"
    code, printed, err = _run(reconstruct.main, [tmp_path / "native.png", tmp_path / "other.png", "--out", out,
                                                 "--device", "cpu", "--scale", "1"], capsys)
    assert code == 0, err
    native, other = printed.splitlines()[:2]
    assert "native.png: 28x28 (Fashion-MNIST's size): padded to 32x32 with the background value" in native
    assert "other.png: 45x30: resized (shorter side to 32) and center-cropped to 32x32" in other
    grid = np.asarray(Image.open(out))
    shown = grid[2:34, 2:34]  # first row, first tile: the input as the tokenizer saw it (pad 2, scale 1)
    trained = fashion_mnist("test", root=data)[0][0]  # [1, 32, 32] in [-1, 1]
    assert np.array_equal(shown, trained[0].add(1).mul(127.5).round().to(torch.uint8).numpy())
    assert np.array_equal(grid[36:68, 2:34], np.full((32, 32), 90, np.uint8))  # 30x45 of one grey -> 32x32


def test_generate_tokens_and_animation(tmp_path, capsys):
    """--tokens 16 (all of them) writes the default command's bytes; --tokens 4 decodes the first 4 tokens of the
    same samples, and its --animate GIF has one frame per token, the last one the grid itself."""
    base = ["--classes", "1,5", "--num-per-class", "3", "--device", "cpu", "--scale", "1", "--batch-size", "4"]
    outs = {}
    for name, flags in (("default", []), ("all", ["--tokens", "16"]),
                        ("four", ["--tokens", "4", "--animate", tmp_path / "a.gif", "--progressive"])):
        outs[name] = tmp_path / f"{name}.png"
        code, printed, err = _run(generate.main, [*base, "--out", outs[name], *flags], capsys)
        assert code == 0, err
    assert outs["all"].read_bytes() == outs["default"].read_bytes()
    assert "decoded from the first 4 of 16 tokens" in printed and "4 frames" in printed
    grid = np.asarray(Image.open(outs["four"]))
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2) and not np.array_equal(grid, np.asarray(Image.open(outs["all"])))
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 4
        frames = []
        for i in range(4):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("L")))
    assert np.array_equal(frames[-1], grid)
    assert len({f.tobytes() for f in frames}) == 4  # coarse to fine: every frame differs
    strip = np.asarray(Image.open(tmp_path / "four_progressive.png"))
    assert strip.shape == (2 * 34 + 2, 4 * 34 + 2)
    assert np.array_equal(strip[2:34, 3 * 34 + 2:4 * 34], grid[2:34, 2:34])  # 4 tokens of sample 0 = its grid tile


@pytest.mark.skipif(not torch.__version__.startswith("2.13."), reason="the pictures were made with torch 2.13")
def test_generate_progressive_writes_the_readme_strip(tmp_path, monkeypatch):
    """`python -m spectralar.generate --kv-cache --progressive` writes the README's strip (docs/img/progressive.png)
    byte for byte, next to its grid (docs/img/samples.png)."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")
    monkeypatch.chdir(tmp_path)
    assert generate.main(["--kv-cache", "--progressive", "--device", "cpu"]) == 0
    img = Path(__file__).resolve().parent.parent / "docs" / "img"
    assert (tmp_path / "samples_progressive.png").read_bytes() == (img / "progressive.png").read_bytes()
    assert (tmp_path / "samples.png").read_bytes() == (img / "samples.png").read_bytes()
