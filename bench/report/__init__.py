"""The GPU report behind `python -m bench.gpu_report`, split by concern.

    runner       phases, child processes, deadlines, the command line
    common       Ctx (one section's context), rows saved as they are produced, checks, timing helper
    shapes       the shapes every section uses (realistic on CUDA: ../cases.py; tiny on a dry run)
    machine      GPU and versions, the floors measured here (copy bandwidth, GEMM rates)
    dct, subimages, vq, attention, kvcache
                 per op: correctness of every shipped Triton implementation, timings against the reference
    generators   sampling agreement, the decode step per token, cached vs recompute sampling
    dispatch     the measured-decisions table the timings imply (spectralar_kernels/_dispatch.py MEASURED)
    writer       the markdown report

No module here is named test_*.py or bench_*.py: pytest collects bench/ with those patterns.
"""
