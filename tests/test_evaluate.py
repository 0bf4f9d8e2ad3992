"""Every evaluation and experiment command end to end, on micro models on fake data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import fake_fmnist
from microrun import micro_run

from spectralar import evaluate, experiments
from spectralar.checkpoint import read_meta
from spectralar.data import collate, make_dataset
from spectralar.evaluation.measures import PSNR_CAP_DB
from spectralar.evaluation.metrics import psnr, ssim
from spectralar.pretrained import load_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread: on a crowded 2-core machine two OpenMP threads wait on each other far longer than they save."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """(fake Fashion-MNIST folder, run folder with micro tokenizer + generator + a briefly trained classifier)."""
    root = tmp_path_factory.mktemp("eval")
    data = fake_fmnist(root / "data", n_train=128, n_test=48)
    run = micro_run(root / "run")
    assert evaluate.main(["train-classifier", "--data", str(data), "--out", str(run / "classifier"), "--steps", "4",
                          "--batch-size", "16", "--width", "4", "--feature-dim", "16", "--device", "cpu"]) == 0
    return data, run


def _json(path):
    return json.loads(path.read_text())


def test_train_classifier_writes_a_checkpoint(micro):
    _, run = micro
    meta = read_meta(run / "classifier")
    assert meta["kind"] == "classifier" and meta["config"]["feature_dim"] == 16
    assert 0 <= meta["train"]["val_accuracy"] <= 1 and meta["train"]["steps"] == 4
    clf = load_model(run / "classifier", "classifier")  # the one loader serves every kind
    assert not clf.training and clf.config.feature_dim == 16 and clf.config.num_classes == 10
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(run / "classifier", "critic")


def test_reconstruct(micro, tmp_path):
    data, run = micro
    assert evaluate.main(["reconstruct", "--checkpoint", str(run), "--data", str(data), "--num", "20",
                          "--out", str(tmp_path), "--device", "cpu", "--batch-size", "8"]) == 0
    r = _json(tmp_path / "reconstruct.json")
    tok = load_model(run / "tokenizer", "tokenizer")
    N = tok.config.num_tokens
    assert r["num_images"] == 20 and r["tokens_used"] == list(range(1, N + 1)) and r["windows"] == tok.config.windows
    for key in ("psnr_vs_image", "ssim_vs_image", "psnr_vs_subimage", "ssim_vs_subimage", "psnr_subimage_vs_image",
                "ssim_subimage_vs_image"):
        assert len(r[key]) == N and all(v == v for v in r[key]), key
    # the exact sub-image of all N windows is the image itself: PSNR hits the cap, SSIM is 1
    assert r["psnr_subimage_vs_image"][-1] == PSNR_CAP_DB
    assert r["ssim_subimage_vs_image"][-1] == pytest.approx(1.0, abs=1e-6)
    assert r["psnr_subimage_vs_image"][0] < r["psnr_subimage_vs_image"][-1]
    # recompute the full-prefix row independently from the same seeded subset
    ds = make_dataset(str(data), "test", 32, 1)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:20].tolist()
    x, _ = collate(ds, idx)
    rec = tok.decode(tok.encode(x)).clamp(-1, 1)
    assert r["psnr_vs_image"][-1] == pytest.approx(psnr(rec, x).mean().item(), abs=1e-3)
    assert r["ssim_vs_image"][-1] == pytest.approx(ssim(rec, x).mean().item(), abs=1e-5)
    assert r["psnr_vs_subimage"][-1] == pytest.approx(r["psnr_vs_image"][-1], abs=1e-2)
    assert (tmp_path / "reconstruct.png").stat().st_size > 0 and (tmp_path / "reconstruct_examples.png").exists()


def test_generate_classifier_metrics(micro, tmp_path, capsys):
    data, run = micro
    assert evaluate.main(["generate", "--checkpoint", str(run), "--data", str(data), "--num-per-class", "3",
                          "--real-num", "40", "--out", str(tmp_path), "--device", "cpu", "--seed", "1"]) == 0
    r = _json(tmp_path / "generate.json")
    k = r["classifier"]
    assert "not FID" in k["label"] and "FID" not in json.dumps({x: r[x] for x in r if x != "classifier"})
    assert r["num_generated"] == 30 and r["num_real"] == 40  # the fake data keeps all 10 Fashion-MNIST names
    for key in ("cfd_generated_vs_real", "cfd_real_train_vs_real_floor", "cfd_reconstructed_train_vs_real"):
        assert 0 <= k[key] < float("inf"), key
    assert len(k["accuracy_on_generated_per_class"]) == 10
    assert 0 <= k["accuracy_on_generated"] <= 1
    # 3 samples per class and 40 real images: every class with >= 2 real images gets a finite, positive ratio
    for key in ("diversity_features_per_class", "diversity_pixels_per_class"):
        assert k[key] and all(0 < v < float("inf") for v in k[key].values()), key
    out = capsys.readouterr().out
    assert "classifier Frechet distance (CFD), not FID" in out and "within-class diversity vs real" in out
    assert (tmp_path / "generate_samples.png").exists() and (tmp_path / "generate_accuracy.png").exists()


def test_generate_inception_needs_torch_fidelity(micro, tmp_path, capsys):
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed here; the error path cannot be exercised")
    except ImportError:
        pass
    data, run = micro
    w = tmp_path / "weights.pth"
    w.write_bytes(b"not really weights")
    rc = evaluate.main(["generate", "--checkpoint", str(run), "--data", str(data), "--num-per-class", "1",
                        "--inception-weights", str(w), "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install torch-fidelity" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["reconstruct", "--num", "0"], "--num"),
    (["generate", "--cfg", "-1"], "--cfg"),
    (["generate", "--top-p", "1.5"], "--top-p"),
    (["reconstruct", "--checkpoint", "/nonexistent"], "/nonexistent"),
    (["train-classifier", "--out", "x", "--lr", "0"], "--lr"),
    (["reconstruct", "--seed", str(10**20)], "--seed"),  # was 'Overflow when unpacking long long' in a traceback
    (["train-classifier", "--out", "x", "--seed", "-1"], "--seed"),
])
def test_bad_values_give_one_line_errors(micro, argv, needle, capsys):
    data, run = micro
    extra = ["--data", str(data), "--device", "cpu"]
    if argv[0] == "generate":
        extra += ["--checkpoint", str(run)]
    try:
        rc = evaluate.main(argv + extra)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err


def test_truncation(micro, tmp_path):
    data, run = micro
    argv = ["truncation", "--checkpoint", str(run), "--data", str(data), "--num", "16", "--num-per-class", "2",
            "--real-num", "32", "--out", str(tmp_path), "--device", "cpu"]
    assert experiments.main(argv) == 0
    r = _json(tmp_path / "truncation.json")
    N = r["num_tokens"]
    assert r["tokens_used"] == list(range(1, N + 1)) and len(r["reconstruction"]["psnr_vs_image"]) == N
    g = r["generation"]
    assert "not FID" in g["label"] and g["num_generated"] == 20
    for key in ("accuracy_generated", "cfd_generated", "accuracy_real_subimage", "cfd_real_subimage"):
        assert len(g[key]) == N and all(0 <= v < float("inf") for v in g[key]), key
    assert all(v <= 1 for v in g["accuracy_generated"] + g["accuracy_real_subimage"])
    assert (tmp_path / "truncation.png").exists() and (tmp_path / "truncation_samples.png").exists()


def test_mapping_ablation(micro, tmp_path):
    data, run = micro
    argv = ["mapping-ablation", "--steps", "2", "--preset", "micro", "--data", str(data), "--out", str(tmp_path),
            "--num", "16", "--batch-size", "16", "--val-size", "16", "--threads", "1", "--device", "cpu",
            "--generator-steps", "2", "--generator-preset", "micro", "--generator-batch-size", "16",
            "--classifier", str(run / "classifier"), "--num-per-class", "1"]
    assert experiments.main(argv) == 0
    r = _json(tmp_path / "mapping_ablation.json")
    assert list(r["runs"]) == ["uniform", "power", "energy"] and r["num_images"] == 16
    configs = {m: read_meta(tmp_path / m / "tokenizer")["config"] for m in r["runs"]}
    for m, cfg in configs.items():
        assert cfg["mapping"] == m and r["runs"][m]["windows"] == cfg["windows"]
        assert read_meta(tmp_path / m / "tokenizer")["step"] == 2
        assert len(r["runs"][m]["psnr_vs_image"]) == cfg["num_tokens"]
        assert "not FID" in r["runs"][m]["generation"]["label"]
    assert configs["uniform"]["windows"] == [8, 16, 24, 32]
    strip = lambda c: {k: v for k, v in c.items() if k not in ("mapping", "windows")}  # noqa: E731
    assert strip(configs["uniform"]) == strip(configs["power"]) == strip(configs["energy"])  # same budget and model
    assert r["best_mean_psnr"] in r["runs"] and r["best_cfd"] in r["runs"]
    assert len(r["best_psnr_per_prefix"]) == 4
    # a rerun reuses the finished checkpoints instead of training again
    assert experiments.main(argv[:-2] + ["--num-per-class", "1", "--mappings", "uniform"]) == 0
    assert _json(tmp_path / "mapping_ablation.json")["runs"]["uniform"]["tokenizer_seconds"] == 0.0


def test_mapping_ablation_rejects_unknown_mapping(capsys):
    assert experiments.main(["mapping-ablation", "--steps", "1", "--mappings", "uniform,zigzag"]) == 2
    assert "zigzag" in capsys.readouterr().err


def test_causality_probe(micro, tmp_path):
    data, run = micro
    assert experiments.main(["causality-probe", "--checkpoint", str(run), "--data", str(data), "--num-train", "64",
                             "--num-test", "32", "--out", str(tmp_path), "--device", "cpu"]) == 0
    r = _json(tmp_path / "causality_probe.json")
    N = r["num_tokens"]
    assert r["positions"] == list(range(1, N + 1)) and r["num_train"] == 64 and r["num_test"] == 32
    assert set(r["r2"]) == {"spectral tokens (continuous)", "spectral tokens (quantized)",
                            "spatial raster patches (PCA)", "raw DCT bands (PCA)"}
    for name, vals in r["r2"].items():
        assert vals[0] is None and len(vals) == N
        # null only where R^2 is undefined (a micro codebook can give every image the same code)
        assert all(v is None or v <= 1 for v in vals[1:]), name
        assert r["chosen_alpha"][name][1] in r["alphas"]
    for name in ("spectral tokens (continuous)", "spatial raster patches (PCA)", "raw DCT bands (PCA)"):
        assert all(isinstance(v, float) for v in r["r2"][name][1:]), name  # continuous targets always vary
    assert "raster" in r["definitions"]["spatial raster patches (PCA)"]
    assert 0 < r["pca_variance_kept"]["spatial raster patches (PCA)"] <= 1
    assert (tmp_path / "causality_probe.png").exists()


def _numbers(report: dict) -> dict:
    """The metrics of a generate.json, without what differs between runs (timings, command line, process count)."""
    return {k: v for k, v in report.items() if k not in ("command", "seconds", "sampling_seconds", "processes")}


def test_generate_sharded_over_two_processes_matches_one(micro, tmp_path):
    """Under torchrun (2 Gloo processes) the batches are split over the ranks and gathered on rank 0: the report
    and the sample grid equal one process's for the same seed (batches 0, 2 on rank 0; 1, 3 on rank 1). Also the
    subprocess smoke test of `python -m spectralar.evaluate`."""
    data, run = micro
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    args = ["generate", "--checkpoint", str(run), "--data", str(data), "--num-per-class", "3", "--batch-size", "8",
            "--real-num", "40", "--seed", "3", "--device", "cpu", "--threads", "1"]
    assert evaluate.main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "spectralar.evaluate", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _json(tmp_path / "one" / "generate.json"), _json(tmp_path / "two" / "generate.json")
    assert (a["processes"], b["processes"]) == (1, 2) and a["num_generated"] == 30
    assert _numbers(b) == _numbers(a)  # the same images reach the same code on rank 0: bit-identical metrics
    assert (tmp_path / "one" / "generate_samples.png").read_bytes() == (tmp_path / "two" /
                                                                         "generate_samples.png").read_bytes()
    assert two.stdout.count("classifier Frechet distance") == 1  # rank 0 alone reports
