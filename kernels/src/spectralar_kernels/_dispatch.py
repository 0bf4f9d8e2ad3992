"""Which implementation `SPECTRALAR_KERNELS=auto` runs on CUDA: the table of measured decisions.

A Triton kernel reaches users by default only where a measured GPU run showed it at least as fast as
the PyTorch reference it replaces, in the same dtype, side by side in one run. Everything else runs the
reference under `auto`; the newest kernels stay reachable with `SPECTRALAR_KERNELS=triton` (that is how
`python -m bench.gpu_report` times them, and its output ends with the table a run implies).

Keys are (op, variant, dtype). An entry names the implementation that was timed (`kernel`), its speed-up
over the reference (reference time / kernel time; the smallest over the cases timed, forward and
forward+backward for attention), and the report it came from. `auto` picks the entry's kernel iff the
speed-up is >= 1 and that implementation still ships (`IMPLEMENTATIONS`): rewriting a kernel under a new
id sends `auto` back to the reference until the new one is measured, so a GPU user never gets a kernel
nobody has timed. `dct2d` entries also cover `idct2d` (the same kernels with the transposed basis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # the dtype keys of MEASURED

MIN_SPEEDUP = 1.0  # reference time / kernel time a kernel must reach for `auto` to run it

# (op, variant) -> implementation ids shipped in kernels/, the newest last (what SPECTRALAR_KERNELS=triton runs).
IMPLEMENTATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("dct2d", "plane"): ("plane-v2",),
    ("dct2d", "blockwise"): ("blockwise-v1", "blockwise-v2"),
    ("spectral_subimages", "one_window"): ("subimages-v2",),
    ("spectral_subimages", "all_prefixes"): ("subimages-v2",),
    ("vq_nearest", "l2"): ("vq-v1", "vq-v2"),
    ("vq_nearest", "cosine"): ("vq-v1", "vq-v2"),
    ("attention", "full"): ("attention-v2",),
    ("attention", "causal"): ("attention-v2",),
    ("attention", "prefix"): ("attention-v2",),
    ("attention_with_kvcache", "decode"): ("decode-v2",),
}


@dataclass(frozen=True)
class Measured:
    kernel: str  # implementation id that was timed
    speedup: float  # reference time / kernel time, same run, same dtype (the worst case timed)
    case: str  # what was timed
    report: str  # where the numbers are


H200_2026_11_28 = "docs/gpu_report.md, one H200, 2026-11-28 (torch 2.11, triton 3.6)"

# fp16 was not timed in that run: no fp16 entry, so fp16 runs the reference under `auto`.
MEASURED: dict[tuple[str, str, str], Measured] = {
    ("dct2d", "plane", "fp32"): Measured("plane-v1", 0.11, "64x3x256x256", H200_2026_11_28),
    ("dct2d", "plane", "bf16"): Measured("plane-v1", 0.03, "64x3x256x256", H200_2026_11_28),
    ("dct2d", "blockwise", "fp32"): Measured("blockwise-v1", 3.39, "64x3x256x256 block=8", H200_2026_11_28),
    ("dct2d", "blockwise", "bf16"): Measured("blockwise-v1", 14.04, "64x3x256x256 block=8", H200_2026_11_28),
    ("spectral_subimages", "one_window", "fp32"): Measured("subimages-v1", 0.46, "64x3x256x256", H200_2026_11_28),
    ("spectral_subimages", "one_window", "bf16"): Measured("subimages-v1", 0.22, "64x3x256x256", H200_2026_11_28),
    ("spectral_subimages", "all_prefixes", "fp32"): Measured("subimages-v1", 0.83, "N=64 8x3x256x256", H200_2026_11_28),
    ("spectral_subimages", "all_prefixes", "bf16"): Measured("subimages-v1", 0.24, "N=64 8x3x256x256", H200_2026_11_28),
    ("vq_nearest", "l2", "fp32"): Measured("vq-v1", 7.38, "M=4096 d=12 K=4096, 16384", H200_2026_11_28),
    # bf16/fp16 l2 inputs now run vq-v1's fp32 configuration on operands centred in fp32 (centred values do not
    # fit 16 bits): the configuration timed as fp32 above, at 7.38x; the bf16 reference is slower than fp32's.
    ("vq_nearest", "l2", "bf16"): Measured("vq-v1", 7.38, "M=4096 d=12 K=4096, 16384 (fp32 config)", H200_2026_11_28),
    ("vq_nearest", "cosine", "fp32"): Measured("vq-v1", 10.08, "M=4096 d=12 K=4096, 16384", H200_2026_11_28),
    ("vq_nearest", "cosine", "bf16"): Measured("vq-v1", 10.79, "M=4096 d=12 K=4096, 16384", H200_2026_11_28),
    ("attention", "full", "fp32"): Measured("attention-v1", 0.14, "64x320x12x64 fwd, fwd+bwd", H200_2026_11_28),
    ("attention", "full", "bf16"): Measured("attention-v1", 0.49, "64x320x12x64 fwd, fwd+bwd", H200_2026_11_28),
    ("attention", "causal", "fp32"): Measured("attention-v1", 0.21, "128x65x16x64 fwd, fwd+bwd", H200_2026_11_28),
    ("attention", "causal", "bf16"): Measured("attention-v1", 0.45, "128x65x16x64 fwd, fwd+bwd", H200_2026_11_28),
    ("attention", "prefix", "fp32"): Measured("attention-v1", 0.18, "64x320x12x64 prefix 256", H200_2026_11_28),
    ("attention", "prefix", "bf16"): Measured("attention-v1", 0.83, "64x320x12x64 prefix 256", H200_2026_11_28),
    ("attention_with_kvcache", "decode", "fp32"): Measured("decode-v1", 0.36, "B=2, 128; T_max=65", H200_2026_11_28),
    ("attention_with_kvcache", "decode", "bf16"): Measured("decode-v1", 0.85, "B=2, 128; T_max=65", H200_2026_11_28),
}


def latest(op: str, variant: str) -> str:
    """The newest shipped implementation of (op, variant): what SPECTRALAR_KERNELS=triton runs."""
    return IMPLEMENTATIONS[(op, variant)][-1]


def measured_choice(op: str, variant: str, dtype: torch.dtype) -> str | None:
    """The implementation `auto` runs on CUDA for (op, variant, dtype), or None for the reference."""
    entry = MEASURED.get((op, variant, DTYPE_NAME.get(dtype, str(dtype))))
    if entry is None or entry.speedup < MIN_SPEEDUP:
        return None
    return entry.kernel if entry.kernel in IMPLEMENTATIONS.get((op, variant), ()) else None


def table_markdown() -> str:
    """The decisions `auto` makes now, one row per (op, variant, dtype), for docs and the GPU report."""
    rows = ["| op | variant | dtype | auto on CUDA | measured kernel | x ref | case | report |", "|" + "---|" * 8]
    for (op, variant), _impls in IMPLEMENTATIONS.items():
        for dt in ("fp32", "bf16", "fp16"):
            m = MEASURED.get((op, variant, dt))
            dtype = {v: k for k, v in DTYPE_NAME.items()}[dt]
            pick = measured_choice(op, variant, dtype) or "reference"
            if m is None:
                rows.append(f"| {op} | {variant} | {dt} | {pick} | not measured | - | - | - |")
            else:
                cells = (op, variant, dt, pick, m.kernel, f"{m.speedup:.2f}", m.case, m.report)
                rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
