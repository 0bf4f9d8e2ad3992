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

KV-cache decoding (flash-decoding): the cache is cut into `num_splits` contiguous chunks, one
program per (batch, head, split, block of 16 queries) writes a normalised partial output and its
lse2; a combine kernel merges the partials. With one split the decode kernel writes the output
directly. Query t of sample b sees cache positions `0 .. cache_seqlens[b] + t`.

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


@triton.jit
def _attention_decode_kernel(
    Q, K, V, SEQLENS, O, O_PART, LSE_PART,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, TQ, T_MAX, D, chunk, direct, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    seqlen = tl.load(SEQLENS + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if CHUNK_D == BLOCK_D:
        q = _load_rows(q_base, stride_qt, offs_m, TQ, offs_d, D, UPCAST)
    last = seqlen + offs_m  # the last cache position each query sees

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo = pid_s * chunk
    hi = tl.minimum(tl.minimum(lo + chunk, T_MAX), seqlen + tl.minimum((pid_m + 1) * BLOCK_M, TQ))
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + offs_n
        if CHUNK_D == BLOCK_D:
            k = _load_rows(k_base, stride_kt, n, hi, offs_d, D, UPCAST)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        else:
            s = _dot_over_d(q_base, stride_qt, offs_m, TQ, k_base, stride_kt, n, hi, D,
                            BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D, UPCAST, PRECISION)
        visible = (n[None, :] <= last[:, None]) & (n[None, :] < hi)
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, stride_vt, n, hi, offs_d, D, UPCAST)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # A split can hold no visible key for some rows: output 0 with lse2 = -inf (weight 0 when combined).
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    mask_md = (offs_m[:, None] < TQ) & (offs_d[None, :] < D)
    if direct != 0:  # one split: write the output itself
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_md)
    else:
        row = (pid_s * tl.num_programs(0) + pid_bh).to(tl.int64) * TQ + offs_m  # [S, B*H, TQ] rows
        tl.store(O_PART + row[:, None] * D + offs_d[None, :], acc, mask=mask_md)
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(LSE_PART + row, lse, mask=offs_m < TQ)


@triton.jit
def _attention_decode_combine_kernel(
    O_PART, LSE_PART, O,
    stride_ob, stride_ot, stride_oh,
    H, TQ, D, num_splits, rows_per_split,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < TQ
    mask_md = mask_m[:, None] & (offs_d[None, :] < D)
    row = pid_bh.to(tl.int64) * TQ + offs_m
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for _ in range(0, num_splits):
        lse = tl.load(LSE_PART + row, mask=mask_m, other=float("-inf"))
        o = tl.load(O_PART + row[:, None] * D + offs_d[None, :], mask=mask_md, other=0.0)
        m_new = tl.maximum(m_i, lse)
        alpha = tl.math.exp2(m_i - m_new)
        w = tl.math.exp2(lse - m_new)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o
        m_i = m_new
        row += rows_per_split
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_md)


# ----------------------------------------------------------------------------------------------
# Launchers


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


DECODE_BLOCK_M = 16  # tl.dot needs >= 16 rows; a one-token decode step masks 15 of them
COMBINE_BLOCK_M = 16
PREPROCESS_BLOCK_M = 16
# 8 warps: with 4, ptxas spills a few bytes on sm_80 for several tiles when pointer alignment is
# unknown (the ahead-of-time compile; the JIT usually knows 16-byte alignment and needs fewer registers).
NUM_WARPS = 8
NUM_STAGES = 2


# One tile configuration per (kernel, head-dim block, dtype), whatever T: the sequences of this model
# are short (17 to ~320 tokens), so a 64-row tile wasted on T = 17 costs nothing measurable, and each
# extra configuration is one more ahead-of-time compile per architecture. fp32 (FMA dots) keeps every
# dot's K at 16 and reads products over the head dim 16 columns at a time (see the module docstring).
def _tiles(kernel: str, block_d: int, dtype: torch.dtype) -> dict[str, int]:
    """Constexprs BLOCK_M, BLOCK_N, BLOCK_D, CHUNK_D for kernel "fwd", "dq", "dkdv" or "decode"."""
    wide = 64 if block_d <= 64 else 32
    if dtype == torch.float32:
        m, n = {"fwd": (64, 16), "dq": (wide, 16), "dkdv": (16, wide), "decode": (DECODE_BLOCK_M, 16)}[kernel]
        return {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": block_d, "CHUNK_D": 16}
    m, n = {"fwd": (64, wide), "dq": (64, wide), "dkdv": (32, 32), "decode": (DECODE_BLOCK_M, wide)}[kernel]
    return {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": block_d, "CHUNK_D": block_d}


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
        **tiles, UPCAST=upcast, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
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
        **tiles, UPCAST=upcast, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    tiles = _tiles("dq", block_d, q.dtype)
    _attention_bwd_dq_kernel[(b * h, triton.cdiv(t, tiles["BLOCK_M"]))](
        q, k, v, do, lse, delta, dq,
        *_bth(q), *_bth(k), *_bth(v), *_bth(do), *_bth(dq),
        h, t, d, visible_prefix, scale, scale * LOG2E,
        **tiles, UPCAST=upcast, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
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


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 16  # interpreter: any small number; it only decides how often tests exercise the split path


def _decode_splits(programs: int, t_max: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(num_splits, chunk): split the cache until there are ~2 programs per SM; chunk is a multiple of block_n."""
    n_blocks = triton.cdiv(t_max, block_n)
    splits = max(1, min(n_blocks, triton.cdiv(2 * _num_sms(device), programs), 64))
    chunk = triton.cdiv(n_blocks, splits) * block_n
    return triton.cdiv(t_max, chunk), chunk


def attention_with_kvcache_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Decode launcher. q `[B, Tq, H, D]`, caches `[B, T_max, H, D]` (new keys already written),
    int32 cache_seqlens `[B]` -> `[B, Tq, H, D]`. `num_splits` overrides the heuristic (tests)."""
    q, k_cache, v_cache = (_last_dim_contiguous(t) for t in (q, k_cache, v_cache))
    b, t_q, h, d = q.shape
    t_max = k_cache.shape[1]
    out = torch.empty_like(q) if out is None else _check_out("out", out, q)
    tiles = _tiles("decode", _block_d(d), q.dtype)
    block_n = tiles["BLOCK_N"]
    upcast, precision = _dot_config(q)
    m_blocks = triton.cdiv(t_q, DECODE_BLOCK_M)
    splits, chunk = _decode_splits(b * h * m_blocks, t_max, block_n, q.device)
    if num_splits is not None:
        chunk = triton.cdiv(triton.cdiv(t_max, block_n), num_splits) * block_n
        splits = triton.cdiv(t_max, chunk)
    direct = splits == 1
    if direct:
        o_part = lse_part = out  # unused by the kernel
    else:
        o_part = torch.empty((splits, b * h, t_q, d), device=q.device, dtype=torch.float32)
        lse_part = torch.empty((splits, b * h, t_q), device=q.device, dtype=torch.float32)
    _attention_decode_kernel[(b * h, splits, m_blocks)](
        q, k_cache, v_cache, cache_seqlens, out, o_part, lse_part,
        *_bth(q), *_bth(k_cache), *_bth(v_cache), *_bth(out),
        h, t_q, t_max, d, chunk, int(direct), scale * LOG2E,
        **tiles, UPCAST=upcast, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    if not direct:
        _attention_decode_combine_kernel[(b * h, triton.cdiv(t_q, COMBINE_BLOCK_M))](
            o_part, lse_part, out, *_bth(out), h, t_q, d, splits, b * h * t_q,
            BLOCK_M=COMBINE_BLOCK_M, BLOCK_D=tiles["BLOCK_D"], num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every configuration the launchers above can choose on a GPU.

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
            fwd, dq, dkdv, decode = ({**common, **_tiles(k, block_d, dtype)} for k in ("fwd", "dq", "dkdv", "decode"))
            grads = {"DO": ptr, "LSE": "*fp32", "DELTA": "*fp32", "DQ": ptr, "DK": ptr, "DV": ptr}
            table = [
                (_attention_fwd_kernel, fwd, {"LSE": "*fp32"}, tc, "fwd"),
                (_attention_bwd_preprocess_kernel, {"BLOCK_M": PREPROCESS_BLOCK_M, "BLOCK_D": block_d},
                 {"DELTA": "*fp32"}, False, "bwd preprocess"),
                (_attention_bwd_dkdv_kernel, dkdv, grads, tc, "bwd dkdv"),
                (_attention_bwd_dq_kernel, dq, grads, tc, "bwd dq"),
                (_attention_decode_kernel, decode, {"SEQLENS": "*i32", "O_PART": "*fp32", "LSE_PART": "*fp32"}, tc,
                 "decode"),
                (_attention_decode_combine_kernel, {"BLOCK_M": COMBINE_BLOCK_M, "BLOCK_D": block_d},
                 {"O_PART": "*fp32", "LSE_PART": "*fp32"}, False, "decode combine"),
            ]
            for kernel, constexprs, pointers, expect_tc, what in table:
                c = {n: v for n, v in constexprs.items() if n in kernel.arg_names}
                specs.append(AOTSpec(kernel, _signature(kernel, ptr, pointers, c), c, NUM_WARPS, NUM_STAGES,
                                     label=f"attention {what} {tag} {c.get('BLOCK_M')}x{c.get('BLOCK_N', '-')}",
                                     expect_tensor_cores=expect_tc))
    return specs
