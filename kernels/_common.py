"""Shared helpers for every op: backend choice, argument checks, warn-once.

Backend policy (per call, no import-time swapping):
  SPECTRALAR_KERNELS=auto  (default) Triton when every tensor is on CUDA and triton imports, else
                           the PyTorch reference (a CUDA tensor falling back warns once).
  SPECTRALAR_KERNELS=triton  always Triton; on CPU tensors this needs TRITON_INTERPRET=1 (how the
                           tests execute the kernels without a GPU).
  SPECTRALAR_KERNELS=ref   always the reference.
`auto` does not pick the interpreter for CPU tensors even when TRITON_INTERPRET=1 is set: the
interpreter is 100-1000x slower than the reference, and model tests would crawl (docs/design-notes.md).
While torch.compile traces (`torch.compiler.is_compiling()`), every mode takes the reference: it is plain
PyTorch that Inductor fuses and can capture in a CUDA graph, where our kernels would be opaque calls.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "ref")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def choose_backend(op: str, *tensors: torch.Tensor) -> str:
    """Return "triton" or "ref" for this call, following SPECTRALAR_KERNELS (see module docstring)."""
    mode = os.environ.get("SPECTRALAR_KERNELS", "auto").lower()
    if mode not in _BACKENDS:
        raise ValueError(f"SPECTRALAR_KERNELS must be one of {_BACKENDS}, got {mode!r}")
    if mode == "ref" or torch.compiler.is_compiling():
        return "ref"
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("SPECTRALAR_KERNELS=triton but triton is not installed (pip install triton)")
        if not (on_cuda or interpreter_on()):
            raise RuntimeError("SPECTRALAR_KERNELS=triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        return "triton"
    if on_cuda:
        if triton_available():
            return "triton"
        warn_once(op, f"spectralar_kernels.{op}: triton is not installed; CUDA tensors use the slower reference")
    return "ref"


def check_float(name: str, t, min_ndim: int = 1) -> None:
    """ValueError unless `t` is a non-empty fp32/fp16/bf16 tensor with at least `min_ndim` dims."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


@dataclass(frozen=True)
class AOTSpec:
    """One launch configuration of a shipped Triton kernel, for the ahead-of-time compile check.

    Every `kernels/<op>/triton.py` defines `aot_specs() -> list[AOTSpec]` covering every block
    configuration its launchers can choose; tests/test_aot_compile.py compiles each for sm_80 and
    sm_90 with no GPU present (triton.compile on an ASTSource) and bench/kernel_resources.py prints
    registers / spills / shared memory / tensor-core use.
    """

    kernel: Any  # the @triton.jit function
    signature: dict[str, str]  # every argument: "*fp32", "*fp16", "*bf16", "*i64", "i32", "fp32", "constexpr"
    constexprs: dict[str, Any] = field(default_factory=dict)  # values of the "constexpr" arguments
    num_warps: int = 4
    num_stages: int = 2
    label: str = ""  # human-readable, e.g. "dct2d blockwise fp16 BLOCK=8"
    expect_tensor_cores: bool = False  # the SASS must contain HMMA/HGMMA (fp16/bf16 tl.dot paths)
