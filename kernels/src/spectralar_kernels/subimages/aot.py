"""Ahead-of-time compile specs of the sub-image kernels, for spectralar_kernels.testing.aot.

Every configuration the launchers in subimages/triton.py choose on a GPU, per dtype: the whole-plane DCT
kernel in its two window modes (coefficients, reconstruction) for each BLOCK_M (64, 128, 256), and the
all-prefixes kernel. `values` at the benchmarks: 64x3x256x256 with windows from a 64-token power mapping (one
per sample); all prefixes 8x3x256x256, N = 64 (16 shells). Smaller BLOCK_M compile at S = BLOCK_M. Kept out of
the runtime modules: nothing here runs when a sub-image is computed.
"""

from __future__ import annotations

import torch

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec
from ..transforms import aot as dct_aot
from ..transforms import triton as dct_triton
from . import triton as sub

__all__ = ["aot_specs"]


def _prefix_spec(dtype: torch.dtype, size: int, values: dict) -> AOTSpec:
    sig = {name: PTR_SIG[dtype] for name in ("c_ptr", "y_ptr", "d_ptr")} | {"win_ptr": "*i32", "first_ptr": "*i32"}
    for name in ("num_shells", "num_ch", "num_win", "stride_cp", "stride_yn"):
        sig[name] = "i32"
    cfg = sub.prefix_config(dtype)
    consts = dict(S=size, D_ROW=dct_triton.padded(size, sub.PREFIX_PAD), NUM_STAGES=cfg["NUM_STAGES"],
                  BLOCK=cfg["BLOCK"], BLOCK_S=sub.PREFIX_SHELL)  # fmt: skip
    for name in consts:
        sig[name] = "constexpr"
    return AOTSpec(
        kernel=sub._subimages_prefix_kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"],
        num_stages=cfg["NUM_STAGES"], label=f"subimages-v2 all-prefixes {DTYPE_NAME[dtype]} S={size}",
        expect_tensor_cores=True, op="subimages", dtype=DTYPE_NAME[dtype], values=values, main=True,
    )  # fmt: skip


def aot_specs() -> list[AOTSpec]:
    """The sub-image launchers' configurations (module docstring), records op "subimages"."""
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for size in dct_aot.PLANE_SIZES:
            tiles_n = size // dct_triton.plane_config(size, size, dt)["BLOCK_N"]
            values = dict(tiles_n=tiles_n, num_ch=3, num_win=64, stride_xp=size * size, stride_yp=size * size)
            for mode, step in ((1, "coefficients"), (2, "reconstruction")):
                label = f"subimages-v2 {step} {DTYPE_NAME[dt]} BLOCK_M={dct_triton.tile(size)}"
                specs.append(dct_aot.plane_spec(dt, size, mode, label, "subimages", values, main=size == 256))
        # all prefixes: the coefficients step runs with the one largest window (num_win = 1)
        values = dict(tiles_n=tiles_n, num_ch=3, num_win=1, stride_xp=256 * 256, stride_yp=256 * 256)
        label = f"subimages-v2 coefficients (all prefixes) {DTYPE_NAME[dt]} BLOCK_M=256"
        specs.append(dct_aot.plane_spec(dt, 256, 1, label, "subimages", values, main=True))
        values = dict(num_shells=16, num_ch=3, num_win=64, stride_cp=256 * 256, stride_yn=3 * 256 * 256)
        specs.append(_prefix_spec(dt, 256, values))
    return specs
