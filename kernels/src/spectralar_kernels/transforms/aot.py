"""Ahead-of-time compile specs of the DCT kernels (whole-plane and blockwise), for spectralar_kernels.testing.aot.

Every launch configuration the launchers in transforms/triton.py and transforms/blockwise.py can choose on a
GPU, compiled JIT-like with the integer arguments of the benchmark shape [64, 3, 256, 256] (192 planes).
Kept out of the runtime modules: nothing here runs when a transform does.
"""

from __future__ import annotations

import inspect
import re

import torch
import triton

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec
from . import blockwise as bw
from . import triton as plane

__all__ = ["aot_specs", "plane_spec"]

_BENCH_P, _BENCH_HW = 64 * 3, 256  # planes and plane side of the benchmark shape
PLANE_SIZES = (64, 128, 256)  # one configuration per BLOCK_M the launcher picks for square planes


def plane_spec(dtype, size: int, window_mode: int, label: str, op: str, values: dict, main: bool) -> AOTSpec:
    """AOT spec of `_dct2d_fwd_kernel` for size x size planes (on a GPU x, y, scratch and basis share dtype).

    values: the runtime integer arguments at the benchmark shape except `i_end`, which is the padded height.
    """
    cfg = plane.plane_config(size, size, dtype)
    consts = dict(plane.launch_args(size, size, cfg), WINDOW=window_mode, UPCAST=False)
    sig = {name: PTR_SIG[dtype] for name in ("x_ptr", "y_ptr", "l_ptr", "r_ptr")}
    sig["win_ptr"] = "*i32"
    for name in ("tiles_n", "num_ch", "num_win", "i_end", "stride_xp", "stride_yp"):
        sig[name] = "i32"
    kernel = plane._dct2d_fwd_kernel
    kernel_args = list(inspect.signature(getattr(kernel, "fn", kernel)).parameters)  # interpreter: .fn
    sig.update({name: "constexpr" for name in kernel_args if name not in sig})
    sig = {name: sig[name] for name in kernel_args}  # the kernel's argument order
    return AOTSpec(
        kernel=kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"], label=label,
        num_stages=cfg["NUM_STAGES"], expect_tensor_cores=dtype != torch.float32, op=op, dtype=DTYPE_NAME[dtype],
        values=dict(values, i_end=consts["L_ROW"]), main=main,
    )  # fmt: skip


def _plane_specs() -> list[AOTSpec]:
    """`dct2d_fwd` per dtype and BLOCK_M = 64, 128, 256 (the smaller ones compiled at H = W = BLOCK_M)."""
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for size in PLANE_SIZES:
            tiles_n = size // plane.plane_config(size, size, dt)["BLOCK_N"]
            values = dict(tiles_n=tiles_n, num_ch=1, num_win=1, stride_xp=size * size, stride_yp=size * size)
            label = f"dct2d plane-v2 {DTYPE_NAME[dt]} BLOCK_M={plane.tile(size)}"
            specs.append(plane_spec(dt, size, 0, label, "dct", values, main=size == _BENCH_HW))
    return specs


def _v1_values(b: int) -> dict:
    rows = (bw.block_config(b)["BT"] // b) * b
    tiles = triton.cdiv(_BENCH_HW, rows)
    hw = _BENCH_HW
    return dict(H=hw, W=hw, R=rows, tiles_h=tiles, tiles_w=tiles, stride_xp=hw * hw, stride_xh=hw,
                stride_yp=hw * hw, stride_yh=hw)  # fmt: skip


def _v2_values(b: int) -> dict:
    cfg = bw.v2_config(b, torch.float16)
    tiles = triton.cdiv(_BENCH_HW, cfg["R"])
    vals = _v1_values(b)
    vals.update(R=cfg["R"], tiles_h=tiles, tiles_w=tiles, num_tiles=_BENCH_P * tiles * tiles)
    return vals


def _blockwise_specs() -> list[AOTSpec]:
    """Every configuration the blockwise launchers can choose on a GPU, per dtype.

    v1 (labels as measured): BT = 16 at b = 8 and BT = 32 at b = 32, with the integer arguments at the
    benchmark shape. v2: one kernel per (dtype, FULL): FULL at b = 8 (every b dividing 64 compiles alike),
    FULL=False at b = 24 (R = 48; the masked path for blocks that do not divide 64).
    """
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        name = DTYPE_NAME[dt]
        for b in (8, 32):
            cfg = bw.block_config(b)
            sig = {"x_ptr": PTR_SIG[dt], "y_ptr": PTR_SIG[dt], "k_ptr": PTR_SIG[dt], "flag_ptr": "*i32"}
            for arg in ("H", "W", "R", "tiles_h", "tiles_w", "stride_xp", "stride_xh", "stride_yp", "stride_yh"):
                sig[arg] = "i32"
            sig["BT"] = "constexpr"
            specs.append(AOTSpec(
                kernel=bw._dct2d_block_fwd_kernel, signature=sig, constexprs={"BT": cfg["BT"]},
                num_warps=cfg["num_warps"], label=f"dct2d blockwise-v1 {name} BT={cfg['BT']}",
                expect_tensor_cores=dt != torch.float32, op="blockwise", dtype=name, values=_v1_values(b),
                main=False,  # kept as measured: one tile per program, no pipelined loop
            ))  # fmt: skip
        for b in (8, 32, 24) if dt == torch.float32 else (8, 24):  # fp32: KW = 16 at b = 8, 64 at b = 32
            cfg = bw.v2_config(b, dt)
            sig = {"x_ptr": PTR_SIG[dt], "y_ptr": PTR_SIG[dt], "k_ptr": PTR_SIG[dt], "flag_ptr": "*i32"}
            for arg in ("H", "W", "R", "tiles_h", "tiles_w", "num_tiles",
                        "stride_xp", "stride_xh", "stride_yp", "stride_yh"):  # fmt: skip
                sig[arg] = "i32"
            consts = dict(TILE=cfg["TILE"], FULL=cfg["FULL"], NUM_STAGES=cfg["NUM_STAGES"], KW=cfg["KW"])
            sig.update(dict.fromkeys(consts, "constexpr"))
            specs.append(AOTSpec(
                kernel=bw._dct2d_block_v2_kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"],
                num_stages=cfg["NUM_STAGES"], label=f"dct2d blockwise-v2 {name} FULL={cfg['FULL']} KW={cfg['KW']}",
                expect_tensor_cores=dt != torch.float32, op="blockwise", dtype=name, values=_v2_values(b),
                main=cfg["FULL"], wide_stores=cfg["FULL"],
            ))  # fmt: skip
        sig = {"x_ptr": PTR_SIG[dt], "y_ptr": PTR_SIG[dt], "k_ptr": "*fp32", "flag_ptr": "*i32"}
        for arg in ("H", "W", "R", "B", "tiles_h", "tiles_w", "num_tiles", "stride_xp", "stride_xh", "stride_yp",
                    "stride_yh"):  # fmt: skip
            sig[arg] = "i32"
        sig["TILE"] = "constexpr"
        tiles = triton.cdiv(_BENCH_HW, bw.FIX_TILE)
        values = dict(_v1_values(8), R=bw.FIX_TILE, B=8, tiles_h=tiles, tiles_w=tiles)
        values["num_tiles"] = _BENCH_P * tiles * tiles
        specs.append(AOTSpec(
            kernel=bw._dct2d_block_fix_kernel, signature=sig, constexprs={"TILE": bw.FIX_TILE}, num_warps=4,
            label=f"dct2d blockwise NaN/inf fix-up {name} TILE={bw.FIX_TILE}", op="blockwise", dtype=name,
            values=values, main=False,  # runs past its first load only when a tile held a NaN or inf
        ))  # fmt: skip
    return specs


def aot_specs() -> list[AOTSpec]:
    """The whole-plane and blockwise DCT kernels' configurations (records op "dct" and "blockwise")."""
    return _plane_specs() + _blockwise_specs()


# ---- The main loop of the whole-plane kernel, read from its SASS (tests/test_aot_compile.py asserts these).

_ADDR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def loop_facts(sass: str) -> dict:
    """Facts about the innermost-outermost loop with the most cp.async loads in `cuobjdump -sass` text.

    The loop is the span [target, branch] of a backward BRA. Returns: ldgsts / ldg (cp.async and plain global
    loads inside it), hgmma, waits (the WARPGROUP.DEPBAR.LE pending counts inside, in order) and async_tail:
    no WARPGROUP.DEPBAR between the loop's last HGMMA and its backward branch, i.e. the last product of an
    iteration is still running when the next iteration starts (None without HGMMA in the loop).
    """
    lines = [(int(m.group(1), 16), m.group(2).strip()) for m in _ADDR_RE.finditer(sass)]
    best = None
    for addr, text in lines:
        m = re.search(r"\bBRA\s+(?:`?\(?\.?L_x_\d+\)?|0x([0-9a-f]+))", text)
        if not m or m.group(1) is None or int(m.group(1), 16) >= addr:
            continue
        body = [t for a, t in lines if int(m.group(1), 16) <= a <= addr]
        count = sum(t.split()[0].startswith("LDGSTS") or " LDGSTS" in t for t in body)
        if best is None or count > best[0]:
            best = (count, body)
    if best is None:
        return {"found": False}
    body = [t.split(" ", 1)[1] if t.startswith("@") else t for t in best[1]]  # drop predicates
    ops = [t.split()[0] for t in body]
    last_mma = max((i for i, op in enumerate(ops) if op.startswith("HGMMA")), default=None)
    return {
        "found": True,
        "ldgsts": sum(op.startswith("LDGSTS") for op in ops),
        "ldg": sum(op.startswith("LDG.") for op in ops),
        "hgmma": sum(op.startswith("HGMMA") for op in ops),
        "waits": [int(t.split(",")[-1].strip(), 16) for t in body if t.startswith("WARPGROUP.DEPBAR")],
        "async_tail": None if last_mma is None else not any(op.startswith("WARPGROUP.DEPBAR") for op in ops[last_mma:]),
    }


def main_loop(spec: AOTSpec, arch: int = 90) -> dict:
    """Compile `spec` JIT-like for sm_<arch> (needs the interpreter off) and return `loop_facts` of its SASS."""
    from ..testing import aot

    return loop_facts(aot.sass_of(spec, arch))


def main(argv=None) -> int:
    """`python -m spectralar_kernels.transforms.aot [--arch 90]`: JSON {label: loop_facts} of the whole-plane
    kernel's main-loop configurations (BLOCK_M = 256), per dtype."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="SM version (default 90)")
    args = p.parse_args(argv)
    print(json.dumps({s.label: main_loop(s, args.arch) for s in _plane_specs() if s.main}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
