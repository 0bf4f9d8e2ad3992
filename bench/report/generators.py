"""Generators (random init): sampling agreement, the decode step per token, cached vs recompute sampling.

One section per preset (fmnist, d16), so each runs alone on the GPU. The decode step (`decode_one_token`) is
timed eager (under `auto`, and with SPECTRALAR_KERNELS=triton), as a CUDA graph (torch.compile "reduce-overhead",
the gpt-fast way) and through plain torch.compile, against the floor of reading the weights once per step.
The CUDA-graph step is the same code on CPU (Inductor records no graph for CPU tensors there), so the dry run
and the tests run every line a GPU run does.

What this module uses of the model and the sampler: `SpectralGPT(config)`, `preset("generator", name)`,
`model.setup_caches(rows, dtype, device)` (a module or collection of the cache tensors),
`model.decode_one_token(token, caches, cache_seqlens)` and `model.generate(labels, cfg_scale=, generator=,
kv_cache=, compile=, top_k=)`.
Sampling is timed with and without the KV cache, and with `generate(compile=True)` (its whole sampling step as
one CUDA graph), at several batches with CFG (two rows per image); ms/token = time per call / N. The check
section of the same preset runs first, in the parallel phase: it compiles every step the timings compile, so
the timings load torch.compile's on-disk caches instead of compiling from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import traceback
import types
from pathlib import Path

import torch

from .. import floors as fl
from ..cases import CFG_SCALE
from .common import Ctx, dname, forced, run_case, short_error
from .timing import measure

ROOT = Path(__file__).resolve().parents[2]
STEP_TITLE = "generator decode step (random init, bf16; one step = one token for every row)"
STEP_COLS = ["model", "rows", "step", "us/step", "kernel us", "tokens/s", "weights floor us", "% of weights floor",
             "roofline us", "% of roofline", "x eager", "result", "note"]  # fmt: skip
SAMPLE_TITLE = f"generator sampling (random init, bf16, CFG {CFG_SCALE}: 2 rows per image)"
SAMPLE_COLS = ["model", "batch (rows)", "sampling", "s/call", "ms/token", "images/s", "tokens/s", "x recompute",
               "result", "note"]  # fmt: skip
AGREE_TITLE = "generator sampling: KV cache vs recompute / compiled decode, same torch.Generator seed"
AGREE_COLS = ["model", "dtype", "sampling", "equal codes", "result", "note"]


def _api():
    """(preset, SpectralGPT). If the package's __init__ cannot import (e.g. safetensors missing), load just
    the modules sampling needs from the source tree."""
    try:
        import spectralar  # noqa: F401
    except ImportError:
        traceback.print_exc()
        for name in [m for m in sys.modules if m == "spectralar" or m.startswith("spectralar.")]:
            del sys.modules[name]
        package = types.ModuleType("spectralar")
        package.__path__ = [str(ROOT / "spectralar")]
        sys.modules["spectralar"] = package
    from spectralar.models.config import preset
    from spectralar.models.generator import SpectralGPT

    return preset, SpectralGPT


def _build(ctx: Ctx, name: str, dtype: torch.dtype):
    preset, SpectralGPT = _api()
    cfg, label = preset("generator", name), name
    if ctx.dry and name == "d16":  # same sequence length and codebook, tiny body: a dry run only
        cfg = dataclasses.replace(cfg, width=64, depth=2, heads=2)
        label = "d16 (dry run: width 64, depth 2)"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = SpectralGPT(cfg)
    return model.to(dtype).eval().requires_grad_(False), cfg, label


def _allow_recompiles() -> None:
    """Every (model, rows, mode) is one more compiled entry for the same decode_one_token code object."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        with contextlib.suppress(Exception):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))


SAMPLING = {"recompute": {"kv_cache": False}, "KV cache": {"kv_cache": True},
            "KV cache, compiled step": {"kv_cache": True, "compile": True}}  # fmt: skip


def _generate(ctx: Ctx, model, batch: int, mode: str, **kw) -> torch.Tensor:
    labels = torch.arange(batch, device=ctx.device) % model.config.num_classes
    g = torch.Generator(device=ctx.device).manual_seed(0)
    codes = model.generate(labels, cfg_scale=CFG_SCALE, generator=g, **SAMPLING[mode], **kw)
    ctx.sync()
    return codes


def _static_tensors(caches) -> list[torch.Tensor]:
    """Every tensor of a sampling cache (a module's buffers, or the tensors of a list / tuple / dataclass of
    them): what a CUDA-graph step writes in place and so must find at fixed addresses."""
    if isinstance(caches, torch.Tensor):
        return [caches]
    if isinstance(caches, torch.nn.Module):
        return list(caches.buffers())
    if dataclasses.is_dataclass(caches):
        caches = [getattr(caches, f.name) for f in dataclasses.fields(caches)]
    if isinstance(caches, (list, tuple)):
        return [t for c in caches for t in _static_tensors(c)]
    return []


def graph_step(fn, static: list[torch.Tensor]):
    """gpt-fast's CUDA-graph decode step: torch.compile(mode="reduce-overhead") with `static` (caches, positions)
    marked as static addresses, each call a new graph step (the previous step's outputs are not read after).
    On CPU the same calls compile without a graph."""
    for t in static:
        torch._dynamo.mark_static_address(t)
    step = torch.compile(fn, fullgraph=True, dynamic=False, mode="reduce-overhead")

    def call(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return step(*args)

    return call


def _step_fn(ctx: Ctx, model, rows: int, how: str, compiled: dict):
    """A call of one decode step (`decode_one_token`) at `rows`, caches filled to position N/2 (the mean step).

    "CUDA graph": `graph_step`; "torch.compile": plain torch.compile; "eager": the method. `compiled` keeps the
    steps per (how, rows), so the warm-up call and the timed calls use one."""
    dtype, device = next(model.parameters()).dtype, torch.device(ctx.device)
    if (how, rows) not in compiled:
        caches = model.setup_caches(rows, dtype, device)
        seqlens = torch.zeros(rows, dtype=torch.int32, device=device)
        fn = model.decode_one_token
        if how.startswith("CUDA graph"):
            fn = graph_step(fn, [seqlens, *_static_tensors(caches)])
        elif how == "torch.compile":
            fn = torch.compile(fn, fullgraph=True, dynamic=False)
        compiled[(how, rows)] = (fn, caches, seqlens)
    fn, caches, seqlens = compiled[(how, rows)]
    token = torch.zeros(rows, dtype=torch.long, device=device)
    seqlens.fill_(model.config.num_tokens // 2)
    return lambda: fn(token, caches, seqlens)


def step_modes(ctx: Ctx) -> list[tuple[str, str | None]]:
    """(step, SPECTRALAR_KERNELS) timed first at every rows: eager (the "x eager" baseline), eager with the
    Triton kernels forced, the CUDA graph. torch.compile without graphs comes last (after the sampling), as it
    matters least should the budget run out."""
    graph = "CUDA graph" if ctx.cuda else "CUDA graph (CPU: compiled, no graph)"
    return [("eager", None), ("eager, triton kernels", "triton" if ctx.kernels_run else "ref"), (graph, None)]


def check_sampling(ctx: Ctx) -> None:
    """Eager KV cache vs recompute and vs the compiled decode step (fp32: equal codes; low precision: info), then
    one call of every compiled step and Triton path the timing section uses, to fill the on-disk caches."""
    _allow_recompiles()
    name, sizes = ctx.model, ctx.sizes["generators"]
    dtypes = [torch.float32, torch.bfloat16] if name == "fmnist" else [torch.bfloat16 if ctx.cuda else torch.float32]

    def agreement(model, dtype, other, kw):
        a, b = (_generate(ctx, model, sizes["agree_batch"], mode, **kw) for mode in ("KV cache", other))
        frac = (a == b).double().mean().item()
        if dtype == torch.float32:
            return {"equal codes": f"{100 * frac:.1f}%", "result": "PASS" if frac == 1.0 else "FAIL"}
        return {"equal codes": f"{100 * frac:.1f}%", "result": "info",
                "note": "low precision: the two paths round differently, near-ties may flip and then diverge"}

    for dtype in dtypes:
        keys = {"model": name, "dtype": dname(dtype)}
        try:
            model, _, keys["model"] = _build(ctx, name, dtype)
        except Exception as exc:
            traceback.print_exc()
            ctx.writer.row(AGREE_TITLE, AGREE_COLS, {**keys, "result": "FAIL", "note": short_error(exc)})
            continue
        for other, vs in (("recompute", "vs recompute"), ("KV cache, compiled step", "vs compiled step")):
            for kw, what in (({}, "sampled (temperature 1)"), ({"top_k": 1}, "greedy (top_k=1)")):
                keys["sampling"] = f"{what}, batch {sizes['agree_batch']}, {vs}"
                run_case(ctx, AGREE_TITLE, AGREE_COLS, keys, agreement, model, dtype, other, kw)
        if dtype == dtypes[-1]:
            _warm(ctx, model, sizes, keys["model"])
        del model


def _warm(ctx: Ctx, model, sizes, label: str) -> None:
    """Compile what the timing section compiles (torch.compile's caches on disk carry it over). A failure is a
    FAIL row here (the timing row fails the same way later, if the budget lets it run)."""
    compiled = {}
    todo = [(rows, how, mode) for rows in sizes["step_rows"] for how, mode in step_modes(ctx)[1:]]
    todo += [(batch, "sampling", None) for batch in sizes["graph_batches"] if batch != sizes["agree_batch"]]
    todo += [(rows, "torch.compile", None) for rows in sizes["step_rows"]]

    def warm(n, how, mode):
        with torch.no_grad(), forced(mode):
            if how == "sampling":
                _generate(ctx, model, n, "KV cache, compiled step")
            else:
                _step_fn(ctx, model, n, how, compiled)()
            ctx.sync()
        return {"result": "PASS", "note": "compile warm-up for the timings"}

    for n, how, mode in todo:
        keys = {"model": label, "dtype": dname(next(model.parameters()).dtype),
                "sampling": f"compile warm-up: {how} at {n} {'images' if how == 'sampling' else 'rows'}"}
        run_case(ctx, AGREE_TITLE, AGREE_COLS, keys, warm, n, how, mode)


def section_generator(ctx: Ctx) -> None:
    _allow_recompiles()
    name, sizes = ctx.model, ctx.sizes["generators"]
    if name == "d16":
        preset, SpectralGPT = _api()
        with torch.device("meta"):
            n_d16 = sum(p.numel() for p in SpectralGPT(preset("generator", "d16")).parameters())
        ctx.writer.note(SAMPLE_TITLE, SAMPLE_COLS, f"d16 parameters (exact): {n_d16:,}")
    dtype = torch.bfloat16
    try:
        model, cfg, label = _build(ctx, name, dtype)
    except Exception as exc:
        traceback.print_exc()
        ctx.writer.row(SAMPLE_TITLE, SAMPLE_COLS, {"model": name, "result": "FAIL", "note": short_error(exc)})
        return
    embeddings = {id(model.tok_emb.weight), id(model.cls_emb.weight)}  # a step reads one row of each
    params_read = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    ctx.writer.note(STEP_TITLE, STEP_COLS, "floors: weights floor = the weights read once (embedding tables left out: "
                    "a step reads one row per sequence) / copy bandwidth; roofline also counts the K/V cache read at "
                    "the timed position (N/2) and the flops at the bf16 GEMM rate (bench/floors.py)")  # fmt: skip
    compiled, eager_s = {}, {}

    def step(rows, how, mode):
        with torch.no_grad(), forced(mode):
            t0 = time.perf_counter()
            call = _step_fn(ctx, model, rows, how, compiled)
            call()  # compiles on the first call
            ctx.sync()
            first = time.perf_counter() - t0
            call()  # a CUDA graph is recorded on the second call: keep that out of the timing's estimate
            seconds, kernel_s = measure(ctx, call)
        if how == "eager":
            eager_s[rows] = seconds
        cost = fl.generator_step_cost(params_read, rows, cfg.depth, cfg.width, cfg.num_tokens // 2,
                                      torch.finfo(dtype).bits // 8)  # fmt: skip
        weights_s = params_read * (torch.finfo(dtype).bits // 8) / (ctx.floors.copy_gbps * 1e9)
        roof_s = ctx.floors.floor_s(cost, dtype)[0]
        return {"us/step": f"{seconds * 1e6:.1f}", "kernel us": f"{kernel_s * 1e6:.1f}",
                "tokens/s": f"{rows / seconds:.0f}",
                "weights floor us": f"{weights_s * 1e6:.1f}", "% of weights floor": f"{100 * weights_s / seconds:.3g}",
                "roofline us": f"{roof_s * 1e6:.1f}", "% of roofline": f"{100 * roof_s / seconds:.3g}",
                "x eager": f"{eager_s[rows] / seconds:.2f}" if rows in eager_s and how != "eager" else "-",
                "result": "ok", "note": f"first call (with any compile) {first:.2f} s"}  # fmt: skip

    recompute_s = {}

    def sample(batch, mode):
        t0 = time.perf_counter()
        _generate(ctx, model, batch, mode)  # warm-up: allocator, compiles, kernels the checks did not compile
        warm = time.perf_counter() - t0
        times = []
        for _ in range(sizes["reps"]):
            t0 = time.perf_counter()
            _generate(ctx, model, batch, mode)
            times.append(time.perf_counter() - t0)
        s = min(times)
        if mode == "recompute":
            recompute_s[batch] = s
        return {"s/call": f"{s:.3f}", "ms/token": f"{s * 1e3 / cfg.num_tokens:.3f}", "images/s": f"{batch / s:.1f}",
                "tokens/s": f"{batch * cfg.num_tokens / s:.0f}",
                "x recompute": f"{recompute_s[batch] / s:.2f}" if batch in recompute_s and mode != "recompute" else "-",
                "result": "ok", "note": f"best of {len(times)}, {cfg.num_tokens} tokens/image; warm-up call "
                                        f"{warm:.2f} s"}  # fmt: skip

    def step_rows(rows, modes):
        for how, mode in modes:
            run_case(ctx, STEP_TITLE, STEP_COLS, {"model": label, "rows": rows, "step": how}, step, rows, how, mode)

    for rows in sizes["step_rows"]:
        step_rows(rows, step_modes(ctx))
    for batch in sizes["batches"]:
        for mode in SAMPLING:
            if mode == "KV cache, compiled step" and batch not in sizes["graph_batches"]:
                continue
            keys = {"model": label, "batch (rows)": f"{batch} ({2 * batch})", "sampling": mode}
            run_case(ctx, SAMPLE_TITLE, SAMPLE_COLS, keys, sample, batch, mode)
    for rows in sizes["step_rows"]:
        step_rows(rows, [("torch.compile", None)])
