"""One-shot GPU report: every kernel's correctness and speed, generator decoding and sampling, in one markdown file.

    python -m bench.gpu_report --out docs/gpu_report.md    # CUDA: under 6 min on an H200 (hard cap --budget-s)
    python -m bench.gpu_report --dry-run                   # CPU, tiny shapes, reference backend, perf_counter
    python -m bench.gpu_report --dry-run --interpret       # same, with the Triton kernels under TRITON_INTERPRET=1
    python -m bench.gpu_report --dry-run --sections machine check:vq time:vq    # some sections (names or prefixes)
(from the repository root, or with it on PYTHONPATH).

Phases (the code is in bench/report/, the realistic shapes in bench/cases.py; every section runs in its own child
process, so a crash or a hung kernel in one section becomes a FAIL row and the rest still runs; a child killed at
its deadline keeps the rows it wrote):
  1. machine: GPU, torch / triton / CUDA versions and the floors measured here: device-to-device copy
     bandwidth and square-GEMM TFLOP/s (bf16, fp16, fp32 with TF32 off, TF32).
  2. correctness, up to --jobs sections at once, one per op x implementation x dtype x shape family: every
     Triton implementation that ships (spectralar_kernels/_dispatch.py IMPLEMENTATIONS; the newest forced with
     SPECTRALAR_KERNELS=triton, an older one with triton:ID) against the float64 reference on awkward and
     realistic shapes in fp32 / bf16 / fp16; the launcher also writes into a NaN-filled `out=`. Alongside, the
     generators' sampling agreement (KV cache vs recompute vs the compiled step), which also compiles every
     decode step the last phase times (torch.compile's on-disk caches carry it over).
  3. timings, one op at a time on an otherwise idle GPU: triton.testing.do_bench (warm-up, L2 flushed, mean) of
     every shipped implementation side by side with the same-precision reference and peers (torch-dct, torch.cdist
     + argmin, matmul + argmin, SDPA with a boolean mask, SDPA's flash backend, flash-attn when importable);
     achieved GB/s and TFLOP/s by the formulas of bench/floors.py and the fraction of the measured roofline.
  4. generators fmnist and d16 (random init, bf16): the decode step per token eager, through torch.compile and
     as a CUDA graph against the floor of reading the weights once per step; sampling with and without the KV
     cache (and with the compiled step) at batch 1, 16, 64, 256 with CFG 2.0, images/s.
The report ends with the dispatch table the timings imply, as markdown and as `MEASURED` entries to paste into
spectralar_kernels/_dispatch.py. Every phase ends at a fixed share of --budget-s; past it, sections write SKIP rows.

Tolerances (the rule of spectralar_kernels.testing, which does the comparing): fp32 outputs need
|out - oracle| <= atol + 1e-4 |oracle| elementwise, atol = 1e-5 max(1, max|oracle|) (VQ l2 distances:
1e-5 max(1, max|z|^2 + max|c|^2), the test suite's, since ||z||^2 - 2 z.c + ||c||^2 cancels); fp16 / bf16
outputs need max error <= 2 x the max error of the same-precision PyTorch reference + 1e-3 max|oracle|.
Exit status: 0 all PASS, 1 some FAIL (the report is written either way), 2 no CUDA and no --dry-run.
"""

from __future__ import annotations

import sys

from .report.runner import main

if __name__ == "__main__":
    sys.exit(main(doc=__doc__))
