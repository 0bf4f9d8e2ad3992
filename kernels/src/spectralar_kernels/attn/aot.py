"""Ahead-of-time compile specs of the attention kernels (attention-v2 in `triton.py`, decode-v2 in `decode.py`).

Not imported by the launchers: `spectralar_kernels.testing.aot` compiles these specs for sm_80 and sm_90 without a
GPU, and tests/test_aot_compile.py asserts the kernels' design properties on the SASS.
"""

from __future__ import annotations

import torch

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec
from . import decode
from . import triton as attn
from ._tiles import HEAD_DIM_BLOCKS

__all__ = ["aot_specs", "attention_spec", "decode_specs", "training_specs"]

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
