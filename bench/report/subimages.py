"""spectral_subimages: one window per sample and all prefixes, checks and timings."""

from __future__ import annotations

import torch

from .. import floors as fl
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


def _key(all_prefixes: bool):
    return ("spectral_subimages", "all_prefixes" if all_prefixes else "one_window")


def _windows(ctx: Ctx, shape, spec, all_prefixes: bool):
    """Prefix list (all_prefixes) or an int64 tensor [B] of per-sample windows drawn from the power mapping."""
    from spectralar_kernels import spectral_windows

    s = shape[-1]
    windows = list(spec) if isinstance(spec, list) else spectral_windows(s, min(spec, s), "power")
    if all_prefixes:
        return windows
    pick = ctx.randint(0, len(windows), (shape[0],))
    return torch.tensor(windows, dtype=torch.int64, device=ctx.device)[pick]


def _what(shape, spec, all_prefixes: bool) -> str:
    n = len(spec) if isinstance(spec, list) else min(spec, shape[-1])
    return f"all_prefixes N={n}" if all_prefixes else "one window per sample"


def check_subimages(ctx: Ctx) -> None:
    from spectralar_kernels import spectral_subimages
    from spectralar_kernels.subimages import ref

    def case(shape, spec, all_prefixes, dtype):
        x = ctx.randn(shape, dtype)
        windows = _windows(ctx, shape, spec, all_prefixes)
        y, problem, probe_note = public_check(ctx, _key(all_prefixes),
                                              lambda: spectral_subimages(x, windows, all_prefixes=all_prefixes))
        oracle = ref.spectral_subimages(x, windows, all_prefixes, upcast=True)
        same = ref.spectral_subimages(x, windows, all_prefixes)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", launcher(
            "spectral_subimages_fwd", "subimages.triton")(x, windows, all_prefixes, out=nan_like(y)), oracle, same)])
        return with_probe(check([("public", y, oracle, same), *extra], note=note), problem, probe_note)

    for tag, shape, spec, all_prefixes in ctx.sizes["sub"]:
        if not ctx.wants(tag) or not ctx.covers(_key(all_prefixes)):
            continue
        for dtype in ctx.check_dtypes:
            keys = {"case": f"{tag} {_what(shape, spec, all_prefixes)}", "shape": fmt_shape(shape),
                    "dtype": dname(dtype)}  # fmt: skip
            title = f"spectral_subimages: correctness{f' ({ctx.impl})' if ctx.impl else ''}"
            run_case(ctx, title, CHECK_COLS, keys, case, shape, spec, all_prefixes, dtype)


def time_subimages(ctx: Ctx) -> None:
    from spectralar_kernels import spectral_subimages
    from spectralar_kernels.subimages import ref

    def run(shape, spec, all_prefixes, dtype):
        x = ctx.randn(shape, dtype)
        windows = _windows(ctx, shape, spec, all_prefixes)
        providers = [Provider("ref", lambda: ref.spectral_subimages(x, windows, all_prefixes), "ref"),
                     *baselines.subimages(ctx, x, windows, all_prefixes),
                     *kernel_providers(ctx, _key(all_prefixes), lambda: spectral_subimages(x, windows, all_prefixes))]
        listed = windows if all_prefixes else windows.tolist()
        cost = fl.subimages_cost(shape, listed, all_prefixes, x.element_size())
        case = f"{_what(shape, spec, all_prefixes)} {fmt_shape(shape)}"
        time_providers(ctx, "spectral_subimages: timing", _key(all_prefixes), case, dtype, providers, cost)

    for shape, spec, all_prefixes in ctx.sizes["sub_time"]:
        for dtype in ctx.time_dtypes:
            run(shape, spec, all_prefixes, dtype)
