"""One-shot GPU report: every kernel's correctness and speed, generator decoding and sampling, in one markdown file,
and the measured decisions `SPECTRALAR_KERNELS=auto` reads (spectralar_kernels/measured.json).

    python -m bench.gpu_report                             # CUDA: docs/gpu_report.md, one command under 9 minutes
    python -m bench.gpu_report --resume                    # keep the sections a previous run finished, run the rest
    python -m bench.gpu_report --dry-run                   # CPU, tiny shapes, reference backend, CPU stand-ins
    python -m bench.gpu_report --dry-run --interpret       # same, with the Triton kernels under TRITON_INTERPRET=1
    python -m bench.gpu_report --dry-run --sections machine check:vq time:vq    # some sections (names or prefixes)
(from the repository root, or with it on PYTHONPATH).

Phases (the code is in bench/report/, the realistic shapes in bench/cases.py; every section runs in its own child
process, so a crash or a hung kernel in one section becomes a FAIL row and the rest still runs; a child killed at
its deadline keeps the rows it wrote):
  1. machine: GPU, device class (compute capability, name), torch / triton / CUDA versions and the floors measured
     here: device-to-device copy bandwidth and square-GEMM TFLOP/s (bf16, fp16, fp32 with TF32 off, TF32).
  2. in parallel, up to --jobs sections at once: correctness, one section per op x implementation x dtype x shape
     family: every Triton implementation that ships (spectralar_kernels/_dispatch.py IMPLEMENTATIONS; the newest
     forced with SPECTRALAR_KERNELS=triton, an older one with triton:ID) against the float64 reference on awkward
     and realistic shapes in fp32 / bf16 / fp16, each verdict filed by the shape bucket `auto` would look up; the
     fmnist sampler's agreement checks (which compile its decode steps); and the compile warm-ups of the timed
     torch.compile / FlexAttention baselines (warm:*), into the caches under --work-dir.
  3. timings, one op at a time on an otherwise idle GPU: every shipped implementation side by side with the
     reference and the strongest plain-PyTorch paths a user would write (bench/report/baselines.py): wall time
     per call in a loop synchronised once (host overhead included: what the decisions use) and kernel time
     between CUDA events after an L2 flush; achieved GB/s and TFLOP/s by the formulas of bench/floors.py and the
     fraction of the measured roofline. Decoding also as CUDA-graph replays; VQ with the codebook updated before
     every call, as in training.
  4. generators: fmnist, then the d16 sampling checks and timings last (random init, bf16): the decode step eager,
     through torch.compile and as a CUDA graph against the floor of reading the weights once per step; sampling
     with and without the KV cache (and with the compiled step) at batch 1, 16, 64, 256 with CFG 2.0.
The report ends with the decisions the run implies (bench/report/dispatch.py: a kernel must pass its checks on the
bucket and beat the fastest plain-PyTorch path on every case of it) and writes them into measured.json (merged into
the package's table on CUDA; --measured PATH elsewhere). Every phase ends at a fixed share of --budget-s; past it,
sections write SKIP rows.

Tolerances (the rule of spectralar_kernels.testing, which does the comparing): fp32 outputs need
|out - oracle| <= atol + 1e-4 |oracle| elementwise, atol = 1e-5 max(1, max|oracle|) (VQ l2 distances:
1e-5 max(1, max|z|^2 + max|c|^2), the test suite's, since ||z||^2 - 2 z.c + ||c||^2 cancels); fp16 / bf16
outputs need max error <= 2 x the max error of the same-precision PyTorch reference + 1e-3 max|oracle|.
Exit status: 0 all PASS, 1 some FAIL (the report is written either way), 2 no CUDA and no --dry-run, 130 Ctrl-C.
"""

from __future__ import annotations

import sys

from .report.runner import main

if __name__ == "__main__":
    sys.exit(main(doc=__doc__))
