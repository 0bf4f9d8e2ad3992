"""`python -m spectralar.vary`: a real image's first k tokens kept, the rest re-sampled, laid out one row per image.
(Bad flags: tests/test_cli.py.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
from fakedata import fake_fmnist
from PIL import Image

from spectralar import vary
from spectralar.data import read_idx

TILE = 34  # a 32x32 image and the 2-pixel gap, at --scale 1


def tile(grid, row, col):
    return grid[2 + row * TILE:2 + row * TILE + 32, 2 + col * TILE:2 + col * TILE + 32]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    raw = read_idx(fake_fmnist(d / "data", n_train=2, n_test=2) / "t10k-images-idx3-ubyte.gz")[0]
    Image.fromarray(raw).save(d / "real.png")
    return d / "real.png"


def test_vary_keeps_the_prefix_and_resamples_the_rest(image, tmp_path, capsys):
    """Row: input, then per k a blank tile, the first k tokens alone and --num variations. k = 16 (all tokens) gives
    the reconstruction every time, k = 0 ignores the image; a fixed --seed gives the same picture."""
    out = tmp_path / "v.png"
    argv = [str(image), "--keep", "0,3,16", "--num", "3", "--class", "sandal", "--device", "cpu", "--scale", "1",
            "--seed", "5"]
    assert vary.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sampled as Sandal (--class)" in printed and "k = 0, 3, 16 of 16 tokens" in printed
    grid = np.asarray(Image.open(out))
    assert grid.shape == (TILE + 2, 16 * TILE + 2)  # 1 + 3 groups of (blank, kept, 3 variations)
    white = np.full((32, 32), 255, np.uint8)
    assert np.array_equal(tile(grid, 0, 1), white) and np.array_equal(tile(grid, 0, 2), white)  # k = 0: nothing kept
    full = [tile(grid, 0, c) for c in range(12, 16)]  # k = 16: the reconstruction, then three copies of it
    assert all(np.array_equal(f, full[0]) for f in full)
    three = [tile(grid, 0, c).tobytes() for c in range(8, 11)]
    assert len(set(three)) > 1  # k = 3: the detail is re-drawn
    again = tmp_path / "again.png"
    assert vary.main([*argv, "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_vary_without_class_asks_the_classifier(image, tmp_path, capsys):
    assert vary.main([str(image), str(image), "--keep", "8", "--num", "2", "--out", str(tmp_path / "v.png"),
                      "--device", "cpu", "--scale", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("the classifier's guess, p=" in line for line in lines) == 2


def test_vary_command_line(image, tmp_path):
    """The one subprocess run: `python -m spectralar.vary` as a user types it."""
    out = tmp_path / "v.png"
    r = subprocess.run([sys.executable, "-m", "spectralar.vary", str(image), "--keep", "4", "--num", "2", "--out",
                        str(out), "--device", "cpu", "--scale", "1"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out)).shape == (TILE + 2, 5 * TILE + 2)  # input, blank, kept, 2 variations
