"""Ahead-of-time compile specs of the attention kernels (attention-v2 in `triton.py`, decode-v2 in `decode.py`).

Not imported by the launchers: `spectralar_kernels.testing.aot` compiles these specs for sm_80 and sm_90 without a
GPU, and tests/test_aot_compile.py asserts the kernels' design properties on the SASS. Beyond its records, two
properties of the attention design are read here from the compiled code:
  occupancy   `ctas_per_sm` from registers, warps and shared memory; `planned_ctas_per_sm` is what the tile
              tables of `triton.py` plan for a spec on sm_90 (their "Occupancy" paragraph);
  pipelining  `loop_waits`: for each loop of the SASS that issues cp.async (LDGSTS), the thresholds of its
              `DEPBAR.LE SB0, N` waits; N = 0 inside a loop means every load in flight, the next step's
              included, is waited for before the step computes: nothing overlaps.
As a command (needs triton, no GPU), the loops of every spec whose label contains one of the --match strings:
    python -m spectralar_kernels.attn.aot --match "attention bwd" --arch 90
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import re
import subprocess
import sys
from dataclasses import astuple, dataclass

import torch

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec
from ..testing import aot
from ..testing.aot import sass_of
from . import decode
from . import triton as attn
from ._tiles import HEAD_DIM_BLOCKS

__all__ = ["LoopWaits", "aot_specs", "attention_spec", "ctas_per_sm", "decode_specs", "loop_report", "loop_waits",
           "planned_ctas_per_sm", "sass_of", "training_specs"]

# Benchmark shapes of the training kernels: (B, T, H, prefix_len). The encoder's prefix-LM of imagenet-b64 at
# every head dim, and the generator's causal step (T = 65 tokens) at D = 64.
SHAPES = {"prefix": (64, 320, 12, 256), "causal": (128, 65, 16, 0)}


def _attention_values(kernel, shape: str, d: int) -> dict[str, int]:
    """The integer arguments of a launch on contiguous `[B, T, H, D]` tensors."""
    b, t, h, prefix = SHAPES[shape]
    strides = {"b": t * h * d, "t": h * d, "h": d}
    values = {name: strides[name[-1]] for name in kernel.arg_names if name.startswith("stride_")}
    values.update(H=h, T=t, D=d, prefix_len=prefix)
    return values


def _attention_signature(kernel, ptr: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "LSE":
            sig[name] = "*fp32"
        elif name.isupper() and name not in ("H", "T", "D"):
            sig[name] = ptr
        elif name in ("scale", "qk_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def attention_spec(what: str, dtype: torch.dtype, block_d: int, config: tuple[int, int, int, int],
                   shape: str) -> AOTSpec:  # fmt: skip
    """The spec of kernel `what` ("fwd" or "bwd") for one tile config (BLOCK_M, BLOCK_N, warps, stages)."""
    kernel = attn._KERNELS[what][0]
    lowp = dtype != torch.float32
    m, n, warps, stages = config
    constexprs = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": block_d, "PAD_D": False, "UPCAST": False,
                  "PRECISION": "tf32" if lowp else "tf32x3"}  # fmt: skip
    return AOTSpec(
        kernel, _attention_signature(kernel, PTR_SIG[dtype], constexprs), constexprs, warps, stages,
        label=f"attention {what} {DTYPE_NAME[dtype]} D={block_d} {m}x{n} w{warps} s{stages} {shape}",
        expect_tensor_cores=True, op="attention", dtype=DTYPE_NAME[dtype], values=_attention_values(kernel, shape,
        block_d), main=True,
    )  # fmt: skip


def planned_ctas_per_sm(spec: AOTSpec) -> int:
    """CTAs per SM the tile tables of `triton.py` plan for a training-kernel spec on sm_90."""
    what = next(name for name, (kernel, _table) in attn._KERNELS.items() if kernel is spec.kernel)
    c = spec.constexprs
    config = (c["BLOCK_M"], c["BLOCK_N"], spec.num_warps, spec.num_stages)
    klass = "fp32" if spec.dtype == "fp32" else "lowp"
    return 1 if (what, klass, c["BLOCK_D"], config) in attn.ONE_CTA_PER_SM else attn.MIN_CTAS_PER_SM


def training_specs() -> list[AOTSpec]:
    """Every tile configuration the autotuned attention launchers can choose on a GPU."""
    specs = []
    for dtype in PTR_SIG:
        klass = "fp32" if dtype == torch.float32 else "lowp"
        for block_d in HEAD_DIM_BLOCKS:
            shapes = ("prefix", "causal") if block_d == 64 else ("prefix",)
            for what, (_kernel, table) in attn._KERNELS.items():
                for config in table[(klass, block_d)]:
                    specs += [attention_spec(what, dtype, block_d, config, shape) for shape in shapes]
    return specs


# ---- decode-v2 ---------------------------------------------------------------------------------------------
# Benchmark shape of the decode kernel: the fmnist-batch / d16-like one-token step, and the small end of the d16
# batch sweep (B*H = 32 programs: the split-K path on an H200's 132 SMs).
DECODE_SHAPE = {"B": 128, "T_MAX": 65, "H": 16, "D": 64}
DECODE_SMALL_B = 2
DECODE_SMS = 132


def _decode_signature(kernel, ptr: str, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Every argument's type: upper-case names are tensors (`ptr` unless listed in `pointers`)."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.isupper() and name not in ("H", "TQ", "T_MAX", "D"):
            sig[name] = pointers.get(name, ptr)
        elif name == "qk_scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _decode_values(block_d: int, batch: int, splits: int, chunk: int) -> tuple[dict[str, int], dict[str, int]]:
    """Integer arguments of the decode and combine kernels for a contiguous one-token step at DECODE_SHAPE."""
    t_max, h = DECODE_SHAPE["T_MAX"], DECODE_SHAPE["H"]
    row = h * block_d  # q, k, v, out: [B, 1, H, D]; caches [B, T_max, H, D]
    values = {"H": h, "TQ": 1, "T_MAX": t_max, "D": block_d, "chunk": chunk, "group": 1, "causal": 1}
    for name in ("q", "kn", "vn", "o"):
        values |= {f"stride_{name}b": row, f"stride_{name}t": row, f"stride_{name}h": block_d}
    for name in ("k", "v"):
        values |= {f"stride_{name}b": t_max * row, f"stride_{name}t": row, f"stride_{name}h": block_d}
    combine = {"stride_ob": row, "stride_ot": row, "stride_oh": block_d, "H": h, "TQ": 1, "D": block_d,
               "num_splits": splits, "rows_per_split": batch * h}  # fmt: skip
    return values, combine


def decode_specs() -> list[AOTSpec]:
    """Every configuration the decode launcher can choose on a GPU: dtype x head-dim block x (with/without the
    fused append) x (direct / split-K), plus the combine kernel, at the one-token benchmark shape (B=128 direct;
    B=2 split-K)."""
    specs = []
    for dtype, ptr in PTR_SIG.items():
        name = DTYPE_NAME[dtype]
        precision = "ieee" if dtype == torch.float32 else "tf32"
        for block_d in HEAD_DIM_BLOCKS:
            tiles = decode._decode_tiles(block_d, dtype)
            for batch in (DECODE_SHAPE["B"], DECODE_SMALL_B):
                programs = batch * DECODE_SHAPE["H"]
                splits, chunk = decode._decode_splits(programs, DECODE_SHAPE["T_MAX"], tiles["BLOCK_N"], DECODE_SMS)
                values, combine_values = _decode_values(block_d, batch, splits, chunk)
                for has_new in (True, False):
                    c = {"BLOCK_M": tiles["BLOCK_M"], "BLOCK_N": tiles["BLOCK_N"], "BLOCK_D": block_d, "PAD_D": False,
                         "HAS_NEW": has_new, "SPLIT": splits > 1, "STAGES": decode.NUM_STAGES, "UPCAST": False,
                         "PRECISION": precision}  # fmt: skip
                    pointers = {"SEQLENS": "*i32", "O_PART": "*fp32", "LSE_PART": "*fp32"}
                    kernel = decode._attention_decode_kernel
                    specs.append(AOTSpec(
                        kernel, _decode_signature(kernel, ptr, pointers, c), c, tiles["num_warps"], decode.NUM_STAGES,
                        label=f"decode {name} D={block_d} B={batch} {'append' if has_new else 'no-append'} "
                              f"{'split' if splits > 1 else 'direct'} {tiles['BLOCK_M']}x{tiles['BLOCK_N']}",
                        expect_tensor_cores=dtype != torch.float32, op="decode", dtype=name, values=values,
                        main=True,
                    ))  # fmt: skip
                if splits > 1:
                    kernel = decode._attention_decode_combine_kernel
                    c = {"BLOCK_M": decode.COMBINE_BLOCK_M, "BLOCK_D": block_d}
                    pointers = {"O_PART": "*fp32", "LSE_PART": "*fp32"}
                    specs.append(AOTSpec(
                        kernel, _decode_signature(kernel, ptr, pointers, c), c, 4, 1,
                        label=f"decode combine {name} D={block_d} B={batch} splits={splits}",
                        op="decode", dtype=name, values=combine_values,
                    ))  # fmt: skip
    return specs


def aot_specs() -> list[AOTSpec]:
    """The training kernels' specs, then the decode kernels'."""
    return training_specs() + decode_specs()


# ---- reading the compiled code: occupancy and the cp.async wait pattern of each loop ------------------------
# Per-SM limits of the occupancy calculation (CUDA programming guide, compute capabilities 8.0 and 9.0).
SM_SHARED = {arch: lim.shared for arch, lim in aot.SM_LIMITS.items()}  # shared memory per SM, bytes


def ctas_per_sm(registers: int, shared_bytes: int, num_warps: int, arch: int) -> int:
    """How many CTAs of a kernel fit on one SM at once: the rule the kernel records use
    (`spectralar_kernels.testing.aot.ctas_per_sm`), in this module's argument order."""
    return aot.ctas_per_sm(registers, num_warps, shared_bytes, arch)


@dataclass(frozen=True)
class LoopWaits:
    """One loop of the SASS (a backward branch) that issues cp.async loads: where it runs, how many LDGSTS it
    issues per iteration, and the thresholds N of its `DEPBAR.LE SB0, N` waits (N = 0: wait for every load in
    flight, the next block's included, so nothing overlaps the compute)."""

    start: int
    end: int
    ldgsts: int
    waits: tuple[int, ...]

    @property
    def drains(self) -> bool:
        return 0 in self.waits


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def loop_waits(sass: str) -> list[LoopWaits]:
    """The loops of one kernel's `cuobjdump -sass` text that contain LDGSTS, in address order."""
    code = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in _SASS_LINE.finditer(sass)]
    loops = []
    for addr, op, args in code:
        target = re.fullmatch(r"\s*0x([0-9a-f]+)\s*", args) if op == "BRA" else None
        if target is None or int(target.group(1), 16) >= addr:
            continue
        start = int(target.group(1), 16)
        body = [(o, a) for at, o, a in code if start <= at <= addr]
        waits = tuple(int(w.group(1), 16) for o, a in body if o == "DEPBAR.LE"
                      for w in [re.search(r"SB0,\s*0x([0-9a-f]+)", a)] if w)  # fmt: skip
        ldgsts = sum(o.startswith("LDGSTS") for o, _ in body)
        if ldgsts:
            loops.append(LoopWaits(start, addr, ldgsts, waits))
    return loops


def _loops_job(job: tuple[str, int]) -> tuple[str, int, list[tuple]]:
    label, arch = job
    spec = next(s for s in aot_specs() if s.label == label)
    return label, arch, [astuple(loop) for loop in loop_waits(sass_of(spec, arch))]


def loop_report(labels: list[str], archs=(90,), jobs: int = 2) -> dict[tuple[str, int], list[LoopWaits]]:
    """(label, arch) -> the cp.async loops (`loop_waits`) of each named spec's SASS. Compiles in a child process
    with the interpreter off when this one has it on (the interpreter's kernels cannot be compiled)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        cmd = [sys.executable, "-m", "spectralar_kernels.attn.aot", "--json", "--jobs", str(jobs),
               "--arch", *map(str, archs), "--labels", *labels]  # fmt: skip
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)
    else:
        todo = [(label, arch) for label in labels for arch in archs]
        if jobs > 1 and len(todo) > 1:  # fork: workers inherit the imported kernels (JITFunctions do not pickle)
            ctx = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                out = list(pool.map(_loops_job, todo))
        else:
            out = [_loops_job(job) for job in todo]
    return {(label, arch): [LoopWaits(*loop[:3], tuple(loop[3])) for loop in loops] for label, arch, loops in out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="cp.async wait pattern of each loop in the attention kernels' SASS")
    p.add_argument("--match", nargs="*", default=[], help="specs whose label contains one of these (default: all)")
    p.add_argument("--labels", nargs="*", default=None, help="exact spec labels (instead of --match)")
    p.add_argument("--arch", nargs="+", type=int, default=[90], help="SM versions (default: 90)")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile processes")
    p.add_argument("--json", action="store_true", help="raw JSON on stdout (used by `loop_report`)")
    args = p.parse_args(argv)
    labels = args.labels if args.labels is not None else [
        s.label for s in aot_specs() if not args.match or any(m in s.label for m in args.match)]  # fmt: skip
    report = loop_report(labels, tuple(args.arch), args.jobs)
    if args.json:
        print(json.dumps([[label, arch, [astuple(loop) for loop in loops]] for (label, arch), loops in report.items()]))
        return 0
    for (label, arch), loops in report.items():
        steps = " ".join(f"[{loop.ldgsts} LDGSTS, waits {','.join(map(str, loop.waits))}]" for loop in loops)
        print(f"{label} sm_{arch}: {steps or 'no cp.async loop'}{'  DRAINS' if any(x.drains for x in loops) else ''}")
    return int(any(loop.drains for loops in report.values() for loop in loops))


if __name__ == "__main__":
    sys.exit(main())
