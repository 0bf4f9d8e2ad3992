"""Triton attention: flash forward (online softmax), backward, and split-K KV-cache decoding.

Forward, per (batch, head) and block of BLOCK_M queries, streaming key blocks:
    s = q k^T * scale,   m = running max,   l = running sum of exp(s - m),   o = sum exp(s - m) v / l
with key j visible to query t iff `j <= t or j < prefix_len`. Full attention is the same rule with
prefix_len = T, so one kernel serves full, causal and prefix-LM masks (the mask is a runtime value;
key blocks that no query of the block can see are skipped). Exponentials are base 2
(`qk_scale = scale * log2(e)`), and the stored logsumexp `lse2 = m + log2(l)` is in log2 units.

Backward (Reference: FlashAttention-2, Dao 2023, Algorithm 2; our own code): a preprocess kernel
computes delta = rowsum(dO * O); then `_attention_bwd_dkdv_kernel` owns a key block and loops over
queries (dV += P^T dO, dK += dS^T Q * scale), and `_attention_bwd_dq_kernel` owns a query block and
loops over keys (dQ += dS K * scale), with P = exp2(s * log2e - lse2), dS = P * (dO V^T - delta).
Two kernels recompute P twice but need no atomics: gradients are deterministic.

KV-cache decoding lives in `decode.py` and shares this module's helpers and tile policy.

Numerics: fp32 accumulation everywhere. fp32 inputs use `input_precision="ieee"` in tl.dot so results
match a float64 oracle (no TF32). Cost: ieee fp32 dots run on the FMA units, about 8x fewer FLOP/s
than TF32 tensor cores on sm_80/sm_90, and Triton's FMA lowering holds a whole K-row of each operand
in registers, so products over the head dim are read from memory CHUNK_D = 16 columns at a time
(`_dot_over_d`) and the fp32 tiles keep K = 16 (a D = 64 tile would otherwise spill thousands of
bytes). Use bf16 for speed. fp16/bf16 operands stay resident (CHUNK_D = BLOCK_D) and go to tensor
cores; P and dS are rounded to the input dtype before their matmuls, as flash-attn does. On CPU tensors (the
interpreter) every load is upcast to fp32 (UPCAST), because the interpreter mishandles bf16.
Head dims up to 128 are padded to a power of two >= 16 (BLOCK_D) with masks.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import AOTSpec

LOG2E = math.log2(math.e)


@triton.jit
def _dot_over_d(
    a_base, stride_a, rows_a, len_a, b_base, stride_b, rows_b, len_b, D,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """`a[rows_a, :D] @ b[rows_b, :D]^T` -> [BLOCK_A, BLOCK_B] fp32, reading CHUNK_D columns at a time."""
    out = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for d0 in tl.static_range(0, BLOCK_D, CHUNK_D):
        offs_d = d0 + tl.arange(0, CHUNK_D)
        mask_d = offs_d < D
        a = tl.load(a_base + rows_a[:, None] * stride_a + offs_d[None, :],
                    mask=(rows_a[:, None] < len_a) & mask_d[None, :], other=0.0)
        b = tl.load(b_base + rows_b[:, None] * stride_b + offs_d[None, :],
                    mask=(rows_b[:, None] < len_b) & mask_d[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        out += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    return out


@triton.jit
def _load_rows(base, stride, rows, n_rows, offs_d, D, UPCAST: tl.constexpr):
    """A [rows, BLOCK_D] tile, zero outside `rows < n_rows` and `offs_d < D`."""
    x = tl.load(base + rows[:, None] * stride + offs_d[None, :],
                mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, T, D, prefix_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if CHUNK_D == BLOCK_D:
        q = _load_rows(q_base, stride_qt, offs_m, T, offs_d, D, UPCAST)

    # m starts finite so a block in which a row sees nothing leaves it unchanged (no inf - inf).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum(T, tl.maximum((pid_m + 1) * BLOCK_M, prefix_len))
    for start_n in range(0, hi, BLOCK_N):
        n = start_n + offs_n
        if CHUNK_D == BLOCK_D:
            k = _load_rows(k_base, stride_kt, n, T, offs_d, D, UPCAST)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        else:
            s = _dot_over_d(q_base, stride_qt, offs_m, T, k_base, stride_kt, n, T, D,
                            BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
        visible = ((n[None, :] <= offs_m[:, None]) | (n[None, :] < prefix_len)) & (n[None, :] < T)
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, stride_vt, n, T, offs_d, D, UPCAST)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_d[None, :] < D))
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)


@triton.jit
def _attention_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    H, T, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(O + b * stride_ob + h * stride_oh, stride_ot, offs_m, T, offs_d, D, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, stride_dot, offs_m, T, offs_d, D, True)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dkb, stride_dkt, stride_dkh,
    stride_dvb, stride_dvt, stride_dvh,
    H, T, D, prefix_len, scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    row_base = pid_bh.to(tl.int64) * T
    if CHUNK_D == BLOCK_D:
        k = _load_rows(k_base, stride_kt, offs_n, T, offs_d, D, UPCAST)
        v = _load_rows(v_base, stride_vt, offs_n, T, offs_d, D, UPCAST)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Keys inside the prefix are seen by every query; otherwise only queries t >= the block's first key.
    first_key = pid_n * BLOCK_N
    lo = tl.where(first_key < prefix_len, 0, (first_key // BLOCK_M) * BLOCK_M)
    for start_m in range(lo, T, BLOCK_M):
        m = start_m + offs_m
        q = _load_rows(q_base, stride_qt, m, T, offs_d, D, UPCAST)
        do = _load_rows(do_base, stride_dot, m, T, offs_d, D, UPCAST)
        if CHUNK_D == BLOCK_D:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        else:
            s = _dot_over_d(q_base, stride_qt, m, T, k_base, stride_kt, offs_n, T, D,
                            BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
            dp = _dot_over_d(do_base, stride_dot, m, T, v_base, stride_vt, offs_n, T, D,
                             BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
        lse = tl.load(LSE + row_base + m, mask=m < T, other=float("inf"))
        delta = tl.load(DELTA + row_base + m, mask=m < T, other=0.0)
        visible = ((offs_n[None, :] <= m[:, None]) | (offs_n[None, :] < prefix_len)) & (offs_n[None, :] < T)
        p = tl.where(visible, tl.math.exp2(s * qk_scale - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    mask_nd = (offs_n[:, None] < T) & (offs_d[None, :] < D)
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    H, T, D, prefix_len, scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    if CHUNK_D == BLOCK_D:
        q = _load_rows(q_base, stride_qt, offs_m, T, offs_d, D, UPCAST)
        do = _load_rows(do_base, stride_dot, offs_m, T, offs_d, D, UPCAST)
    row_base = pid_bh.to(tl.int64) * T
    lse = tl.load(LSE + row_base + offs_m, mask=offs_m < T, other=float("inf"))
    delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < T, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum(T, tl.maximum((pid_m + 1) * BLOCK_M, prefix_len))
    for start_n in range(0, hi, BLOCK_N):
        n = start_n + offs_n
        k = _load_rows(k_base, stride_kt, n, T, offs_d, D, UPCAST)
        if CHUNK_D == BLOCK_D:
            v = _load_rows(v_base, stride_vt, n, T, offs_d, D, UPCAST)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        else:
            s = _dot_over_d(q_base, stride_qt, offs_m, T, k_base, stride_kt, n, T, D,
                            BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
            dp = _dot_over_d(do_base, stride_dot, offs_m, T, v_base, stride_vt, n, T, D,
                             BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
        visible = ((n[None, :] <= offs_m[:, None]) | (n[None, :] < prefix_len)) & (n[None, :] < T)
        p = tl.where(visible, tl.math.exp2(s * qk_scale - lse[:, None]), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------------------------
# Launchers


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


DECODE_BLOCK_M = 16  # tl.dot needs >= 16 rows; a one-token decode step masks 15 of them
COMBINE_BLOCK_M = 16
PREPROCESS_BLOCK_M = 16
NUM_STAGES = 2
# Warps: 8, except the fp16/bf16 dK/dV kernel (4). Chosen from an ahead-of-time sweep of both values
# on sm_80 and sm_90 with pointer alignment unknown (the worst case; the JIT usually knows 16-byte
# alignment and needs fewer registers): with 4 warps ptxas spilled a few bytes in the fp16/bf16
# forward at D=32, the fp32 forward at D=64 and the fp16/bf16 dQ at D=128; with 8, in the fp16/bf16
# dK/dV at D=32. docs: registers per spec in `python bench/kernel_resources.py`.
NUM_WARPS = 8


# One tile configuration per (kernel, head-dim block, dtype), whatever T: the sequences of this model
# are short (17 to ~320 tokens), so a 64-row tile wasted on T = 17 costs nothing measurable, and each
# extra configuration is one more ahead-of-time compile per architecture. fp32 (FMA dots) keeps every
# dot's K at 16 and reads products over the head dim 16 columns at a time (see the module docstring).
def _tiles(kernel: str, block_d: int, dtype: torch.dtype) -> dict[str, int]:
    """BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D and num_warps for kernel "fwd", "dq", "dkdv" or "decode"."""
    wide = 64 if block_d <= 64 else 32
    if dtype == torch.float32:
        m, n = {"fwd": (64, 16), "dq": (wide, 16), "dkdv": (16, wide), "decode": (DECODE_BLOCK_M, 16)}[kernel]
        return {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": block_d, "CHUNK_D": 16, "num_warps": NUM_WARPS}
    m, n = {"fwd": (64, wide), "dq": (64, wide), "dkdv": (32, 32), "decode": (DECODE_BLOCK_M, wide)}[kernel]
    warps = 4 if kernel == "dkdv" else NUM_WARPS
    return {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": block_d, "CHUNK_D": block_d, "num_warps": warps}


def _dot_config(q: torch.Tensor) -> tuple[bool, str]:
    """(UPCAST, PRECISION): CPU tensors run under the interpreter, which needs fp32 loads."""
    upcast = not q.is_cuda
    return upcast, ("ieee" if upcast or q.dtype == torch.float32 else "tf32")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _bth(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _check_out(name: str, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    assert out.shape == like.shape and out.dtype == like.dtype and out.stride(-1) == 1, name
    return out


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    prefix_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher. q, k, v `[B, T, H, D]` -> (out `[B, T, H, D]`, lse2 `[B, H, T]` fp32, log2 units)."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, t, h, d = q.shape
    out = torch.empty_like(q) if out is None else _check_out("out", out, q)
    lse = torch.empty((b, h, t), device=q.device, dtype=torch.float32)
    tiles = _tiles("fwd", _block_d(d), q.dtype)
    upcast, precision = _dot_config(q)
    grid = (b * h, triton.cdiv(t, tiles["BLOCK_M"]))
    _attention_fwd_kernel[grid](
        q, k, v, out, lse,
        *_bth(q), *_bth(k), *_bth(v), *_bth(out),
        h, t, d, prefix_len if causal else t, scale * LOG2E,
        **tiles, UPCAST=upcast, PRECISION=precision, num_stages=NUM_STAGES,
    )  # fmt: skip
    return out, lse


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    prefix_len: int,
    scale: float,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: (dq, dk, dv), each `[B, T, H, D]` in q's dtype, from dO and the forward's o, lse2."""
    do, q, k, v, o = (_last_dim_contiguous(t) for t in (do, q, k, v, o))
    b, t, h, d = q.shape
    dq = torch.empty_like(q) if dq is None else _check_out("dq", dq, q)
    dk = torch.empty_like(k) if dk is None else _check_out("dk", dk, k)
    dv = torch.empty_like(v) if dv is None else _check_out("dv", dv, v)
    block_d = _block_d(d)
    upcast, precision = _dot_config(q)
    visible_prefix = prefix_len if causal else t
    delta = torch.empty((b, h, t), device=q.device, dtype=torch.float32)
    _attention_bwd_preprocess_kernel[(b * h, triton.cdiv(t, PREPROCESS_BLOCK_M))](
        o, do, delta, *_bth(o), *_bth(do), h, t, d, BLOCK_M=PREPROCESS_BLOCK_M, BLOCK_D=block_d,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    tiles = _tiles("dkdv", block_d, q.dtype)
    _attention_bwd_dkdv_kernel[(b * h, triton.cdiv(t, tiles["BLOCK_N"]))](
        q, k, v, do, lse, delta, dk, dv,
        *_bth(q), *_bth(k), *_bth(v), *_bth(do), *_bth(dk), *_bth(dv),
        h, t, d, visible_prefix, scale, scale * LOG2E,
        **tiles, UPCAST=upcast, PRECISION=precision, num_stages=NUM_STAGES,
    )  # fmt: skip
    tiles = _tiles("dq", block_d, q.dtype)
    _attention_bwd_dq_kernel[(b * h, triton.cdiv(t, tiles["BLOCK_M"]))](
        q, k, v, do, lse, delta, dq,
        *_bth(q), *_bth(k), *_bth(v), *_bth(do), *_bth(dq),
        h, t, d, visible_prefix, scale, scale * LOG2E,
        **tiles, UPCAST=upcast, PRECISION=precision, num_stages=NUM_STAGES,
    )  # fmt: skip
    return dq, dk, dv


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, prefix_len, scale):
        out, lse = attention_fwd(q, k, v, causal, prefix_len, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.prefix_len, ctx.scale = causal, prefix_len, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, out, lse, ctx.causal, ctx.prefix_len, ctx.scale)
        return dq, dk, dv, None, None, None


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, prefix_len: int, scale: float
) -> torch.Tensor:
    """Differentiable Triton attention (arguments already validated by the public function)."""
    return AttentionFunction.apply(q, k, v, causal, prefix_len, scale)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every configuration the launchers here and in decode.py can choose on a GPU.

_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
HEAD_DIM_BLOCKS = (16, 32, 64, 128)


def _signature(kernel, ptr: str, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Every argument's type: upper-case names are tensors (`ptr` unless listed in `pointers`)."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.isupper() and name not in ("H", "T", "D", "TQ", "T_MAX"):
            sig[name] = pointers.get(name, ptr)
        elif name in ("scale", "qk_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def aot_specs() -> list[AOTSpec]:
    specs = []
    for dtype, ptr in _PTR.items():
        common = {"UPCAST": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
        tc = dtype != torch.float32  # fp16/bf16 tl.dot must land on tensor cores
        for block_d in HEAD_DIM_BLOCKS:
            tag = f"{_NAMES[dtype]} D={block_d}"
            fwd, dq, dkdv = ({**common, **_tiles(k, block_d, dtype)} for k in ("fwd", "dq", "dkdv"))
            grads = {"DO": ptr, "LSE": "*fp32", "DELTA": "*fp32", "DQ": ptr, "DK": ptr, "DV": ptr}
            table = [
                (_attention_fwd_kernel, fwd, {"LSE": "*fp32"}, tc, "fwd"),
                (_attention_bwd_preprocess_kernel, {"BLOCK_M": PREPROCESS_BLOCK_M, "BLOCK_D": block_d},
                 {"DELTA": "*fp32"}, False, "bwd preprocess"),
                (_attention_bwd_dkdv_kernel, dkdv, grads, tc, "bwd dkdv"),
                (_attention_bwd_dq_kernel, dq, grads, tc, "bwd dq"),
            ]
            specs += [_spec(*row, ptr, tag) for row in table]
    from .decode import decode_aot_specs  # decode.py imports this module

    return specs + decode_aot_specs()


def _spec(kernel, constexprs: dict, pointers: dict[str, str], expect_tc: bool, what: str, ptr: str, tag: str):
    c = {n: v for n, v in constexprs.items() if n in kernel.arg_names}
    return AOTSpec(kernel, _signature(kernel, ptr, pointers, c), c, constexprs.get("num_warps", NUM_WARPS), NUM_STAGES,
                   label=f"attention {what} {tag} {c.get('BLOCK_M')}x{c.get('BLOCK_N', '-')}",
                   expect_tensor_cores=expect_tc)
