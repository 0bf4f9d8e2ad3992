"""The code in README.md and docs/kernels.md runs as printed (each file's blocks in order, one namespace)."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def prelude() -> dict:
    """Names the snippets take as given."""
    return {"torch": torch}


@pytest.mark.parametrize("doc", ["README.md", "docs/kernels.md"])
def test_code_blocks_run(doc):
    blocks = BLOCK.findall((ROOT / doc).read_text(encoding="utf-8"))
    assert len(blocks) >= 2, f"{doc}: expected python blocks"
    names = prelude()
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc} block {i + 1}", "exec"), names)
        except Exception as e:
            raise AssertionError(f"{doc}, python block {i + 1} fails: {type(e).__name__}: {e}\n{code}") from e


@pytest.mark.skipif(not torch.__version__.startswith("2.13."), reason="the picture was made with torch 2.13")
def test_readme_picture_is_what_the_first_command_writes(tmp_path, monkeypatch):
    """README's first command (`python -m spectralar.generate --kv-cache`, seed 0) writes docs/img/samples.png
    byte for byte, so the picture a new user sees is the one the README shows."""
    from spectralar.generate import main

    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")
    monkeypatch.chdir(tmp_path)
    assert main(["--kv-cache", "--device", "cpu"]) == 0
    assert (tmp_path / "samples.png").read_bytes() == (ROOT / "docs" / "img" / "samples.png").read_bytes()
