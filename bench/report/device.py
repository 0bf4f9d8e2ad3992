"""What the report needs from the accelerator, behind one small interface, so every section runs the same code on
CUDA and on a CPU dry run.

`Cuda` wraps torch.cuda (synchronise, timing events, CUDA-graph capture, allocator statistics, an L2 flush);
`StandIn` gives the same methods on CPU (no-op synchronisation, perf_counter events, a "graph" that replays
the captured callable, zero allocator statistics). The sections never branch on the device for these: a
CUDA-graph row or a peak-memory column that would fail on a GPU fails the same way in the CPU dry run and in
the tests (the report's first GPU run once died in a branch that only CUDA took).
"""

from __future__ import annotations

import time

import torch

FLUSH_BYTES = 256 << 20  # larger than any L2 (H100 50 MB, H200 50 MB, B200 126 MB)


class Cuda:
    """torch.cuda, as the report uses it."""

    name = "cuda"

    def __init__(self):
        self._flush = None

    def sync(self) -> None:
        torch.cuda.synchronize()

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    def flush_l2(self) -> None:
        """Overwrite a buffer larger than L2, so the next call reads its inputs from memory."""
        if self._flush is None:
            self._flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        self._flush.zero_()

    def graph(self, fn):
        """`fn` captured as one CUDA graph (after a warm-up call on a side stream, as capture requires); returns
        the replay. `fn` must be capturable: no host sync, no allocation that changes between calls."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return g.replay

    def allocated(self) -> int:
        return torch.cuda.memory_allocated()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


class _Event:
    """torch.cuda.Event's timing interface on the host clock."""

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1e3  # ms, as CUDA events report


class StandIn(Cuda):
    """The CPU stand-in of `Cuda` for dry runs and tests: same methods, host equivalents."""

    name = "cpu"

    def sync(self) -> None:
        pass

    def event(self):
        return _Event()

    def flush_l2(self) -> None:
        if self._flush is None:
            self._flush = torch.empty(1 << 18, dtype=torch.int32)
        self._flush.zero_()

    def graph(self, fn):
        """The capture contract without a GPU: one warm-up call, one "capture" call, then replays call `fn`."""
        fn()
        fn()
        return fn

    def allocated(self) -> int:
        return 0

    def reset_peak(self) -> None:
        pass

    def peak(self) -> int:
        return 0

    def empty_cache(self) -> None:
        pass


def for_device(device: str) -> Cuda:
    return Cuda() if device == "cuda" else StandIn()
