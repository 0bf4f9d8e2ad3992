"""The backend policy: `auto` sends a CUDA call to a kernel only for a measured (op, variant, dtype, shape bucket,
device class) entry of measured.json; every other call, and every CPU call, runs the reference."""

import ast
import dataclasses
import importlib
import inspect
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from spectralar_kernels import _dispatch, use_backend
from spectralar_kernels._common import choose_kernel

ROOT = Path(__file__).resolve().parent.parent
KERNELS_DIR = ROOT / "kernels" / "src" / "spectralar_kernels"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
H200 = ("9.0", "NVIDIA H200")
H100 = ("9.0", "NVIDIA H100 80GB HBM3")


def fake_cuda(dtype=torch.bfloat16):
    """Stands in for a CUDA tensor: choose_kernel reads `.is_cuda` and `.dtype`; the device class is patched."""
    return SimpleNamespace(is_cuda=True, dtype=dtype)


@pytest.fixture
def on(monkeypatch):
    """on(device_class): CUDA calls come from that device; SPECTRALAR_KERNELS=auto."""
    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")

    def set_device(dev):
        monkeypatch.setattr(_dispatch, "device_class", lambda t: dev)

    set_device(H200)
    return set_device


@pytest.fixture
def mode(monkeypatch):
    def set_mode(value):
        monkeypatch.setenv("SPECTRALAR_KERNELS", value)

    set_mode("auto")
    return set_mode


# Sizes of the cases the H200 run measured (bench/cases.py), as the public functions pass them.
BLOCK8 = {"h": 256, "w": 256, "block": 8}
K16384 = {"k": 16384, "d": 12}


def test_the_h200_entries_are_kept_but_decide_nothing_since_their_code_changed(on, monkeypatch):
    """The H200 run of 2026-11-28: blockwise-v1 at block 8 on 256 x 256 planes, vq-v1 cosine at K = 16384 (the
    only cosine case where it beat matmul + argmax too), fp32 and bf16, that device only. Both kernels have been
    edited since (blockwise-v1: the NaN/inf fix-up pass; vq-v1: the exact ranking), so the entries carry no
    fingerprint of the installed code and auto runs the reference for them. Were this code measured the same,
    the keys would decide as below."""
    keys = {(op, v, dt, _dispatch.bucket_label(b), dev) for op, v, dt, b, dev in _dispatch.MEASURED}
    assert keys == {("dct2d", "blockwise", "fp32", "block=8 H=129..256 W=129..256", H200),
                    ("dct2d", "blockwise", "bf16", "block=8 H=129..256 W=129..256", H200),
                    ("vq_nearest", "cosine", "fp32", "K=8193..16384 d=9..16", H200),
                    ("vq_nearest", "cosine", "bf16", "K=8193..16384 d=9..16", H200)}  # fmt: skip
    assert not any(m.current for m in _dispatch.MEASURED.values())
    for dtype in (torch.float32, torch.bfloat16):
        assert choose_kernel("dct2d", "blockwise", fake_cuda(dtype), **BLOCK8) is None
        assert choose_kernel("vq_nearest", "cosine", fake_cuda(dtype), **K16384) is None
    remeasured = {k: dataclasses.replace(m, source=_dispatch.source_digest(m.kernel))
                  for k, m in _dispatch.MEASURED.items()}
    monkeypatch.setattr(_dispatch, "MEASURED", remeasured)
    for dtype in (torch.float32, torch.bfloat16):
        assert choose_kernel("dct2d", "blockwise", fake_cuda(dtype), **BLOCK8) == "blockwise-v1"
        assert choose_kernel("dct2d", "blockwise", fake_cuda(dtype), h=200, w=130, block=8) == "blockwise-v1"
        assert choose_kernel("vq_nearest", "cosine", fake_cuda(dtype), **K16384) == "vq-v1"
    # fp16 was never timed; l2 runs a centring launcher nobody timed; untimed buckets; no sizes at all
    assert choose_kernel("dct2d", "blockwise", fake_cuda(torch.float16), **BLOCK8) is None
    assert choose_kernel("vq_nearest", "l2", fake_cuda(), **K16384) is None
    for sizes in ({"h": 256, "w": 256, "block": 4}, {"h": 512, "w": 512, "block": 8}, {"h": 32, "w": 32, "block": 8},
                  {"h": 256, "w": 256, "block": 16}):  # fmt: skip
        assert choose_kernel("dct2d", "blockwise", fake_cuda(), **sizes) is None, sizes
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), k=4096, d=12) is None  # lost to matmul + argmax
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), k=16384, d=40) is None
    assert choose_kernel("vq_nearest", "cosine", fake_cuda()) is None
    on(H100)  # another device class: an H200 measurement decides nothing there
    assert choose_kernel("dct2d", "blockwise", fake_cuda(), **BLOCK8) is None
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) is None


@pytest.mark.parametrize("key", list(_dispatch.IMPLEMENTATIONS), ids="/".join)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_picks_only_measured_entries(on, key, dtype):
    """For every (op, variant, dtype) at its realistic sizes: a kernel only where an entry names one."""
    sizes = {"dct2d": BLOCK8, "spectral_subimages": {"s": 256}, "vq_nearest": K16384,
             "attention": {"t": 320, "d": 64, "bh": 768}, "attention_with_kvcache": {"t": 65, "d": 64, "bh": 2048}}
    chosen = choose_kernel(*key, fake_cuda(dtype), **sizes[key[0]])  # fmt: skip
    entry = _dispatch.MEASURED.get((*key, _dispatch.DTYPE_NAME[dtype], _dispatch.bucket(*key, **sizes[key[0]]), H200))
    if entry is None or not entry.current:  # no entry, or one for code that has changed since
        assert chosen is None
    else:
        assert chosen == entry.kernel and entry.speedup >= 1 and chosen in _dispatch.IMPLEMENTATIONS[key]


def test_buckets():
    b = _dispatch.bucket
    assert b("dct2d", "plane", h=256, w=256) == b("dct2d", "plane", h=129, w=200) == (("H", 256), ("W", 256))
    assert b("dct2d", "plane", h=257, w=256) == (("H", 512), ("W", 256))
    assert b("dct2d", "plane", h=1, w=256) == (("H", 1), ("W", 256))  # a 1-D dct is not a 256 x 256 plane
    assert b("dct2d", "plane", h=256, w=256, block=64) == (("H", 64), ("W", 64))  # gathered tiles run as planes
    assert b("dct2d", "blockwise", h=256, w=256, block=8) == (("block", 8), ("H", 256), ("W", 256))
    assert b("spectral_subimages", "one_window", s=33) == (("S", 64),)
    assert b("vq_nearest", "l2", k=4097, d=12) == (("K", 8192), ("d", 16))
    assert b("attention", "causal", t=65, d=80, bh=2048) == (("D", 80), ("T", 128), ("BH", 2048))
    assert b("attention_with_kvcache", "decode", t=1, d=64, bh=2) == (("D", 64), ("T", 1), ("BH", 2))
    assert b("vq_nearest", "l2") is None and b("vq_nearest", "l2", m=5, k=4) is None  # no/other sizes: no entry
    assert _dispatch.bucket_label(b("attention", "full", t=320, d=64, bh=768)) == "D=64 T=257..512 BH=513..1024"


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


GOOD = {"op": "vq_nearest", "variant": "cosine", "dtype": "bf16", "bucket": {"K": 16384, "d": 16},
        "device": {"capability": "9.0", "name": "NVIDIA H200"}, "kernel": "vq-v1", "speedup": 1.5,
        "report": "r", "date": "2026-12-02", "source": _dispatch.source_digest("vq-v1")}  # fmt: skip


@pytest.mark.parametrize("content", [None, "{not json", [], {"entries": {}}, {"entries": [{**GOOD, "speedup": "2"}]},
                                     {"entries": [{**GOOD, "device": {"name": "x"}}]},
                                     {"entries": [{**GOOD, "dtype": "fp64"}]}, {"entries": [3]}],
                         ids=["missing", "not-json", "list", "no-list", "str-speedup", "no-capability", "dtype",
                              "not-an-object"])  # fmt: skip
def test_a_missing_or_corrupt_table_means_the_reference_and_a_warning(tmp_path, content):
    path = tmp_path / "measured.json"
    if content is not None:
        _write(path, content)
    with pytest.warns(RuntimeWarning, match="run the PyTorch references"):
        assert _dispatch.load_measured(path) == {}


def test_the_table_reads_what_the_report_writes(tmp_path, on, monkeypatch):
    path = _write(tmp_path / "m.json", {"entries": [GOOD]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = _dispatch.load_measured(path)
    monkeypatch.setattr(_dispatch, "MEASURED", table)
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) == "vq-v1"
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(torch.float32), **K16384) is None
    row = "| vq_nearest | cosine | bf16 | K=8193..16384 d=9..16 | NVIDIA H200 (sm 9.0) | vq-v1 |"
    assert row in _dispatch.table_markdown()
    # importing with a corrupt file: a warning, the reference everywhere, no crash
    bad = _write(tmp_path / "bad.json", "{")
    monkeypatch.setattr(_dispatch, "MEASURED_PATH", bad)
    with pytest.warns(RuntimeWarning):
        monkeypatch.setattr(_dispatch, "MEASURED", _dispatch.load_measured(_dispatch.MEASURED_PATH))
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) is None


def test_an_entry_decides_only_for_the_code_it_measured(tmp_path, on, monkeypatch):
    """An edit to any source file of the measured kernel (or an entry that recorded none) voids the entry."""
    table = _dispatch.load_measured(_write(tmp_path / "m.json", {"entries": [GOOD]}))
    monkeypatch.setattr(_dispatch, "MEASURED", table)
    assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) == "vq-v1"
    src = tmp_path / "triton_v1.py"
    src.write_text("# the kernel as measured\n")
    monkeypatch.setitem(_dispatch.SOURCES, "vq-v1", (str(src),))  # absolute: read as is
    _dispatch.source_digest.cache_clear()
    try:
        measured = _dispatch.source_digest("vq-v1")
        monkeypatch.setattr(_dispatch, "MEASURED", _dispatch.load_measured(
            _write(tmp_path / "m2.json", {"entries": [{**GOOD, "source": measured}]})))
        assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) == "vq-v1"
        src.write_text("# the kernel as measured, then edited\n")
        _dispatch.source_digest.cache_clear()
        assert _dispatch.source_digest("vq-v1") != measured
        assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) is None
        assert "changed since (not used)" in _dispatch.table_markdown()
        no_source = {k: v for k, v in GOOD.items() if k != "source"}
        monkeypatch.setattr(_dispatch, "MEASURED", _dispatch.load_measured(
            _write(tmp_path / "m3.json", {"entries": [no_source]})))
        assert choose_kernel("vq_nearest", "cosine", fake_cuda(), **K16384) is None
    finally:
        _dispatch.source_digest.cache_clear()


def test_every_shipped_implementation_has_a_fingerprint():
    for impls in _dispatch.IMPLEMENTATIONS.values():
        for impl in impls:
            assert len(_dispatch.source_digest(impl) or "") == 16, impl


def test_an_unmeasured_rewrite_is_not_picked(on, mode, monkeypatch):
    """A winner whose measured implementation no longer ships sends auto back to the reference."""
    monkeypatch.setitem(_dispatch.IMPLEMENTATIONS, ("dct2d", "blockwise"), ("blockwise-v9",))
    assert choose_kernel("dct2d", "blockwise", fake_cuda(), **BLOCK8) is None
    mode("triton")
    assert choose_kernel("dct2d", "blockwise", fake_cuda(), **BLOCK8) == "blockwise-v9"


def test_cpu_tensors_take_the_reference_under_auto(mode):
    x = torch.zeros(2, dtype=torch.bfloat16)
    for op, variant in _dispatch.IMPLEMENTATIONS:
        assert choose_kernel(op, variant, x, **BLOCK8 if op == "dct2d" else {}) is None


def test_forced_modes(mode, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2)
    mode("ref")
    assert choose_kernel("vq_nearest", "l2", fake_cuda(), **K16384) is None
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


def _call_sites():
    """(file, op literal, variant literal or None, keyword names) of every choose_kernel call in kernels/."""
    sites = []
    for path in KERNELS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node.func, "id", getattr(node.func, "attr", "")) if isinstance(node, ast.Call) else ""
            if name == "choose_kernel" and node.args and isinstance(node.args[0], ast.Constant):
                variant = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
                sites.append((path.name, node.args[0].value, variant, {k.arg for k in node.keywords}))
    return sites


def test_every_call_site_names_a_known_op_and_passes_its_bucket_sizes():
    """choose_kernel("op", "variant", ..., sizes) in kernels/: a known (op, variant), and exactly the sizes its
    bucket rule takes (a call without them could never match an entry, so a measured kernel would never run)."""
    sites = _call_sites()
    assert len(sites) >= 7, sites
    ops = {op for op, _ in _dispatch.IMPLEMENTATIONS}
    for where, op, variant, keywords in sites:
        assert op in ops, f"{where}: unknown op {op!r}"
        assert variant is None or (op, variant) in _dispatch.IMPLEMENTATIONS, f"{where}: unknown {(op, variant)}"
        rule = inspect.signature(_dispatch._RULES[op])
        assert keywords == set(list(rule.parameters)[1:]), f"{where}: {op} passes {keywords}, its bucket takes {rule}"


def _asked(monkeypatch, *modules):
    """Replace choose_kernel in the op modules by a recorder of the buckets asked (it returns the reference)."""
    asked = []

    def record(op, variant, *tensors, **sizes):
        asked.append((op, variant, _dispatch.bucket(op, variant, **sizes)))

    for name in modules:
        monkeypatch.setattr(importlib.import_module(f"spectralar_kernels.{name}"), "choose_kernel", record)
    return asked


def test_public_functions_ask_with_the_bucket_of_the_call(monkeypatch):
    """What the public functions pass is the bucket of the call a user makes (so a report's probe and `auto`
    see the same bucket)."""
    import spectralar_kernels as sk

    asked = _asked(monkeypatch, "transforms", "subimages", "vq", "attn", "attn.sdpa", "attn.kvcache")
    x = torch.randn(2, 3, 48, 40)
    sk.dct2d(x, block=8)
    sk.idct2d(x)
    sk.dct(torch.randn(3, 300))
    sk.spectral_subimages(torch.randn(2, 1, 33, 33), torch.tensor([3, 33]))
    sk.vq_nearest(torch.randn(5, 12), torch.randn(4097, 12), "cosine")
    q = torch.randn(2, 65, 3, 80)
    sk.attention(q, q, q, causal=True)
    kc = torch.zeros(2, 20, 3, 80)
    with use_backend("triton"):  # under auto, CPU SDPA and decode calls never ask (they cannot run a kernel)
        qt = q.transpose(1, 2)
        sk.scaled_dot_product_attention(qt, qt, qt, is_causal=True)
        sk.attention_with_kvcache(q[:, :1], kc, kc.clone(), torch.tensor([3, 5], dtype=torch.int32),
                                  q[:, :1], q[:, :1])  # fmt: skip
    want = [("dct2d", "blockwise", (("block", 8), ("H", 64), ("W", 64))),
            ("dct2d", "plane", (("H", 64), ("W", 64))),
            ("dct2d", "plane", (("H", 1), ("W", 512))),
            ("spectral_subimages", "one_window", (("S", 64),)),
            ("vq_nearest", "cosine", (("K", 8192), ("d", 16))),
            ("attention", "causal", (("D", 80), ("T", 128), ("BH", 8))),
            ("attention", "causal", (("D", 80), ("T", 128), ("BH", 8))),
            ("attention_with_kvcache", "decode", (("D", 80), ("T", 32), ("BH", 8)))]  # fmt: skip
    assert asked == want


def test_big_blocks_follow_the_plane_decision(monkeypatch):
    """Blocks above BLOCKWISE_MAX run the whole-plane kernel on gathered tiles, so they must be dispatched
    under the plane decision, never under the blockwise kernel's measured win."""
    dct = importlib.import_module("spectralar_kernels.transforms")
    asked = _asked(monkeypatch, "transforms")
    x = torch.randn(2, 66, 66)
    for block in (None, 2, dct.BLOCKWISE_MAX, 33):
        dct.dct2d(x if block != dct.BLOCKWISE_MAX else torch.randn(64, 64), block=block)
    assert [a[:2] for a in asked] == [("dct2d", "plane"), ("dct2d", "blockwise"), ("dct2d", "blockwise"),
                                      ("dct2d", "plane")]  # fmt: skip
    assert asked[-1][2] == (("H", 64), ("W", 64))


def test_use_backend_overrides_the_environment_and_restores(monkeypatch):
    """`use_backend` wins over SPECTRALAR_KERNELS inside its block, nests, and restores on exit and on error."""
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


def test_the_table_ships_and_the_docs_list_every_entry():
    """measured.json is package data of both installs, and docs/benchmarks.md lists every entry `auto` reads
    with its bucket, device class and report."""
    assert '"measured.json"' in (ROOT / "setup.py").read_text(encoding="utf-8")
    assert '["measured.json"]' in (ROOT / "kernels" / "pyproject.toml").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    table = _dispatch.table_markdown().splitlines()[2:]
    assert table and all(row in doc for row in table), "docs/benchmarks.md: paste _dispatch.table_markdown()"


def test_backend_choice_traces_under_torch_compile(monkeypatch):
    """Compiled code (generate(compile=True), the custom decode op's callers) reads the backend too: Dynamo cannot
    trace ContextVar.get, so a compiled step used to fail outright; now it sees the innermost `use_backend` block,
    else SPECTRALAR_KERNELS."""
    from spectralar_kernels._common import kernels_mode

    monkeypatch.setenv("SPECTRALAR_KERNELS", "auto")

    def step(x):
        return x + (1 if kernels_mode() == "ref" else 2)

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    x = torch.zeros(2)
    assert compiled(x).tolist() == [2.0, 2.0]
    with use_backend("ref"):
        assert compiled(x).tolist() == [1.0, 1.0]  # a guard on the mode: retraced, not the stale graph
    assert compiled(x).tolist() == [2.0, 2.0]
