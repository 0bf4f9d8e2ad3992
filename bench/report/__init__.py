"""The GPU report behind `python -m bench.gpu_report`, split by concern.

    runner       phases, child processes, deadlines, the work folder (--resume, compile caches), the command line
    common       Ctx (one section's context), rows and records saved as they are produced, checks, the probe
    device       what the sections need from the GPU (sync, events, CUDA graphs, memory) and its CPU stand-in
    timing       providers timed side by side: wall time per call in a loop, kernel time after an L2 flush
    baselines    the strongest plain-PyTorch paths per op, the bar the kernels are held to
    shapes       the shapes every section uses (realistic on CUDA: ../cases.py; tiny on a dry run)
    machine      GPU, device class and versions, the floors measured here (copy bandwidth, GEMM rates)
    dct, subimages, vq, attention, kvcache
                 per op: correctness of every shipped Triton implementation, timings against the baselines
    generators   sampling agreement, the decode step per token, cached vs recompute sampling
    dispatch     the decisions the checks and timings imply, as spectralar_kernels/measured.json entries
    writer       the markdown report

No module here is named test_*.py or bench_*.py: pytest collects bench/ with those patterns.
"""
