"""dct2d / idct2d: whole plane and blockwise, every shipped implementation, checks and timings."""

from __future__ import annotations

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

PLANE, BLOCKWISE = ("dct2d", "plane"), ("dct2d", "blockwise")


def _key(block):
    return PLANE if block is None else BLOCKWISE


def _launch(ctx: Ctx, x, block, inverse):
    """The launcher of the implementation under test, into a NaN-filled output."""
    if block is None:
        return launcher("dct2d_fwd", "transforms.triton")(x, None, inverse, out=nan_like(x))
    return launcher("blockwise_dct_fwd", "transforms.blockwise")(x, block, inverse, ctx.expected(BLOCKWISE),
                                                          out=nan_like(x))  # fmt: skip


def check_dct(ctx: Ctx) -> None:
    from spectralar_kernels import dct2d, idct2d
    from spectralar_kernels.transforms import ref

    def case(shape, block, inverse, dtype):
        x = ctx.randn(shape, dtype)
        y, problem, probe_note = public_check(ctx, _key(block), lambda: (idct2d if inverse else dct2d)(x, block=block))
        ref_fn = ref.idct2d if inverse else ref.dct2d
        oracle, same = ref_fn(x, block, upcast=True), ref_fn(x, block)
        extra, note = launcher_check(ctx, lambda: [("launcher out=NaN", _launch(ctx, x, block, inverse), oracle, same)])
        return with_probe(check([("public", y, oracle, same), *extra], note=note), problem, probe_note)

    for tag, shape, block in ctx.sizes["dct"]:
        if not ctx.wants(tag) or not ctx.covers(_key(block)):
            continue
        for inverse in (False, True):
            for dtype in ctx.check_dtypes:
                keys = {"case": f"{'idct2d' if inverse else 'dct2d'} {tag} block={block}", "shape": fmt_shape(shape),
                        "dtype": dname(dtype)}  # fmt: skip
                title = f"dct2d / idct2d: correctness{f' ({ctx.impl})' if ctx.impl else ''}"
                run_case(ctx, title, CHECK_COLS, keys, case, shape, block, inverse, dtype)


def time_dct(ctx: Ctx) -> None:
    from spectralar_kernels import dct2d
    from spectralar_kernels.transforms import ref

    def run(shape, block, dtype):
        x = ctx.randn(shape, dtype)
        providers = [Provider("ref", lambda: ref.dct2d(x, block), "ref"), *baselines.dct(ctx, x, block),
                     *kernel_providers(ctx, _key(block), lambda: dct2d(x, block=block))]  # fmt: skip
        cost = fl.dct2d_cost(shape, block, x.element_size())
        case = f"{fmt_shape(shape)}{'' if block is None else f' block={block}'}"
        title = f"dct2d: timing ({'whole plane' if block is None else 'blockwise'})"
        time_providers(ctx, title, _key(block), case, dtype, providers, cost)

    for shape, block in ctx.sizes["dct_time"]:
        for dtype in ctx.time_dtypes:
            run(shape, block, dtype)
