"""Machine section: GPU, versions, and the floors every "% of floor" column uses, measured here."""

from __future__ import annotations

import platform

import torch

from .. import floors as fl
from .common import Ctx, optional_module, run_case
from .timing import measure

TITLE, COLS = "Machine and measured floors", ["quantity", "value", "result", "note"]


def section_machine(ctx: Ctx) -> None:
    import triton

    w = ctx.writer
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        gpu = p.name
        info = [("GPU", p.name), ("compute capability", f"sm_{p.major}{p.minor}"),
                ("SMs", p.multi_processor_count), ("memory", f"{p.total_memory / 2**30:.0f} GiB"),
                ("CUDA (torch build)", torch.version.cuda)]  # fmt: skip
    else:
        gpu = f"CPU dry run ({platform.machine()})"
        info = [("device", f"CPU ({platform.processor() or platform.machine()}), dry run"),
                ("torch threads", torch.get_num_threads())]  # fmt: skip
    info += [("torch", torch.__version__), ("triton", triton.__version__), ("python", platform.python_version())]
    for mod in ("flash_attn", "torch_dct"):
        m = optional_module(mod)
        info.append((mod, getattr(m, "__version__", "installed") if m else "not installed (peer skipped)"))
    # the device class the run's decisions are filed under (spectralar_kernels/_dispatch.py)
    cap = f"{p.major}.{p.minor}" if ctx.cuda else "cpu"
    w.data["machine"] = {"gpu": gpu, "capability": cap, "torch": torch.__version__, "triton": triton.__version__}
    for k, v in info:
        w.row(TITLE, COLS, {"quantity": k, "value": v, "result": "info"})

    measured = {"copy_gbps": None, "tflops": {}}
    nominal = fl.Floors.nominal()

    def save_floors():  # after every measurement: a section killed later still leaves what it measured
        w.data["floors"] = {"copy_gbps": measured["copy_gbps"] or nominal.copy_gbps,
                            "tflops": {**nominal.tflops, **measured["tflops"]},
                            "measured": measured["copy_gbps"] is not None and len(measured["tflops"]) == 4}  # fmt: skip
        w.save()

    save_floors()

    def timer(fn) -> float:  # device time of one call (bench/report/timing.py)
        return measure(ctx, fn)[1]

    def copy():
        measured["copy_gbps"] = fl.measure_copy_gbps(ctx.sizes["copy_bytes"], ctx.device, timer)
        save_floors()
        return {"value": f"{measured['copy_gbps']:.4g} GB/s", "result": "ok",
                "note": f"{ctx.sizes['copy_bytes'] >> 20} MiB device-to-device copy; read + write counted"}  # fmt: skip

    def gemm(key, dtype, tf32):
        n = ctx.sizes["gemm_n"]
        measured["tflops"][key] = fl.measure_matmul_tflops(n, dtype, ctx.device, timer, tf32=tf32)
        save_floors()
        mode = ("TF32 allowed" if tf32 else "TF32 off") if dtype == torch.float32 else "fp32 accumulation"
        return {"value": f"{measured['tflops'][key]:.4g} TFLOP/s", "result": "ok", "note": f"{n}^3 GEMM, {mode}"}

    run_case(ctx, TITLE, COLS, {"quantity": "copy bandwidth"}, copy)
    for key, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                             ("fp32", torch.float32, False), ("tf32", torch.float32, True)):  # fmt: skip
        run_case(ctx, TITLE, COLS, {"quantity": f"GEMM {key}"}, gemm, key, dtype, tf32)
    if not w.data["floors"]["measured"]:
        w.note(TITLE, COLS, "some floors were not measured: nominal H200 datasheet numbers stand in for them")
