"""`python -m spectralar.anytime`: the speed/quality curve of stopping after k tokens, scored by the machinery of
`python -m spectralar.evaluate generate` (the same samples at k = N give the same CFD and accuracy)."""

import json

import pytest
from fakedata import fake_fmnist

from spectralar import anytime, evaluate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_fmnist(tmp_path_factory.mktemp("data"), n_train=40, n_test=30)


def test_curve_at_every_budget_and_evaluate_at_all_tokens(data, tmp_path, capsys):
    common = ["--data", str(data), "--num-per-class", "2", "--real-num", "30", "--batch-size", "8", "--device", "cpu",
              "--seed", "3", "--cfg", "2"]
    assert anytime.main([*common, "--tokens", "1,6,16", "--repeats", "2", "--out", str(tmp_path / "a")]) == 0
    r = json.loads((tmp_path / "a" / "anytime.json").read_text())
    assert [row["tokens"] for row in r["rows"]] == [1, 6, 16] and r["num_generated"] == 20 and r["repeats"] == 2
    assert "not FID" in r["label"] and (tmp_path / "a" / "anytime.png").is_file()
    for row in r["rows"]:
        assert row["sampling_cpu_ms_per_image"] > 0 and row["decoding_wall_ms_per_image"] > 0
    assert r["rows"][-1]["sampling_cpu_vs_all_tokens"] == 1.0
    assert evaluate.main(["generate", *common, "--out", str(tmp_path / "e")]) == 0
    e = json.loads((tmp_path / "e" / "generate.json").read_text())["classifier"]
    assert r["rows"][-1]["cfd"] == e["cfd_generated_vs_real"]
    assert r["rows"][-1]["accuracy"] == e["accuracy_on_generated"]
    assert r["rows"][0]["cfd"] != r["rows"][-1]["cfd"]  # one token is not the whole image
    assert "k=  6: CFD" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [(["--tokens", "0,4"], "--tokens [0, 4]"), (["--tokens", "17"], "[1, 16]"),
                                          (["--repeats", "0"], "--repeats"), (["--cfg", "-1"], "--cfg")])
def test_bad_flags_fail_before_sampling(data, tmp_path, argv, needle, capsys, monkeypatch):
    monkeypatch.setattr(anytime, "sample_batches", lambda *a, **k: pytest.fail("sampled before refusing"))
    try:
        code = anytime.main(["--data", str(data), "--out", str(tmp_path), "--device", "cpu", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
