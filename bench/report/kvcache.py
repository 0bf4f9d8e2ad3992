"""attention_with_kvcache: one decoding step (new k/v written in place, then read), checks and timings."""

from __future__ import annotations

import dataclasses
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

KEY = ("attention_with_kvcache", "decode")


def _inputs(ctx: Ctx, b, t_max, h, d, t_q, seqlens, dtype):
    kc, vc = ctx.randn((b, t_max, h, d), dtype), ctx.randn((b, t_max, h, d), dtype)
    q, k, v = (ctx.randn((b, t_q, h, d), dtype) for _ in range(3))
    return kc, vc, q, k, v, torch.tensor(seqlens, dtype=torch.int32, device=ctx.device)


def _launch(q, kc, vc, sl, scale):
    """The decode launcher on caches that already hold the new keys, into a NaN-filled output; the scale is
    passed by name, so a launcher whose arguments moved raises TypeError (a note) instead of misreading them."""
    fn = launcher("attention_with_kvcache_fwd", "attn.decode", "attn.triton")
    params = inspect.signature(fn).parameters
    name = next((n for n in ("scale", "softmax_scale") if n in params), None)
    if name is None or "out" not in params:
        raise TypeError(f"attention_with_kvcache_fwd{inspect.signature(fn)}: no scale/out argument")
    return fn(q, kc, vc, sl, **{name: scale}, out=nan_like(q))


def check_kvcache(ctx: Ctx) -> None:
    from spectralar_kernels import attention_with_kvcache
    from spectralar_kernels.attn import ref

    def case(b, t_max, h, d, t_q, seqlens, dtype):
        kc, vc, q, k, v, sl = _inputs(ctx, b, t_max, h, d, t_q, seqlens, dtype)
        kc0, vc0 = kc.clone(), vc.clone()
        step = lambda: attention_with_kvcache(q, kc, vc, sl, k=k, v=v, causal=True)  # noqa: E731
        o, problem, probe_note = public_check(ctx, KEY, step)
        pos = sl.long()[:, None] + torch.arange(t_q, device=ctx.device)  # [B, Tq]
        rows = torch.arange(b, device=ctx.device)[:, None].expand(b, t_q)
        written = torch.zeros(b, t_max, dtype=torch.bool, device=ctx.device)
        written[rows, pos] = True
        write_ok = all(torch.equal(x, y) for x, y in ((kc[rows, pos], k), (vc[rows, pos], v),
                                                       (kc[~written], kc0[~written]), (vc[~written], vc0[~written])))
        oracle = ref.attention_with_kvcache_ref(q.double(), kc.double(), vc.double(), sl)
        same = ref.attention_with_kvcache_ref(q, kc, vc, sl)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launch(q, kc, vc, sl, d**-0.5), oracle, same)])
        res = with_probe(check([("public", o, oracle, same), *extra], note=note), problem, probe_note)
        if not write_ok:
            res["result"], res["note"] = "FAIL", ("cache write wrong (new k/v not at cache_seqlens, or other rows "
                                                  "touched); " + res["note"])  # fmt: skip
        return res

    if not ctx.covers(KEY):
        return
    title = "attention_with_kvcache: correctness (cache written in place, then read)"
    for tag, b, t_max, h, d, t_q, seqlens in ctx.sizes["kv"]:
        if not ctx.wants(tag):
            continue
        for dtype in ctx.check_dtypes:
            lens = f"{seqlens[0]}" if len(set(seqlens)) == 1 else ",".join(map(str, seqlens))
            keys = {"case": f"{tag} Tq={t_q} cache_seqlens={lens}", "shape": f"B={b} T_max={t_max} H={h} D={d}",
                    "dtype": dname(dtype)}  # fmt: skip
            run_case(ctx, title, CHECK_COLS, keys, case, b, t_max, h, d, t_q, seqlens, dtype)


def time_kvcache(ctx: Ctx) -> None:
    """Each case twice: an eager loop of steps, and each step captured as one CUDA graph and replayed (how
    `generate(compile=True)` runs it; on a dry run the stand-in graph of device.py). Under a graph the
    reference is timed as a baseline: a path that cannot be captured is an n/a row there, not a failure."""
    from spectralar_kernels import attention_with_kvcache
    from spectralar_kernels.attn import ref

    def run(b, t_max, h, d, t_q, seqlens, dtype, graph):
        kc, vc, q, k, v, sl = _inputs(ctx, b, t_max, h, d, t_q, seqlens, dtype)

        def reference():
            ref.write_kvcache(kc, vc, sl, k, v)
            return ref.attention_with_kvcache_ref(q, kc, vc, sl)

        ours = lambda: attention_with_kvcache(q, kc, vc, sl, k=k, v=v, causal=True)  # noqa: E731
        wrap = ctx.dev.graph if graph else None
        providers = [Provider("ref", reference, "baseline" if graph else "ref", wrap=wrap),
                     *(dataclasses.replace(p, wrap=wrap) for p in baselines.decode(ctx, q, kc, vc, k, v, sl)),
                     *kernel_providers(ctx, KEY, ours, wrap=wrap)]  # fmt: skip
        cost = fl.decode_cost(seqlens, t_q, h, d, q.element_size())
        case = f"B={b} T_max={t_max} H={h} D={d} Tq={t_q} seqlen={seqlens[0]}{', CUDA graph' if graph else ''}"
        title = "attention_with_kvcache: timing (write k/v + one step)"
        time_providers(ctx, title, KEY, case, dtype, providers, cost, probe_fn=ours)

    for b, t_max, h, d, t_q, seqlens in ctx.sizes["kv_time"]:
        for dtype in ctx.time_dtypes:
            for graph in (False, True):
                run(b, t_max, h, d, t_q, seqlens, dtype, graph)
