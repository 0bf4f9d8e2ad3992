"""Benchmarks, run from the repository root.

    pytest bench/ --benchmark-only        # CPU/GPU timings, ours vs references and peers (bench_*.py)
    python -m bench.gpu_report            # one-shot GPU report (report/): correctness, timings, dispatch table
    python -m bench.kernel_resources      # ahead-of-time compile of every kernel (docs/kernel_resources.md)

cases.py holds the shapes both the GPU report and the bench_*.py files time; floors.py the bytes / flops of
each op and the measured floors they are held against.
"""
