"""Ahead-of-time compile of every shipped Triton kernel for sm_80 and sm_90 (no GPU needed).

Each `spectralar_kernels.<op>.triton` lists its launch configurations in `aot_specs()`. Every one must
compile with ptxas, use no local memory (spills), stay within the arch's shared memory, and, when the
spec says so, contain tensor-core instructions. The compile + parse logic lives in
bench/kernel_resources.py (also a script that writes docs/kernel_resources.md); it runs once per
test session in a child process with the Triton interpreter off.
"""

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import kernel_resources as kr  # noqa: E402

from spectralar_kernels._common import AOTSpec  # noqa: E402


def _collect():
    """(op, specs or None, why-not) per op; import errors become failing cases, not collection errors."""
    out = []
    for op in kr.OPS:
        try:
            specs = kr.collect_specs((op,))[op]
        except Exception as e:  # a broken module must fail its own test, not hide the others
            out.append((op, None, f"importing spectralar_kernels.{op}.triton failed: {type(e).__name__}: {e}"))
            continue
        out.append((op, None, specs) if isinstance(specs, str) else (op, specs, ""))
    return out


COLLECTED = _collect()
CASES = []
for _op, _specs, _why in COLLECTED:
    if _specs is None:
        CASES.append(pytest.param(_op, None, None, _why, id=f"{_op}"))
        continue
    for _spec in _specs:
        for _arch in kr.ARCHS:
            CASES.append(pytest.param(_op, _spec.label, _arch, "", id=f"{_op}-{_spec.label}-sm{_arch}"))


@pytest.fixture(scope="session")
def aot_results():
    """Compile everything once per session: {(op, label, arch): Result}."""
    results, _missing = kr.compile_all()
    return {(r.op, r.label, r.arch): r for r in results}


@pytest.mark.parametrize("op, specs, why", COLLECTED, ids=[c[0] for c in COLLECTED])
def test_specs_well_formed(op, specs, why):
    if specs is None:
        if "does not exist yet" in why:
            pytest.skip(why)
        pytest.fail(why)
    assert specs, f"{op}: aot_specs() returned no configurations"
    labels = [s.label for s in specs]
    assert len(set(labels)) == len(labels) and all(labels), f"{op}: labels must be unique and non-empty: {labels}"
    for s in specs:
        assert isinstance(s, AOTSpec), f"{op}: {s!r} is not an AOTSpec"
        fn = getattr(s.kernel, "fn", s.kernel)  # the interpreter wraps the Python function
        params = list(inspect.signature(fn).parameters)
        assert list(s.signature) == params, f"{s.label}: signature keys {list(s.signature)} != kernel args {params}"
        constexpr_args = [k for k, v in s.signature.items() if v == "constexpr"]
        assert sorted(s.constexprs) == sorted(constexpr_args), f"{s.label}: constexpr values {sorted(s.constexprs)}"
        assert s.num_warps in (1, 2, 4, 8, 16, 32) and s.num_stages >= 1, s.label


@pytest.mark.parametrize("op, label, arch, why", CASES)
def test_compiles_without_spills(aot_results, op, label, arch, why):
    if label is None:
        if "does not exist yet" in why:
            pytest.skip(why)
        pytest.fail(why)
    result = aot_results.get((op, label, arch))
    assert result is not None, f"{op} {label} sm_{arch}: not compiled (labels changed between processes?)"
    assert not result.problems(), f"{label} sm_{arch}: " + "; ".join(result.problems())
    assert result.registers > 0 and result.shared_bytes >= 0, result


def test_parser_flags_problems():
    """The checks above can fail: the parsers and limits recognise bad kernels."""
    usage = (
        "Resource usage:\n Function _k:\n  REG:255 STACK:40 SHARED:0 LOCAL:8 CONSTANT[0]:448 TEXTURE:0\n"
        " Function _other:\n  REG:32 STACK:0 SHARED:16 LOCAL:0 CONSTANT[0]:448 TEXTURE:0\n"
    )
    assert kr.parse_resource_usage(usage, "_k") == (255, 48, 0)
    assert kr.parse_resource_usage(usage, "_other") == (32, 0, 16)
    assert kr.has_tensor_core_ops("        /*0a30*/                   HMMA.16816.F32 R4, R8, R12, R4 ;")
    assert kr.has_tensor_core_ops("  HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;")
    assert not kr.has_tensor_core_ops("  FFMA R4, R8, R12, R4 ;\n  IMMA.8816.S32 R0, R2, R4, R0 ;")
    ok = kr.Result(op="x", label="x", kernel="_k", arch=80, registers=64, spill_bytes=0, shared_bytes=1024)
    assert ok.problems() == []
    assert kr.Result(**{**vars(ok), "spill_bytes": 8}).problems()
    assert kr.Result(**{**vars(ok), "shared_bytes": kr.SHARED_LIMIT[80] + 1}).problems()
    assert not kr.Result(**{**vars(ok), "arch": 90, "shared_bytes": kr.SHARED_LIMIT[80] + 1}).problems()
    assert kr.Result(**{**vars(ok), "expect_tensor_cores": True}).problems()
    assert kr.Result(**{**vars(ok), "error": "ptxas error"}).problems()
