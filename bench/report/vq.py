"""vq_nearest: l2 and cosine, every shipped implementation, checks and timings (K = 4096 and 16384)."""

from __future__ import annotations

import inspect

import torch

from .. import floors as fl
from . import baselines
from .common import (
    CHECK_COLS,
    Ctx,
    check,
    dname,
    launcher,
    launcher_check,
    nan_like,
    public_check,
    run_case,
    with_probe,
)
from .timing import Provider, kernel_providers, time_providers


def _key(metric: str):
    return ("vq_nearest", metric)


def _atol(z: torch.Tensor, c: torch.Tensor, metric: str) -> float:
    """cosine: 1e-5; l2: 1e-5 max(1, max|z|^2 + max|c|^2) (the expanded distance cancels at that scale)."""
    if metric == "cosine":
        return 1e-5
    scale = z.double().pow(2).sum(1).max().item() + c.double().pow(2).sum(1).max().item()
    return 1e-5 * max(1.0, scale)


def _launch(ctx: Ctx, z, c, metric, out):
    """The launcher, told which implementation to run when it takes an `impl` argument."""
    fn = launcher("vq_nearest_fwd", "vq.triton")
    if "impl" in inspect.signature(fn).parameters:
        return fn(z, c, metric, impl=ctx.expected(_key(metric)), out=out)
    if ctx.impl is not None:
        raise TypeError(f"vq_nearest_fwd takes no impl argument, so it cannot run {ctx.impl}")
    return fn(z, c, metric, out=out)


def check_vq(ctx: Ctx) -> None:
    from spectralar_kernels import vq_nearest
    from spectralar_kernels.vq import ref

    def case(m, k, d, metric, dtype):
        z, c = ctx.randn((m, d), dtype), ctx.randn((k, d), dtype)
        (idx, dist), problem, probe_note = public_check(ctx, _key(metric), lambda: vq_nearest(z, c, metric))
        idx64, dist64 = ref.vq_nearest_ref(z, c, metric, upcast=True)
        _, dist_same = ref.vq_nearest_ref(z, c, metric)
        if idx.dtype != torch.int64 or not bool(((idx >= 0) & (idx < k)).all()):
            return {"result": "FAIL", "note": f"indices out of range or not int64 ({idx.dtype})"}
        # float64 distance of the code the kernel chose: a nearest code within tolerance (ties are legal)
        chosen = ref._direct_distance(z.double(), c.double()[idx], metric == "cosine")
        out = (torch.full((m,), -1, dtype=torch.int64, device=z.device), nan_like(dist))
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launch(ctx, z, c, metric, out)[1], dist64,
                                                    dist_same)])  # fmt: skip
        same_idx = 100 * (idx == idx64).double().mean().item()
        items = [("distance", dist, dist64, dist_same), ("chosen code", chosen, dist64, None), *extra]
        note = "; ".join(n for n in (f"indices = float64 argmin: {same_idx:.2f}%", note) if n)
        return with_probe(check(items, atol=_atol(z, c, metric), note=note), problem, probe_note)

    for tag, m, k, d in ctx.sizes["vq"]:
        if not ctx.wants(tag):
            continue
        for metric in ("l2", "cosine"):
            if not ctx.covers(_key(metric)):
                continue
            for dtype in ctx.check_dtypes:
                keys = {"case": f"{tag} {metric}", "shape": f"M={m} K={k} d={d}", "dtype": dname(dtype)}
                title = f"vq_nearest: correctness{f' ({ctx.impl})' if ctx.impl else ''}"
                run_case(ctx, title, CHECK_COLS, keys, case, m, k, d, metric, dtype)


def _training_step(c: torch.Tensor, fn):
    """`fn` as a training step meets it: the codebook was just updated in place (its version counter moves, as an
    optimizer step moves it), so no call reuses anything prepared from the codebook by an earlier call (vq-v2
    caches a prepared codebook per version). Every provider pays the same in-place no-op."""

    def step():
        c.mul_(1)
        return fn()

    return step


def time_vq(ctx: Ctx) -> None:
    from spectralar_kernels import vq_nearest
    from spectralar_kernels.vq import ref

    def run(m, k, d, metric, dtype):
        z, c = ctx.randn((m, d), dtype), ctx.randn((k, d), dtype)
        providers = [Provider("ref (chunked)", lambda: ref.vq_nearest_ref(z, c, metric), "ref"),
                     *baselines.vq(ctx, z, c, metric),
                     *kernel_providers(ctx, _key(metric), lambda: vq_nearest(z, c, metric))]  # fmt: skip
        for p in providers:
            p.fn = _training_step(c, p.fn)
        cost = fl.vq_cost(m, k, d, z.element_size())
        title = "vq_nearest: timing (as in training: the codebook changes between calls)"
        time_providers(ctx, title, _key(metric), f"{metric} M={m} K={k} d={d}", dtype, providers, cost)

    for m, k, d in ctx.sizes["vq_time"]:
        for metric in ("l2", "cosine"):
            for dtype in ctx.time_dtypes:
                run(m, k, d, metric, dtype)
