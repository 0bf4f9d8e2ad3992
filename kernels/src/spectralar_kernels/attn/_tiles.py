"""What the two attention kernels share: head-dim tiling, index helpers, tile loads and the online-softmax step.

`triton.py` (attention-v2, training) and `decode.py` (decode-v2, KV-cache decoding) both import from here and
not from each other.

Tile policy: head dims up to 128 are padded to a power of two >= 16 (`head_dim_block`, one of HEAD_DIM_BLOCKS) and
masked on the head dim only when D is not one (PAD_D). Rows are masked where a tile can pass the end of the
sequence. Under the interpreter (CPU tensors) loads are upcast to fp32 (UPCAST), and bf16 outputs are written
through an fp32 scratch that torch rounds (`interpreter_scratch`), because the interpreter mishandles bf16
products and truncates fp32 -> bf16 stores.

The online softmax works in base 2 (`qk_scale = scale * log2(e)`): per key block, with logits s already
masked to -inf,
    m' = max(m, rowmax(s)),  l' = l 2^(m - m') + rowsum(2^(s - m')),  acc' = acc 2^(m - m') + 2^(s - m') v.
m starts at a finite -1e30, so a block in which a row sees nothing leaves it unchanged (no inf - inf), and a
row that never sees a key ends with l = 0.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import cuda_sm_count, interpreter_on

LOG2E = math.log2(math.e)
HEAD_DIM_BLOCKS = (16, 32, 64, 128)
INTERPRETER_SMS = 16  # any small number: it only decides how often tests exercise split-K decoding


def head_dim_block(d: int) -> int:
    """The head-dim tile: D padded to a power of two >= 16."""
    return max(16, triton.next_power_of_2(d))


def bth(t: torch.Tensor) -> tuple[int, int, int]:
    """Batch, sequence and head strides of a `[B, T, H, D]` tensor (the kernels need a unit D stride)."""
    return t.stride(0), t.stride(1), t.stride(2)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def num_sms(device: torch.device) -> int:
    return cuda_sm_count(device) if device.type == "cuda" else INTERPRETER_SMS


def interpreter_scratch(out: torch.Tensor) -> torch.Tensor:
    """Where a kernel writes `out`: `out` itself, except a bf16 output under the interpreter, which goes through
    an fp32 buffer (NaN-filled: an element the kernel skips still shows) that `copy_back` rounds with torch."""
    if out.dtype == torch.bfloat16 and interpreter_on():
        return torch.full(out.shape, float("nan"), dtype=torch.float32, device=out.device)
    return out


def copy_back(out: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    if written is not out:
        out.copy_(written)
    return out


@triton.jit
def load_tile(base, stride, rows, row_mask, offs_d, D, MASK_ROWS: tl.constexpr, PAD_D: tl.constexpr,
              UPCAST: tl.constexpr):  # fmt: skip
    """A [rows, BLOCK_D] tile at `base + rows * stride + offs_d` (base may be a per-row pointer tensor with
    stride 0), zero where masked: rows where not `row_mask` when MASK_ROWS, dims >= D when PAD_D."""
    ptrs = base + rows[:, None] * stride + offs_d[None, :]
    if MASK_ROWS and PAD_D:
        x = tl.load(ptrs, mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    elif PAD_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)
    else:
        x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One key block: logits s [M, N] (log2 units, -inf where masked), values v [N, BLOCK_D] -> (m, l, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc
