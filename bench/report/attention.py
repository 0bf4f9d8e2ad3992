"""attention: full, causal and prefix-LM, forward and forward+backward, checks and timings.

Baselines in the timings (baselines.py): SDPA on each of its backends that accepts the case, SDPA with an
explicit boolean mask, FlexAttention with a block mask (compiled), flash-attn when it imports.
"""

from __future__ import annotations

import torch

from .. import floors as fl
from ..cases import parse_mask
from . import baselines
from .common import (
    CHECK_COLS,
    Ctx,
    check,
    dname,
    fmt_shape,
    launcher,
    launcher_check,
    nan_like,
    public_check,
    run_case,
    with_probe,
)
from .timing import Provider, kernel_providers, time_providers


def canonical(causal: bool, prefix_len: int, t: int) -> tuple[bool, int]:
    """The mask arguments the public `attention` hands its launcher (prefix 1 is causal, prefix T is full)."""
    if not causal or prefix_len >= t:
        return False, 0
    return True, 0 if prefix_len <= 1 else prefix_len


def variant(causal: bool, prefix_len: int, t: int) -> str:
    """The spectralar_kernels/_dispatch.py variant of a mask: "full", "causal" or "prefix"."""
    c2, p2 = canonical(causal, prefix_len, t)
    return "prefix" if p2 else ("causal" if c2 else "full")


def check_attention(ctx: Ctx) -> None:
    from spectralar_kernels import attention
    from spectralar_kernels.attn import ref

    def forward(shape, causal, prefix, dtype):
        key = ("attention", variant(causal, prefix, shape[1]))
        q, k, v = (ctx.randn(shape, dtype) for _ in range(3))
        o, problem, probe_note = public_check(ctx, key, lambda: attention(q, k, v, causal=causal, prefix_len=prefix))
        oracle = ref.attention_ref(q.double(), k.double(), v.double(), causal, prefix)
        same = ref.attention_ref(q, k, v, causal, prefix)
        c2, p2 = canonical(causal, prefix, shape[1])
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", launcher("attention_fwd", "attn.triton")(
            q, k, v, c2, p2, shape[-1] ** -0.5, out=nan_like(q))[0], oracle, same)])  # fmt: skip
        return with_probe(check([("public", o, oracle, same), *extra], note=note), problem, probe_note)

    def backward(shape, causal, prefix, dtype):
        key = ("attention", variant(causal, prefix, shape[1]))
        q, k, v = (ctx.randn(shape, dtype).requires_grad_(True) for _ in range(3))
        do = ctx.randn(shape, dtype)
        grads, problem, probe_note = public_check(ctx, key, lambda: torch.autograd.grad(
            attention(q, k, v, causal=causal, prefix_len=prefix), (q, k, v), do))  # fmt: skip
        x64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
        want = torch.autograd.grad(ref.attention_ref(*x64, causal, prefix), x64, do.double())
        same = torch.autograd.grad(ref.attention_ref(q, k, v, causal, prefix), (q, k, v), do)
        items = [(f"d{n}", g, g64, gs) for n, g, g64, gs in zip("qkv", grads, want, same)]

        def launched():
            fwd, bwd = launcher("attention_fwd", "attn.triton"), launcher("attention_bwd", "attn.triton")
            c2, p2 = canonical(causal, prefix, shape[1])
            qd, kd, vd = (t.detach() for t in (q, k, v))
            scale = shape[-1] ** -0.5
            o2, lse = fwd(qd, kd, vd, c2, p2, scale)
            gl = bwd(do, qd, kd, vd, o2, lse, c2, p2, scale, dq=nan_like(qd), dk=nan_like(kd), dv=nan_like(vd))
            return [(f"launcher d{n} out=NaN", g, g64, gs) for n, g, g64, gs in zip("qkv", gl, want, same)]

        extra, note = launcher_check(ctx, launched)
        return with_probe(check(items + extra, note=note), problem, probe_note)

    title = f"attention: correctness ([B, T, H, D]){f' ({ctx.impl})' if ctx.impl else ''}"
    for tag, shape, masks in ctx.sizes["attn"]:
        if not ctx.wants(tag):
            continue
        for mask in masks:
            causal, prefix, label = parse_mask(mask, shape[1])
            if not ctx.covers(("attention", variant(causal, prefix, shape[1]))):
                continue
            for dtype in ctx.check_dtypes:
                for what, fn in (("fwd", forward), ("fwd+bwd", backward)):
                    keys = {"case": f"{tag} {label} {what}", "shape": fmt_shape(shape), "dtype": dname(dtype)}
                    run_case(ctx, title, CHECK_COLS, keys, fn, shape, causal, prefix, dtype)


def time_attention(ctx: Ctx) -> None:
    from spectralar_kernels import attention
    from spectralar_kernels.attn import ref

    def run(name, shape, mask, dtype):
        b, t, h, d = shape
        causal, prefix, label = parse_mask(mask, t)
        key = ("attention", variant(causal, prefix, t))
        c2, p2 = canonical(causal, prefix, t)
        ours = lambda q, k, v: attention(q, k, v, causal=causal, prefix_len=prefix)  # noqa: E731
        fwds = [("ref (SDPA)", lambda q, k, v: ref.attention_ref(q, k, v, causal, prefix)),
                *baselines.attention(ctx, t, c2, p2, dtype)]  # fmt: skip
        q, k, v = (ctx.randn(shape, dtype) for _ in range(3))
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        do = ctx.randn(shape, dtype)
        for backward in (False, True):
            if backward:
                call = lambda f: lambda: torch.autograd.grad(f(qg, kg, vg), (qg, kg, vg), do)  # noqa: E731
            else:
                call = lambda f: lambda: f(q, k, v)  # noqa: E731
            providers = [Provider(fwds[0][0], call(fwds[0][1]), "ref"), *kernel_providers(ctx, key, call(ours)),
                         *(Provider(n, call(f)) for n, f in fwds[1:])]  # fmt: skip
            cost = fl.attention_cost(b, t, h, d, causal, prefix, q.element_size(), backward=backward)
            case = f"{name} {label} {'fwd+bwd' if backward else 'fwd'}"
            title = f"attention: timing ({fmt_shape(shape)} = [B, T, H, D])"
            time_providers(ctx, title, key, case, dtype, providers, cost)

    for name, shape, mask in ctx.sizes["attn_time"]:
        for dtype in ctx.time_dtypes:
            run(name, shape, mask, dtype)
