"""The backend policy: `auto` sends CUDA users only to kernels measured faster than the reference."""

import ast
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from spectralar_kernels import _dispatch
from spectralar_kernels._common import choose_kernel

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels" / "src" / "spectralar_kernels"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fake_cuda(dtype=torch.bfloat16):
    """Stands in for a CUDA tensor: choose_kernel reads only `.is_cuda` and `.dtype`."""
    return SimpleNamespace(is_cuda=True, dtype=dtype)


@pytest.fixture
def mode(monkeypatch):
    def set_mode(value):
        monkeypatch.setenv("SPECTRALAR_KERNELS", value)

    set_mode("auto")
    return set_mode


@pytest.mark.parametrize("key", list(_dispatch.IMPLEMENTATIONS), ids="/".join)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_picks_only_measured_winners(mode, key, dtype):
    op, variant = key
    chosen = choose_kernel(op, variant, fake_cuda(dtype))
    entry = _dispatch.MEASURED.get((op, variant, _dispatch.DTYPE_NAME[dtype]))
    if chosen is None:
        assert entry is None or entry.speedup < 1 or entry.kernel not in _dispatch.IMPLEMENTATIONS[key]
    else:
        assert entry is not None and entry.speedup >= 1.0 and chosen == entry.kernel
        assert chosen in _dispatch.IMPLEMENTATIONS[key]


def test_decisions_of_the_measured_run():
    """The H200 run of 2026-11-28: only the blockwise DCT and the VQ lookup beat their references."""
    winners = {k[:2] for k, m in _dispatch.MEASURED.items() if m.speedup >= 1}
    assert winners == {("dct2d", "blockwise"), ("vq_nearest", "l2"), ("vq_nearest", "cosine")}
    for (op, variant), _ in _dispatch.IMPLEMENTATIONS.items():
        assert choose_kernel(op, variant, fake_cuda(torch.float16)) is None or _dispatch.MEASURED.get(
            (op, variant, "fp16")
        ), "fp16 was never timed: auto must run the reference"


def test_an_unmeasured_rewrite_is_not_picked(mode, monkeypatch):
    """A winner whose measured implementation no longer ships sends auto back to the reference."""
    monkeypatch.setitem(_dispatch.IMPLEMENTATIONS, ("dct2d", "blockwise"), ("blockwise-v9",))
    assert choose_kernel("dct2d", "blockwise", fake_cuda()) is None
    mode("triton")
    assert choose_kernel("dct2d", "blockwise", fake_cuda()) == "blockwise-v9"


def test_cpu_tensors_take_the_reference_under_auto(mode):
    x = torch.zeros(2, dtype=torch.bfloat16)
    for op, variant in _dispatch.IMPLEMENTATIONS:
        assert choose_kernel(op, variant, x) is None


def test_forced_modes(mode, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2)
    mode("ref")
    assert choose_kernel("vq_nearest", "l2", fake_cuda()) is None
    mode("triton")
    for key, impls in _dispatch.IMPLEMENTATIONS.items():
        assert choose_kernel(*key, x) == impls[-1]
    mode("triton:" + ",".join(impls[0] for impls in _dispatch.IMPLEMENTATIONS.values()))
    for key, impls in _dispatch.IMPLEMENTATIONS.items():
        assert choose_kernel(*key, x) == impls[0]
    mode("triton:blockwise-v9")  # a typo must not silently run another implementation
    with pytest.raises(ValueError, match="blockwise-v9"):
        choose_kernel("dct2d", "blockwise", x)
    mode("fast")
    with pytest.raises(ValueError, match="SPECTRALAR_KERNELS"):
        choose_kernel("vq_nearest", "l2", x)
    mode("ref:vq-v1")
    with pytest.raises(ValueError, match="SPECTRALAR_KERNELS"):
        choose_kernel("vq_nearest", "l2", x)


def test_every_call_site_names_a_known_op_and_variant():
    """choose_kernel("op", "variant", ...) literals in kernels/ all index IMPLEMENTATIONS (a typo would
    raise a KeyError only under SPECTRALAR_KERNELS=triton, and silently run the reference under auto)."""
    sites = []
    for path in KERNELS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node.func, "id", getattr(node.func, "attr", "")) if isinstance(node, ast.Call) else ""
            if name == "choose_kernel":
                args = node.args[:2]
                if all(isinstance(a, ast.Constant) for a in args):
                    sites.append((path.name, args[0].value, args[1].value))
                elif isinstance(args[0], ast.Constant):
                    sites.append((path.name, args[0].value, None))
    assert sites, "expected choose_kernel call sites in kernels/"
    ops = {op for op, _ in _dispatch.IMPLEMENTATIONS}
    for where, op, variant in sites:
        assert op in ops, f"{where}: unknown op {op!r}"
        if variant is not None:
            assert (op, variant) in _dispatch.IMPLEMENTATIONS, f"{where}: unknown variant {(op, variant)}"


def test_table_markdown_lists_every_decision():
    text = _dispatch.table_markdown()
    rows = [r for r in text.splitlines() if r.startswith("| ") and not r.startswith("| op ")]
    assert len(rows) == 3 * len(_dispatch.IMPLEMENTATIONS)
    assert sum("| blockwise-v1 | blockwise-v1 |" in r for r in rows) == 2


def test_big_blocks_follow_the_plane_decision(monkeypatch):
    """Blocks above BLOCKWISE_MAX run the whole-plane kernel on gathered tiles, so they must be dispatched
    under the plane decision, never under the blockwise kernel's measured win."""
    dct = importlib.import_module("spectralar_kernels.transforms")

    asked = []
    monkeypatch.setattr(dct, "choose_kernel", lambda op, variant, *t: asked.append((op, variant)))
    x = torch.randn(2, 66, 66)
    for block in (None, 2, dct.BLOCKWISE_MAX, 33):
        dct.dct2d(x if block != dct.BLOCKWISE_MAX else torch.randn(64, 64), block=block)
    assert asked == [("dct2d", "plane"), ("dct2d", "blockwise"), ("dct2d", "blockwise"), ("dct2d", "plane")]


def test_use_backend_overrides_the_environment_and_restores(monkeypatch):
    """`use_backend` wins over SPECTRALAR_KERNELS inside its block, nests, and restores on exit and on error."""
    from spectralar_kernels import use_backend
    from spectralar_kernels._common import kernels_mode

    monkeypatch.setenv("SPECTRALAR_KERNELS", "triton")
    assert choose_kernel("dct2d", "blockwise", fake_cuda()) == _dispatch.latest("dct2d", "blockwise")
    with use_backend("ref"):
        assert choose_kernel("dct2d", "blockwise", fake_cuda()) is None
        with use_backend("triton:blockwise-v1"):
            assert choose_kernel("dct2d", "blockwise", fake_cuda()) == "blockwise-v1"
        assert kernels_mode() == "ref"
    with pytest.raises(KeyError), use_backend("REF"):
        assert kernels_mode() == "ref"
        raise KeyError("inside")
    assert kernels_mode() == "triton"
    with pytest.raises(ValueError, match="SPECTRALAR_KERNELS must be one of"):
        with use_backend("fast"):
            pass
    assert kernels_mode() == "triton"
