"""Shared helpers for every op: backend choice, argument checks, warn-once, ahead-of-time specs.

Backend policy (per call, no import-time swapping), `choose_kernel(op, variant, *tensors, **sizes)`:
  SPECTRALAR_KERNELS=auto  (default) on CUDA tensors, the implementation that `measured.json` names for this
                           call's (op, variant, dtype, shape bucket, device class): an entry exists only where
                           a GPU report checked that kernel's output on the case and timed it faster than
                           every plain-PyTorch path it timed (`_dispatch` has the rule); the reference for
                           every other call, and always on CPU tensors. `sizes` are the raw dimensions the
                           bucket is made of (`_dispatch.bucket`); a call site that passes none gets the
                           reference.
  SPECTRALAR_KERNELS=triton  always the newest Triton implementation; on CPU tensors this needs
                           TRITON_INTERPRET=1 (how the tests execute the kernels without a GPU).
  SPECTRALAR_KERNELS=triton:ID[,ID]  Triton, with implementation ID (e.g. `blockwise-v1`) wherever an
                           op ships it and the newest elsewhere (how the GPU report times older kernels).
  SPECTRALAR_KERNELS=ref   always the reference.
`auto` does not pick the interpreter for CPU tensors even when TRITON_INTERPRET=1 is set: the
interpreter is 100-1000x slower than the reference, and model tests would crawl (docs/design-notes.md).
While torch.compile traces (`torch.compiler.is_compiling()`), `choose_kernel` returns the reference: plain
PyTorch that Inductor fuses and can capture in a CUDA graph. The exception is `attention_with_kvcache`,
registered as the custom op `spectralar::attention_with_kvcache` (attn/kvcache.py): a compiled
graph keeps it as one node, and the node chooses its implementation when the graph runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _dispatch
from ._dispatch import DTYPE_NAME

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PTR_SIG = {dtype: f"*{name}" for dtype, name in DTYPE_NAME.items()}  # AOT signature of a tensor argument
_BACKENDS = ("auto", "triton", "ref")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def cuda_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: launchers size their grids with it per call)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("spectralar_kernels_backend", default=None)
# What code traced by torch.compile sees instead: Dynamo cannot trace ContextVar.get (every compiled sampling step
# failed with "Unsupported method call ... ContextVar"), but it reads a module global and guards on its value.
# The innermost block entered last, process-wide (tracing happens in the thread that calls the compiled function).
_traced_backend: str | None = None


def _check_mode(mode: str) -> str:
    """`mode` lower-cased, or ValueError unless it is auto, ref, triton or triton:ID[,ID]."""
    mode = mode.lower()
    base, _, pinned = mode.partition(":")
    if base not in _BACKENDS or (pinned and base != "triton"):
        raise ValueError(f"SPECTRALAR_KERNELS must be one of {_BACKENDS} or triton:ID[,ID], got {mode!r}")
    return mode


@contextlib.contextmanager
def use_backend(mode: str):
    """Run the calls made inside the block with backend `mode` ("auto", "ref", "triton" or "triton:ID[,ID]"),
    whatever SPECTRALAR_KERNELS says. Scoped to this thread / asyncio task (a context variable), restored on
    exit, nestable: how tests and the GPU report pick a backend without touching the environment.

        with spectralar_kernels.use_backend("ref"):
            y = dct2d(x)
    """
    global _traced_backend
    mode = _check_mode(mode)
    token, outer = _backend.set(mode), _traced_backend
    _traced_backend = mode
    try:
        yield
    finally:
        _backend.reset(token)
        _traced_backend = outer


def kernels_mode() -> str:
    """The backend mode in force: the innermost `use_backend` block, else SPECTRALAR_KERNELS, lower-cased
    ("auto" when unset); read per call, never cached. While torch.compile traces, the innermost block is read
    from a module global (`_traced_backend`): dynamo cannot trace a context variable."""
    forced = _traced_backend if torch.compiler.is_compiling() else _backend.get()
    return forced if forced is not None else os.environ.get("SPECTRALAR_KERNELS", "auto").lower()


def choose_kernel(op: str, variant: str, *tensors: torch.Tensor, **sizes: int) -> str | None:
    """Implementation id to run for this call (e.g. "blockwise-v1"), or None for the PyTorch reference.

    `op`/`variant` index `_dispatch.IMPLEMENTATIONS`; the dtype and device are the first tensor's; `sizes` are
    the call's raw dimensions (`_dispatch.bucket` names them per op, e.g. `k=..., d=...` for vq_nearest). See
    the module docstring for the policy.
    """
    mode, _, pinned = _check_mode(kernels_mode()).partition(":")
    if mode == "ref" or torch.compiler.is_compiling():
        return None
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("SPECTRALAR_KERNELS=triton but triton is not installed (pip install triton)")
        if not (on_cuda or interpreter_on()):
            raise RuntimeError("SPECTRALAR_KERNELS=triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        pins = [p for p in pinned.split(",") if p]
        known = {i for impls in _dispatch.IMPLEMENTATIONS.values() for i in impls}
        if unknown := [p for p in pins if p not in known]:
            raise ValueError(f"SPECTRALAR_KERNELS pins {unknown}, which no op ships; shipped: {sorted(known)}")
        shipped = _dispatch.IMPLEMENTATIONS[(op, variant)]
        chosen = [i for i in shipped if i in pins]
        return chosen[-1] if chosen else shipped[-1]
    if not on_cuda:
        return None
    if not triton_available():
        warn_once(op, f"spectralar_kernels.{op}: triton is not installed; CUDA tensors use the reference")
        return None
    shape = _dispatch.bucket(op, variant, **sizes)
    return _dispatch.measured_choice(op, variant, tensors[0].dtype, shape, _dispatch.device_class(tensors[0]))


def check_float(name: str, t, min_ndim: int = 1, dtypes: tuple = FLOAT_DTYPES) -> None:
    """ValueError unless `t` is a non-empty tensor of one of `dtypes` (fp32/fp16/bf16) with >= `min_ndim` dims."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        raise ValueError(f"{name} must be {', '.join(names[:-1])} or {names[-1]}, got {t.dtype}")
    if t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


AOT_OPS = ("dct", "blockwise", "subimages", "attention", "decode", "vq")


@dataclass(frozen=True)
class AOTSpec:
    """One launch configuration of a shipped Triton kernel, for the ahead-of-time compile check.

    Every `<op>/aot.py` (spectralar_kernels.testing.aot.MODULES) defines `aot_specs() -> list[AOTSpec]`
    covering every block configuration its launchers can choose on a GPU; spectralar_kernels.testing.aot
    compiles each for sm_80 and sm_90 with no GPU present (triton.compile on an ASTSource) the way the JIT
    would for the benchmark shapes, and tests/test_aot_compile.py asserts the design properties on the SASS.

    JIT-like compile: the JIT specialises every launch on its arguments: 16-byte-aligned pointers and
    integers divisible by 16 get `tt.divisibility = 16`, integers equal to 1 become constants. `values`
    holds the integer arguments at a benchmark shape; from them the compile derives the same attributes
    (every pointer argument is taken as 16-byte aligned, as fresh torch allocations are).
    """

    kernel: Any  # the @triton.jit function
    signature: dict[str, str]  # every argument: "*fp32", "*fp16", "*bf16", "*i64", "i32", "fp32", "constexpr"
    constexprs: dict[str, Any] = field(default_factory=dict)  # values of the "constexpr" arguments
    num_warps: int = 4
    num_stages: int = 2
    label: str = ""  # human-readable and unique per op, e.g. "dct2d blockwise fp16 BLOCK=8"
    expect_tensor_cores: bool = False  # the SASS must contain HMMA/HGMMA (fp16/bf16 tl.dot paths)
    op: str = ""  # record op, one of AOT_OPS (default: the op folder's name)
    dtype: str = ""  # input dtype this configuration serves: "fp32", "fp16" or "bf16"
    values: dict[str, int] | None = None  # integer arguments at a benchmark shape (JIT-like compile)
    main: bool = False  # the op's main loop: must load through cp.async/TMA and with 128-bit loads
    wide_stores: bool = False  # must store with 128-bit STG (blockwise DCT)
