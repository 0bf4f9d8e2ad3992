"""Ahead-of-time compile specs of the vq_nearest kernels (spectralar_kernels.testing.aot compiles them).

Every configuration the launchers can run on a GPU, at the benchmark shape M = 4096 rows, K = 16384 codes of
d = 12 (the model's code dim) on an H200 (132 SMs), contiguous inputs: vq-v1's two kernels per input dtype and
metric (fp32, bf16); vq-v2 per padded code width (d = 12, 20, 40 -> BLOCK_D = 16, 32, 64), input dtype and
metric. fp16 and bf16 inputs only change the loads of rows and codes (everything after is fp32 or float64):
fp16 is compiled at BLOCK_D = 16 only.
The codebook splits follow `shared.launch_plan` with each configuration's programs-per-SM estimate.
"""

from __future__ import annotations

import triton

from .._common import AOTSpec
from .shared import block_d, launch_plan
from .triton import V2_CONFIGS, _vq_nearest_v2_kernel
from .triton_v1 import REDUCE_BLOCK_M, V1, _vq_keys_min_kernel, _vq_nearest_v1_kernel

__all__ = ["aot_specs", "AOT_M", "AOT_K", "AOT_D", "AOT_SMS"]

AOT_M, AOT_K, AOT_D, AOT_SMS = 4096, 16384, 12, 132
DTYPES = ("fp32", "fp16", "bf16")  # fp16 and bf16 only change the row and code loads: fp16 at BLOCK_D = 16 only
METRICS = ("l2", "cosine")


def _v1_specs() -> list[AOTSpec]:
    cfg = V1
    specs = []
    for ty in ("fp32", "bf16"):
        for metric in METRICS:
            per_split, n_split = launch_plan(AOT_M, AOT_K, cfg.block_m, cfg.block_k, AOT_SMS, cfg.ctas_per_sm)
            sig = {
                "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "part_ptr": "*i64",
                "M": "i32", "K": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32", "codes_per_split": "i32",
                "gamma": "fp32", "eps": "fp32",
                "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr", "IS_COSINE": "constexpr",
                "RERANK": "constexpr", "BLOCK_E": "constexpr",
            }  # fmt: skip
            specs.append(
                AOTSpec(
                    kernel=_vq_nearest_v1_kernel,
                    signature=sig,
                    constexprs={"BLOCK_M": cfg.block_m, "BLOCK_K": cfg.block_k, "BLOCK_D": cfg.block_d,
                                "IS_COSINE": metric == "cosine", "RERANK": cfg.rerank, "BLOCK_E": cfg.block_e},
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    label=f"vq-v1 {metric} {ty} tf32x3 BLOCK_M={cfg.block_m} BLOCK_K={cfg.block_k} "
                    f"BLOCK_D={cfg.block_d}",
                    expect_tensor_cores=True,
                    op="vq",
                    dtype=ty,
                    values={"M": AOT_M, "K": AOT_K, "D": AOT_D, "stride_zm": AOT_D, "stride_ck": AOT_D,
                            "codes_per_split": per_split},
                    # the general kernel (any d, any layout): 24-byte rows load scalar; vq-v2 is the main loop
                    main=False,
                )
            )  # fmt: skip
            if metric == "l2":  # the reduce kernel reads keys only: one per dtype label is enough
                specs.append(
                    AOTSpec(
                        kernel=_vq_keys_min_kernel,
                        signature={"part_ptr": "*i64", "idx_ptr": "*i64", "dist_ptr": "*fp32", "M": "i32",
                                   "n_split": "i32", "BLOCK_M": "constexpr"},
                        constexprs={"BLOCK_M": REDUCE_BLOCK_M},
                        num_warps=4,
                        num_stages=1,
                        label=f"vq-v1 keys-min ({ty} inputs) BLOCK_M={REDUCE_BLOCK_M}",
                        op="vq",
                        dtype=ty,
                        values={"M": AOT_M, "n_split": n_split},
                    )
                )  # fmt: skip
    return specs


def _v2_specs() -> list[AOTSpec]:
    specs = []
    for d in (AOT_D, 20, 40):
        bd = block_d(d)
        cfg = V2_CONFIGS[bd]
        per_split, n_split = launch_plan(AOT_M, AOT_K, cfg.block_m, cfg.block_k, AOT_SMS, cfg.ctas_per_sm)
        k_pad = triton.cdiv(AOT_K, cfg.block_k) * cfg.block_k
        for ty in DTYPES if bd == 16 else ("fp32", "bf16"):
            for metric in METRICS:
                sig = {
                    "z_ptr": f"*{ty}", "c_ptr": f"*{ty}", "p_ptr": "*fp32", "aux_ptr": "*fp32",
                    "ws_ptr": "*i64", "cnt_ptr": "*i32", "idx_ptr": "*i64", "dist_ptr": "*fp32",
                    "M": "i32", "K": "i32", "D": "i32", "stride_zm": "i32", "stride_ck": "i32",
                    "codes_per_split": "i32", "k_pad": "i32", "n_split": "i32", "gamma": "fp32", "eps": "fp32",
                    "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr", "IS_COSINE": "constexpr",
                    "RERANK": "constexpr", "BLOCK_E": "constexpr",
                }  # fmt: skip
                specs.append(
                    AOTSpec(
                        kernel=_vq_nearest_v2_kernel,
                        signature=sig,
                        constexprs={"BLOCK_M": cfg.block_m, "BLOCK_K": cfg.block_k, "BLOCK_D": bd,
                                    "IS_COSINE": metric == "cosine", "RERANK": cfg.rerank, "BLOCK_E": cfg.block_e},
                        num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages,
                        label=f"vq-v2 {metric} {ty} tf32x3 BLOCK_M={cfg.block_m} BLOCK_K={cfg.block_k} BLOCK_D={bd}",
                        expect_tensor_cores=True,
                        op="vq",
                        dtype=ty,
                        # n_split is not specialised by the JIT (do_not_specialize): keep it off 1 and 16 here
                        values={"M": AOT_M, "K": AOT_K, "D": d, "stride_zm": d, "stride_ck": d,
                                "codes_per_split": per_split, "k_pad": k_pad, "n_split": max(n_split, 2)},
                        main=True,
                    )
                )  # fmt: skip
    return specs


def aot_specs() -> list[AOTSpec]:
    """Every configuration the vq launchers can run on a GPU (module docstring)."""
    return _v1_specs() + _v2_specs()
