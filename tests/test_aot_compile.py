"""Ahead-of-time compile of every shipped Triton kernel for sm_80 and sm_90 (no GPU needed).

Each kernel module (`aot.MODULES`) lists its launch configurations in `aot_specs()`. Every one
is compiled as the JIT compiles it for the benchmark shapes and must compile with ptxas, use no local memory
(spills), stay within the arch's shared memory and, when the spec says so, contain tensor-core instructions.
An op's main-loop kernel must also show its design in the SASS: on sm_90, wgmma (HGMMA) for fp16/bf16
products of the GEMM-shaped ops, cp.async (or TMA) loads, 128-bit loads. The compile + parse logic lives in
spectralar_kernels.testing.aot (bench/kernel_resources.py writes its table to docs/kernel_resources.md); it runs
once per test session in a child process with the Triton interpreter off.
"""

import inspect
import json
import os
import subprocess
import sys

import pytest

from spectralar_kernels._common import AOTSpec
from spectralar_kernels.testing import aot as kr


def _collect():
    """(module, specs or None, why-not) per module; import errors become failing cases, not collection errors."""
    out = []
    for mod in kr.MODULES:
        try:
            specs = kr.collect_specs((mod,))[mod]
        except Exception as e:  # a broken module must fail its own test, not hide the others
            out.append((mod, None, f"importing spectralar_kernels.{mod} failed: {type(e).__name__}: {e}"))
            continue
        out.append((mod, None, specs) if isinstance(specs, str) else (mod, specs, ""))
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
    """Compile everything once per session: {(module, label, arch): Result}."""
    results, _missing = kr.compile_all()
    return {(r.module, r.label, r.arch): r for r in results}


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
        assert s.op in kr.RECORD_OPS, f"{s.label}: op {s.op!r} not one of {kr.RECORD_OPS}"
        assert s.dtype in ("fp32", "fp16", "bf16"), f"{s.label}: dtype {s.dtype!r}"
        assert s.values is not None, f"{s.label}: no benchmark-shape `values`, so it cannot be compiled JIT-like"
        int_args = [k for k, v in s.signature.items() if v[0] in "iu"]
        missing = [k for k in int_args if k not in s.values]
        assert not missing, f"{s.label}: `values` lacks integer arguments {missing}"


@pytest.mark.parametrize("op, label, arch, why", CASES)
def test_compiles_without_spills(aot_results, op, label, arch, why):
    if label is None:
        if "does not exist yet" in why:
            pytest.skip(why)
        pytest.fail(why)
    result = aot_results.get((op, label, arch))
    assert result is not None, f"{op} {label} sm_{arch}: not compiled (labels changed between processes?)"
    assert not result.problems(), f"{label} sm_{arch}: " + "; ".join(result.problems())
    assert result.registers > 0 and result.shared_bytes >= 0 and result.jit_like, result


def test_every_op_has_a_checked_main_loop(aot_results):
    """No op escapes the design rules by declaring no main-loop kernel, and on sm_90 each op's fp16/bf16
    main loops of the GEMM-shaped ops carry HGMMA (the same rule as `problems`, asserted per op here)."""
    for op in kr.RECORD_OPS:
        mains = [r for r in aot_results.values() if r.op == op and r.main]
        assert mains, f"{op}: no spec marked main=True"
        for dtype in ("fp32", "fp16", "bf16"):
            assert any(r.dtype == dtype for r in mains), f"{op}: no main-loop spec for {dtype}"
        if op in kr.HGMMA_OPS:
            low = [r for r in mains if r.arch == 90 and r.dtype in ("fp16", "bf16")]
            assert low and all(r.hgmma > 0 for r in low), [(r.label, r.hgmma) for r in low]


def test_json_records(tmp_path, aot_results):
    """`python -m spectralar_kernels.testing.aot --json PATH`: one record per compiled kernel, the documented fields."""
    out = tmp_path / "records.json"
    assert kr.main(["--ops", "transforms.aot", "--arch", "90", "--json", str(out)]) in (0, 1)
    records = [r for r in json.loads(out.read_text()) if r["op"] == "blockwise"]
    assert records and all(r["arch"] == "sm_90" for r in records)
    keys = {"op", "kernel", "config", "arch", "dtype", "jit_like", "registers", "spill_bytes", "shared_bytes",
            "hgmma", "hmma", "ldgsts", "ldg128"}  # fmt: skip
    assert all(keys <= set(r) for r in records), sorted(set(records[0]) ^ keys)
    by_config = {(r["config"], r["arch"]): r for r in records}
    for r in aot_results.values():  # the CLI and the session compile agree
        key = (f"{r.label} (warps={r.num_warps}, stages={r.num_stages})", f"sm_{r.arch}")
        if r.module == "transforms.aot" and key in by_config:
            assert by_config[key]["registers"] == r.registers and by_config[key]["hgmma"] == r.hgmma


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
    ok = kr.Result(op="x", label="x", kernel="_k", arch=80, jit_like=True, registers=64, spill_bytes=0,
                   shared_bytes=1024)  # fmt: skip
    assert ok.problems() == []
    assert kr.Result(**{**vars(ok), "spill_bytes": 8}).problems()
    assert kr.Result(**{**vars(ok), "shared_bytes": kr.SHARED_LIMIT[80] + 1}).problems()
    assert not kr.Result(**{**vars(ok), "arch": 90, "shared_bytes": kr.SHARED_LIMIT[80] + 1}).problems()
    assert kr.Result(**{**vars(ok), "expect_tensor_cores": True}).problems()
    assert kr.Result(**{**vars(ok), "error": "ptxas error"}).problems()


def test_design_rules_flag_problems():
    """The SASS counter and the main-loop rules recognise a kernel that misses its design."""
    sass = "\n".join([
        "        /*0100*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;",
        "        /*0110*/              @!P0 LDG.E.128 R8, desc[UR4][R2.64] ;",
        "        /*0120*/                   LDG.E.U16 R9, desc[UR4][R2.64] ;",
        "        /*0130*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;",
        "        /*0140*/                   STG.E.128 desc[UR4][R6.64], R8 ;",
        "        /*0150*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;",
    ])  # fmt: skip
    counts = kr.count_instructions(sass)
    assert counts == {"hgmma": 1, "hmma": 1, "ldgsts": 1, "tma": 0, "ldg128": 2, "stg128": 1}, counts
    good = kr.Result(op="attention", label="x", kernel="_k", arch=90, dtype="bf16", jit_like=True, registers=128,
                     spill_bytes=0, shared_bytes=1024, main=True, hgmma=4, ldgsts=8, ldg128=8)  # fmt: skip
    assert good.problems() == []
    assert any("HGMMA" in p for p in kr.Result(**{**vars(good), "hgmma": 0}).problems())
    assert not kr.Result(**{**vars(good), "hgmma": 0, "arch": 80}).problems()  # no wgmma before sm_90
    assert not kr.Result(**{**vars(good), "hgmma": 0, "op": "vq"}).problems()  # VQ's products are tiny
    assert any("cp.async" in p for p in kr.Result(**{**vars(good), "ldgsts": 0}).problems())
    assert not kr.Result(**{**vars(good), "ldgsts": 0, "tma": 2}).problems()
    assert any("128-bit global loads" in p for p in kr.Result(**{**vars(good), "ldg128": 0}).problems())
    assert any("stores" in p for p in kr.Result(**{**vars(good), "wide_stores": True}).problems())
    assert any("JIT-like" in p for p in kr.Result(**{**vars(good), "jit_like": False}).problems())


# ---- attention (attn/aot.py): specs live outside the runtime modules and cover the launchers ----------------


def test_attention_specs_live_outside_the_runtime_modules():
    """The launchers' modules carry kernels only: importing them builds no AOTSpec, and `attn.aot` is the one
    attention module the AOT check compiles."""
    import spectralar_kernels.attn.decode as decode
    import spectralar_kernels.attn.triton as attn_triton

    for module in (attn_triton, decode):
        assert not hasattr(module, "aot_specs"), module.__name__
        assert "AOTSpec" not in vars(module), module.__name__
    assert "attn.aot" in kr.MODULES
    assert not {"attn.triton", "attn.decode"} & set(kr.MODULES)


def test_decode_specs_cover_the_launcher():
    """Every decode spec is a one-token benchmark-shape compile (values given), the decode kernel is `main`,
    and both the direct and the split-K configurations appear for every dtype."""
    from spectralar_kernels.attn import aot as attn_aot

    specs = attn_aot.decode_specs()
    assert all(s.values is not None and s.op == "decode" and s.dtype for s in specs)
    mains = [s for s in specs if s.main]
    for dt in ("fp32", "fp16", "bf16"):
        kinds = {(s.constexprs["SPLIT"], s.constexprs["HAS_NEW"]) for s in mains if s.dtype == dt}
        assert kinds == {(False, False), (False, True), (True, False), (True, True)}, (dt, kinds)
    assert all(s.expect_tensor_cores == (s.dtype != "fp32") for s in mains)


def _training_specs():
    from spectralar_kernels.attn import aot as attn_aot

    return attn_aot.training_specs()


def test_attention_specs_cover_the_autotune_lists():
    """Every tile config an autotuned launcher can choose (the union of its tables, per dtype and head-dim block)
    has a spec for fp32/fp16/bf16 as that table says, and the autotune key tells the mask kinds apart."""
    from spectralar_kernels.attn import triton as attn_triton

    specs = _training_specs()
    compiled = {(s.kernel, s.dtype, s.constexprs["BLOCK_D"], s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"],
                 s.num_warps, s.num_stages) for s in specs}  # fmt: skip
    for what, (kernel, table) in attn_triton._KERNELS.items():
        for (klass, block_d), configs in table.items():
            for dtype in ("fp32",) if klass == "fp32" else ("fp16", "bf16"):
                for m, n, warps, stages in configs:
                    assert (kernel, dtype, block_d, m, n, warps, stages) in compiled, (what, dtype, block_d, m, n)
        tuned = attn_triton._tuned(what)
        listed = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in tuned.configs}
        assert listed == {c for configs in table.values() for c in configs}, what
        # Encoder (prefix-LM), decoder (full) and generator (causal) at one T and D: three autotune keys.
        assert "prefix_len" in tuned.keys and {"T", "D"} <= set(tuned.keys), tuned.keys
    t = 320
    kinds = {attn_triton._visible_prefix(causal, p, t) for causal, p in ((False, 0), (True, 0), (True, 256))}
    assert kinds == {t, 0, 256}
    # One form per mask: a prefix of 1 is plain causal, a prefix covering T is full, `causal=False` ignores it.
    assert attn_triton._visible_prefix(True, 1, t) == 0 and attn_triton._visible_prefix(True, t, t) == t
    assert attn_triton._visible_prefix(False, 7, t) == t


def test_attention_tiles_reach_their_planned_occupancy(aot_results):
    """On sm_90 every attention tile reaches the CTAs per SM its table plans (registers x warps and shared memory
    + 1 KB per CTA within the SM), the default (first) entry of every list at least 2; head dim 128 included,
    whose forward needed 132 KB (1 CTA per SM) and whose backward ran at 249-255 registers before."""
    from spectralar_kernels.attn import aot as attn_aot
    from spectralar_kernels.attn import triton as attn_triton

    specs = _training_specs()
    defaults = {(kernel, klass, block_d, configs[0]) for kernel, table in attn_triton._KERNELS.values()
                for (klass, block_d), configs in table.items() if configs}  # fmt: skip
    low = []
    for spec in specs:
        r = aot_results[("attn.aot", spec.label, 90)]
        ctas = attn_aot.ctas_per_sm(r.registers, r.shared_bytes, r.num_warps, 90)
        planned = attn_aot.planned_ctas_per_sm(spec)
        c = spec.constexprs
        key = (spec.kernel, "fp32" if spec.dtype == "fp32" else "lowp", c["BLOCK_D"],
               (c["BLOCK_M"], c["BLOCK_N"], spec.num_warps, spec.num_stages))  # fmt: skip
        if key in defaults:
            assert planned >= attn_triton.MIN_CTAS_PER_SM, spec.label
        if ctas < planned or r.spill_bytes:
            low.append((spec.label, r.registers, r.shared_bytes, ctas, planned))
        assert r.shared_bytes + 1024 <= attn_aot.SM_SHARED[90] // planned, (spec.label, r.shared_bytes)
    assert not low, low
    d128 = [s for s in specs if s.constexprs["BLOCK_D"] == 128 and s.dtype != "fp32"]
    assert {s.kernel for s in d128} == {kernel for kernel, _ in attn_triton._KERNELS.values()}
    assert all(attn_aot.planned_ctas_per_sm(s) >= 2 for s in d128)


def _assert_pipelined(labels):
    from spectralar_kernels.attn import aot as attn_aot

    report = attn_aot.loop_report(labels, archs=(90,))
    assert set(report) == {(label, 90) for label in labels}
    for (label, _arch), loops in report.items():
        assert loops, f"{label}: no loop issues cp.async"
        for loop in loops:
            assert loop.waits and not loop.drains, f"{label}: loop {loop} drains every load each step"
    bwd = [loops for (label, _), loops in report.items() if " bwd " in label]
    assert all(len(loops) == 4 for loops in bwd)  # dK/dV and dQ, each unmasked + masked


def test_attention_backward_overlaps_loads_with_compute():
    """The default backward tiles (bf16 at D = 64 and 128, fp32 at D = 64) keep the next step's cp.async loads
    in flight in all four loops (sm_90 SASS). The old 2-stage backward drained them at the top of every step.
    Every config of the tables: the slow test below."""
    from spectralar_kernels.attn import triton as attn_triton

    wanted = [("bf16", 64), ("bf16", 128), ("fp32", 64)]
    labels = []
    for dtype, block_d in wanted:
        m, n, warps, stages = attn_triton._BWD_CONFIGS[("fp32" if dtype == "fp32" else "lowp", block_d)][0]
        labels.append(f"attention bwd {dtype} D={block_d} {m}x{n} w{warps} s{stages} prefix")
    assert set(labels) <= {s.label for s in _training_specs()}, labels
    _assert_pipelined(labels)


@pytest.mark.slow
def test_attention_loops_overlap_loads_with_compute():
    """Pipelining, read from the sm_90 SASS: every loop of the attention kernels (backward, forward) that loads
    through cp.async waits with `DEPBAR.LE SB0, N`, N > 0, so the next step's loads stay in flight while this
    step computes. The 2-stage backward waited with N = 0 at the top of every step (all loads drained).
    Every tile config of the tables once (bf16 and fp32 at the prefix-LM shape: fp16 and the causal shape compile
    to the same loops), ~30 disassemblies."""
    labels = [s.label for s in _training_specs() if s.dtype != "fp16" and s.label.endswith(" prefix")]
    assert any(" fwd " in label for label in labels) and any(" bwd " in label for label in labels)
    _assert_pipelined(labels)


def test_loop_waits_reads_the_wait_pattern():
    """The SASS reader behind the pipelining test sees a drained loop, a pipelined one, and ignores loops that
    issue no cp.async and forward branches."""
    from spectralar_kernels.attn import aot as attn_aot

    def line(addr, text):
        return f"        /*{addr:04x}*/                   {text} ;      /* 0x000 */"

    drained = [line(0x10, "DEPBAR.LE SB0, 0x0"), line(0x20, "HGMMA.64x32x16.F32.BF16 R88, gdesc[UR32], RZ"),
               line(0x30, "LDGSTS.E.BYPASS.128 [R2+0x8000], desc[UR52][R40.64], P6"), line(0x40, "LDGDEPBAR"),
               line(0x50, "@!P0 BRA 0x10")]  # fmt: skip
    loops = attn_aot.loop_waits("\n".join(drained))
    assert [(x.start, x.end, x.ldgsts, x.waits, x.drains) for x in loops] == [(0x10, 0x50, 1, (0,), True)]
    piped = "\n".join(drained).replace("SB0, 0x0", "SB0, 0x4")
    assert [(x.waits, x.drains) for x in attn_aot.loop_waits(piped)] == [((4,), False)]
    no_copy = [line(0x60, "DEPBAR.LE SB0, 0x0"), line(0x70, "FFMA R1, R2, R3, R1"), line(0x80, "@P1 BRA 0x60"),
               line(0x90, "@P0 BRA 0xa0"), line(0xA0, "EXIT")]  # fmt: skip
    assert attn_aot.loop_waits("\n".join(no_copy)) == []
    assert len(attn_aot.loop_waits("\n".join(drained + no_copy))) == 1


def test_ctas_per_sm_limits():
    """The occupancy rule: registers per warp in units of 256, 1 KB of shared memory reserved per CTA."""
    from spectralar_kernels.attn.aot import ctas_per_sm

    assert ctas_per_sm(128, 0, 8, 90) == 2 and ctas_per_sm(129, 0, 8, 90) == 1  # 64K registers per SM
    assert ctas_per_sm(168, 0, 4, 90) == 3 and ctas_per_sm(255, 0, 4, 90) == 2
    assert ctas_per_sm(32, 115712, 4, 90) == 2 and ctas_per_sm(32, 115713, 4, 90) == 1  # 228 KB per SM
    assert ctas_per_sm(32, 90112, 4, 80) == 1 and ctas_per_sm(32, 90112, 4, 90) == 2  # 164 KB on sm_80
    assert ctas_per_sm(16, 0, 1, 90) == 32  # at most 32 CTAs


def test_interpreter_runs_the_default_config(monkeypatch):
    """Without a GPU the launchers never build the autotuner: the interpreter runs the first config of the pruned
    list, the one the occupancy test holds to at least 2 CTAs per SM."""
    import torch

    from spectralar_kernels.attn import triton as attn_triton

    def no_autotune(name):
        raise AssertionError(f"the interpreter path built the {name} autotuner")

    launched = []

    class Recording:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append((kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs["num_stages"]))
                return self.kernel[grid](*args, **kwargs)

            return launch

    kernels = {name: (Recording(kernel), table) for name, (kernel, table) in attn_triton._KERNELS.items()}
    monkeypatch.setattr(attn_triton, "_tuned", no_autotune)
    monkeypatch.setattr(attn_triton, "_KERNELS", kernels)
    q, k, v, do = (torch.randn(1, 70, 1, 64, generator=torch.Generator().manual_seed(i)) for i in range(4))
    out, lse = attn_triton.attention_fwd(q, k, v, True, 5, 0.125)
    attn_triton.attention_bwd(do, q, k, v, out, lse, True, 5, 0.125)
    assert launched == [attn_triton._FWD_CONFIGS[("fp32", 64)][0], attn_triton._BWD_CONFIGS[("fp32", 64)][0]]
def _plane_main_loops() -> dict:
    """{label: loop_facts} of plane-v2's main-loop configurations on sm_90, from
    `python -m spectralar_kernels.transforms.aot` in a child with the interpreter off (as compile_all runs)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, "-m", "spectralar_kernels.transforms.aot", "--arch", "90"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)


def test_plane_v2_main_loop_is_pipelined():
    """plane-v2 at BLOCK_M = 256 on sm_90, read from the SASS of its main loop: every global load in it is a
    cp.async (the X and L tiles both arrive NUM_STAGES - 1 steps ahead; the earlier form loaded L with plain
    LDG.128 + STS before an inner loop that restarted its pipeline every chunk), and fp16/bf16 run on wgmma with
    the iteration's last product left running across the back-branch (the earlier form waited for each
    256x64x64 product where it was issued) and at most one wgmma wait per iteration."""
    loops = _plane_main_loops()
    assert {lab.split()[2] for lab in loops} == {"fp32", "fp16", "bf16"}, sorted(loops)
    for label, facts in loops.items():
        assert facts["found"] and facts["ldgsts"] > 0 and facts["ldg"] == 0, (label, facts)
        if "fp32" not in label:
            assert facts["hgmma"] > 0 and facts["async_tail"] is True and len(facts["waits"]) <= 1, (label, facts)


def test_loop_facts_flags_the_earlier_plane_loop():
    """The SASS reading can fail: a loop with a plain LDG of a tile and a synchronous wait after its last wgmma
    (the structure of the earlier plane-v2) is reported as such."""
    from spectralar_kernels.transforms.aot import loop_facts

    sass = "\n".join(f"        /*{0x100 + 0x10 * i:04x}*/ {op} ;" for i, op in enumerate([
        "LDG.E.128 R88, desc[UR40][R14.64]", "STS.128 [R106+UR7], R88",
        "LDGSTS.E.BYPASS.128 [R109+0x8000], desc[UR40][R16.64]", "WARPGROUP.ARRIVE",
        "HGMMA.64x64x16.F32.BF16 R56, gdesc[UR16].tnspB, R56, gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "@!P0 BRA 0x100",
    ]))  # fmt: skip
    facts = loop_facts(sass)
    assert facts == {"found": True, "ldgsts": 1, "ldg": 1, "hgmma": 1, "waits": [0], "async_tail": False}, facts
    assert loop_facts("        /*0100*/ EXIT ;") == {"found": False}


def test_resident_ctas_from_resources():
    """The occupancy rule the blockwise-v2 launcher plans its persistent grid with (and these tests use)."""
    from spectralar_kernels.transforms.blockwise import resident_ctas

    assert resident_ctas(141, 82944, 8) == 1  # the earlier plane-v2 bf16: 141 registers x 8 warps
    assert resident_ctas(149, 51200, 8) == 1  # the earlier blockwise-v2 fp32 KW=16
    assert resident_ctas(168, 51200, 4) == 3  # 4 warps: registers allow 3
    assert resident_ctas(100, 50176, 4) == 4  # shared memory allows 4
    assert resident_ctas(32, 2560, 2) == 32 and resident_ctas(33, 2560, 2) == 25  # the CTA limit, then registers


def test_occupancy_of_the_redesigned_dct_kernels(aot_results):
    """On sm_90: plane-v2 fp16/bf16 at BLOCK_M = 256 fit >= 2 CTAs per SM (registers and shared memory), fp32 reads
    X in 64-wide strips (4 times at 256 x 256, not 8); blockwise-v2's plan from resources gives 4 CTAs per SM
    for fp16/bf16 and 3 for fp32 16-wide products (PROGRAMS_PER_SM = 4 planned 1 CTA's worth too many before)."""
    from spectralar_kernels.transforms.aot import _plane_specs
    from spectralar_kernels.transforms.blockwise import resident_ctas

    recs = {r.label: r for (mod, _, arch), r in aot_results.items() if mod == "transforms.aot" and arch == 90}
    for dt in ("fp16", "bf16"):
        r = recs[f"dct2d plane-v2 {dt} BLOCK_M=256"]
        assert resident_ctas(r.registers, r.shared_bytes, r.num_warps) >= 2, r
        r = recs[f"dct2d blockwise-v2 {dt} FULL=True KW=64"]
        assert resident_ctas(r.registers, r.shared_bytes, r.num_warps) == 4, r
    r = recs["dct2d blockwise-v2 fp32 FULL=True KW=16"]
    assert resident_ctas(r.registers, r.shared_bytes, r.num_warps) >= 3, r
    fp32 = [s for s in _plane_specs() if s.main and s.dtype == "fp32"]
    assert fp32 and all(s.constexprs["BLOCK_N"] >= 64 for s in fp32), [s.constexprs for s in fp32]
