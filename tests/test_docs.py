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
