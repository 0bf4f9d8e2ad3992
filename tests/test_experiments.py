"""`python -m spectralar.experiments kinds`: the tokenizer-kinds comparison end to end on micro models and fake data
(resumable in pieces, one report over every evaluated run), and the verdict rule it reports."""

import json

import pytest
from fakedata import fake_fmnist

from spectralar import evaluate, experiments
from spectralar.evaluation.kinds import KindsOptions, RunSpec
from spectralar.evaluation.kinds_report import verdict

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    data = fake_fmnist(root / "data", n_train=64, n_test=30)
    clf = root / "classifier"
    assert evaluate.main(["train-classifier", "--data", str(data), "--out", str(clf), "--steps", "2",
                          "--batch-size", "16", "--width", "4", "--feature-dim", "8", "--device", "cpu"]) == 0
    return data, clf


def _argv(data, clf, out, runs, seeds, *extra):
    return ["kinds", "--out", str(out), "--runs", runs, "--seeds", seeds, "--steps", "2", "--generator-steps", "2",
            "--batch-size", "16", "--generator-batch-size", "16", "--preset", "micro", "--generator-preset", "micro",
            "--data", str(data), "--val-size", "1", "--classifier", str(clf), "--num", "8", "--num-per-class", "2",
            "--probe-train", "16", "--probe-test", "8", "--eval-batch-size", "8", "--device", "cpu", *extra]


def test_kinds_trains_then_evaluates_one_run(setup, tmp_path):
    """One run trained by one call and evaluated by the next (eval.json holds every measure), and a third call
    that redoes nothing."""
    data, clf = setup
    out = tmp_path / "kinds"
    assert experiments.main(_argv(data, clf, out, "raster-16", "1", "--train-only")) == 0
    assert not list(out.glob("seed*/*/eval.json")) and not (out / "kinds.json").exists()
    assert experiments.main(_argv(data, clf, out, "raster-16", "1")) == 0
    e = json.loads((out / "seed1" / "raster-16" / "eval.json").read_text())
    assert e["kind"] == "raster" and e["num_tokens"] == 16 and e["tokenizer_config"]["windows"] == []
    assert len(e["reconstruction"]["psnr_vs_image"]) == 16 and len(e["generated_prefixes"]["cfd"]) == 16
    assert set(e["generation"]) == {"cfg1", "cfg2"} and "not FID" in e["generation"]["cfg2"]["label"]
    assert e["generation"]["cfg2"]["sampling_seconds_per_image"] > 0 and e["train_seconds"]["tokenizer"] > 0
    assert len(e["generator_cross_entropy"]["per_position"]) == 16 and e["probe"]["continuous"]["r2"][0] is None
    assert e["training"]["tokenizer"]["steps"] == 2 and e["training"]["generator"]["batch_size"] == 16
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/*.json")}
    assert experiments.main(_argv(data, clf, out, "raster-16", "1")) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing trained or evaluated twice
    assert json.loads((out / "kinds.json").read_text())["runs_evaluated"] == {"1": ["raster-16"]}


@pytest.mark.slow
def test_kinds_in_pieces_then_one_report(setup, tmp_path):
    """Two runs x two seeds in one call; a later call with another run adds it without retraining or
    re-evaluating the others, and the report (noise, verdicts, figures) covers everything evaluated."""
    data, clf = setup
    out = tmp_path / "kinds"
    assert experiments.main(_argv(data, clf, out, "spectral-16,raster-16", "0,1")) == 0
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/*.json")}
    assert len([p for p in stamp if p.name == "eval.json"]) == 4
    assert experiments.main(_argv(data, clf, out, "spectral-16,raster-16,1d-16", "0")) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    r = json.loads((out / "kinds.json").read_text())
    assert r["runs_evaluated"] == {"0": ["spectral-16", "raster-16", "1d-16"], "1": ["spectral-16", "raster-16"]}
    assert r["same_training_settings"] and r["training"][0]["tokenizer"]["steps"] == 2
    # noise is the largest seed-to-seed spread of one run; verdicts exist where both runs of a claim have 2 seeds
    rows = r["rows"]
    spread = max(abs(rows["0"][n]["cfd_cfg2"] - rows["1"][n]["cfd_cfg2"]) for n in ("spectral-16", "raster-16"))
    assert r["noise"]["cfd_cfg2"] == pytest.approx(spread)
    v = r["verdicts"]
    assert v["at 16 tokens spectral beats raster"]["per_measure"]["cfd_cfg2"]["seeds"] == [0, 1]
    assert v["at 16 tokens spectral beats raster"]["verdict"] in ("confirmed", "refuted", "within noise")
    assert v["nested targets beat plain 1-D tokens"]["per_measure"]["cfd_cfg2"]["seeds"] == [0]
    assert v["spectral at 16 matches raster at 64"]["verdict"] == "not run"
    for name in ("kinds_samples.png", "kinds_prefixes.png", "kinds_prefix_quality.png", "kinds_tables.md"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("gaps, how, want", [
    ((3.0, 2.0), "beats", "confirmed"),           # better in both seeds, mean 2.5 > noise 1
    ((3.0, -0.5), "beats", "within noise"),       # the seeds disagree
    ((0.4, 0.6), "beats", "within noise"),        # better in both, but by less than the noise
    ((-3.0, -2.0), "beats", "refuted"),
    ((-0.5, -0.7), "matches", "confirmed (within noise)"),
    ((-3.0, -2.0), "matches", "refuted"),
    ((3.0, 2.0), "matches", "confirmed (better beyond noise)"),
])
def test_verdict_rule(gaps, how, want):
    """Gaps are measured so that positive favours the claim's first run; lower-is-better measures flip sign."""
    for higher in (True, False):
        sign = 1 if higher else -1
        values = {"a": {0: 10 + sign * gaps[0], 1: 10 + sign * gaps[1]}, "b": {0: 10.0, 1: 10.0}}
        v = verdict(values, "a", "b", how, higher, noise=1.0)
        assert v["verdict"] == want and v["gap_per_seed"] == pytest.approx(list(gaps)), (higher, v)
    assert verdict({"a": {0: 1.0}, "b": {0: 2.0}}, "a", "b", "beats", True, None)["verdict"].startswith("one seed")


@pytest.mark.parametrize("argv, needle", [
    (["kinds", "--runs", "hexagon-16"], "hexagon-16"),
    (["kinds", "--runs", "raster-16,raster-16"], "distinct"),
    (["kinds", "--seeds", "0,0"], "seeds"),
    (["kinds", "--train-only", "--report-only"], "exclude"),
])
def test_bad_kinds_options_fail_in_one_line(argv, needle, tmp_path, capsys):
    assert experiments.main(argv + ["--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_run_names():
    assert RunSpec.parse("raster-64") == RunSpec("raster", 64) and RunSpec("1d", 16).name == "1d-16"
    with pytest.raises(ValueError, match="KIND-N"):
        RunSpec.parse("raster")
    KindsOptions(out="x").check()  # the defaults are a valid comparison
