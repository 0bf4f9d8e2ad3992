"""Helpers the examples share: best-of-N wall time and a relative error."""

import time

import torch


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of `fn()` over `repeats` runs, in ms (the minimum: least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 for two zero tensors)."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
