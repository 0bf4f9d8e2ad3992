"""Triton attention ("attention-v2"): flash forward (online softmax) and one fused backward kernel.

Key j is visible to query t iff `not causal or j <= t or j < prefix_len`. The launchers pass full
attention as prefix_len = T, so one rule (`j <= t or j < prefix_len`, keys < T) serves every mask.

Forward, per (query block of BLOCK_M rows, batch x head), streaming key blocks of BLOCK_N:
    s = q k^T * scale * log2(e),  m = running max,  l = running sum of 2^(s - m),  o = sum 2^(s - m) v / l
and lse2 = m + log2(l) (log2 units) is kept for the backward. The grid is (query blocks, H, B), query
block fastest, so the programs of one head run together and share its K/V in L2. Key blocks are visited
in two passes: the keys every row of the block sees (j <= first row, or j < prefix_len) in a
loop with no mask at all, then the few diagonal / prefix-boundary / sequence-end blocks with the mask;
blocks no row sees are never loaded.

Backward (Reference: FlashAttention-2, Dao 2023, Algorithm 2, and the fused backward of Triton's
fused-attention tutorial; our own code), ONE kernel, grid (row blocks, H, B). Program i owns BLOCK_M rows
twice:
  1. keys [i*BLOCK_M, (i+1)*BLOCK_M): K, V stay resident while it steps through the query blocks that see
     them, BLOCK_N rows at a time (transposed products, so the big block is the MMA's M):
        p^T = 2^(k q^T * c - lse2),  dV += p^T dO,  dS^T = p^T * (v dO^T - delta),  dK += dS^T q;
  2. queries [i*BLOCK_M, (i+1)*BLOCK_M): steps through the keys they see, dQ += dS k.
The scale is applied once to dK and dQ at the end. Each gradient element is written by exactly one program
with no atomics, so the backward is deterministic. With causal masks the work is balanced: key block i
meets T - i*BLOCK_M queries while query block i meets (i+1)*BLOCK_M keys. Masks are again applied only on
the diagonal / prefix-boundary steps. Scaling K by scale*log2(e) before the products (as the tutorial
does) would round K*scale to bf16; here the scale multiplies the fp32 logits instead, fused with the lse2
subtraction into one FMA per element, which costs the same.
Why one kernel, with delta = rowsum(dO * O) computed inside from O and dO tiles, rather than the
tutorial's preprocess launch that writes delta first: the preprocess is a launch plus a full pass over O
and dO in HBM; in exchange, phase 1 loads an O tile per step, from L2 (a head's programs run together),
and at the generator's T <= 128 (one program per head) it reads O no more often than the preprocess would.
The ahead-of-time compile of the two forms gave nearly the same registers (bf16 D = 64, 128x32 tiles:
172 inside vs 166 precomputed on sm_90; 64x32: 163 vs 159), so the split buys no occupancy either.

Pipelining: every loop is a `tl.range` software pipeline of 3 stages (num_stages = 3 in every config): the
cp.async loads of step i + 1 are in flight while step i computes, and the SASS waits at the top of a step
with `DEPBAR.LE SB0, N`, N = the copy groups of one step, never 0. With 2 stages Triton issues the next
step's loads at the end of the body and drains them all at the top of the next (`DEPBAR.LE SB0, 0x0`), so
no load overlaps any compute: the previous backward tables (all 2-stage) did exactly that. The third stage
costs shared memory, not registers.

Occupancy (sm_90: 64K registers, 228 KB shared memory per SM, 1 KB of it reserved per CTA): every config
allows at least MIN_CTAS_PER_SM = 2 CTAs per SM (registers x 32 x warps <= 32K, shared memory <= 113 KB), so
one CTA's barriers and waits are covered by another's work. The exceptions (ONE_CTA_PER_SM) are 128-row
backward tiles with 8 warps: their two warpgroups are as many warps per SM as two 4-warp CTAs, they halve
the re-reads of K/V (phase 2) and Q/dO/O (phase 1) from L2 at long T, and they are never the default, so
the autotuner keeps them only where they measure faster. Head dim 128: the forward's 128x64 tile needed
132 KB and 171 registers (1 CTA per SM); its tiles are now 128x32 with 8 warps (128 registers, 81 KB) or
64-row ones with 4 warps (127-167 registers), 2-3 CTAs per SM. The backward at D = 128 keeps dK and dV of
its key block in fp32 registers, 2 x 64 x 128 values per warpgroup = 128 registers per thread before any
operand, so no 8-warp tile can reach 2 CTAs per SM (that needs <= 128 registers; they compiled to 215-255)
and no 4-warp tile 3 (<= 168): it runs 64x16 tiles with 4 warps, 2 CTAs per SM (248-252 registers on
sm_90, 255 and no spills on sm_80), the one tile of the earlier three with that occupancy (64x32 with 4
warps spilled).
sm_80 (164 KB per SM) runs the same lists with what fits there, 1-6 CTAs per SM, and no spills.

Numerics: fp32 accumulation everywhere; P and dS are rounded to the input dtype before their products
(as flash-attn does). fp16/bf16 products run on tensor cores (wgmma on sm_90, mma on sm_80).
fp32 inputs use 3xTF32 (`input_precision="tf32x3"`: each operand split into TF32 hi + lo parts, three
tensor-core products). A CPU emulation of it (TF32-rounded hi/lo parts, fp32 products; T = 17..320,
D = 16..128) erred against a float64 oracle as much as IEEE fp32 does, at most 0.16x the fp32 test
tolerance, where plain TF32 was 25-270x over it; a GPU run has not measured it yet. 3xTF32 needs about
twice the operand registers, so fp32 tiles are smaller (BLOCK_N 16 or 32), and at head dims above 64 the
fused backward spilled in every tile tried (down to 16x16 with 4 warps): there, the documented fallback,
the backward recomputes the gradients through the reference (`_reference_bwd`, SDPA); the fp32 forward at
those head dims still runs here (32x16 tiles).
On CPU tensors (the Triton interpreter) every load is upcast to fp32 (UPCAST) and products are IEEE fp32,
because the interpreter mishandles bf16 and has no TF32; it also truncates fp32 -> bf16 stores, so bf16
outputs go through an fp32 buffer there.
Head dims up to 128 are padded to a power of two >= 16 (BLOCK_D) with masks on the head dim only when
D != BLOCK_D.

Tiles: on a GPU both kernels are autotuned over short lists chosen per dtype and head-dim block
(`_FWD_CONFIGS`, `_BWD_CONFIGS`: two or three entries, since each autotune key tunes every entry). The key
is (T, D, prefix_len) plus the tensor dtype (Triton's own): the launchers pass prefix_len in one form per
mask (`_visible_prefix`: T full, 0 causal, P prefix-LM), so the encoder (prefix-LM), the decoder (full) and
the generator (causal) each get their own winner even at one T and D; the mask decides how many key blocks
a program visits and how many of them are masked. Sequences of at most 64 rows use 64-row blocks only.
Under the interpreter, which cannot autotune, the first config of the same pruned list runs: one config.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._common import interpreter_on
from ._tiles import (
    LOG2E,
    bth,
    copy_back,
    head_dim_block,
    interpreter_scratch,
    last_dim_contiguous,
    load_tile,
    online_softmax_step,
)

IMPL = "attention-v2"


@triton.jit
def _store_tile(base, stride, rows, n_rows, offs_d, D, x, PAD_D: tl.constexpr):
    ptrs = base + rows[:, None] * stride + offs_d[None, :]
    if PAD_D:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D))
    else:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=rows[:, None] < n_rows)


@triton.jit
def _visible_keys(first_row, last_row, T, prefix_len, BLOCK_N: tl.constexpr):
    """For query rows [first_row, last_row): (end of the key blocks every row sees, end of the keys any row sees).

    The first bound is rounded down to a whole key block, so the unmasked loop below it needs no mask.
    """
    every = tl.minimum(tl.maximum(first_row + 1, prefix_len), T)
    anyone = tl.minimum(tl.maximum(last_row, prefix_len), T)
    return (every // BLOCK_N) * BLOCK_N, anyone


@triton.jit
def _attention_fwd_steps(
    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, lo, hi, offs_m, T, D, prefix_len, qk_scale,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax update over key blocks [lo, hi); MASKED applies the visibility rule and keys < T."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        n = start_n + offs_n
        k = load_tile(k_base, stride_kt, n, n < T, offs_d, D, MASKED, PAD_D, UPCAST)
        v = load_tile(v_base, stride_vt, n, n < T, offs_d, D, MASKED, PAD_D, UPCAST)
        # Scale before masking: a negative or zero softmax_scale must not turn -inf into +inf or NaN.
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            visible = ((n[None, :] <= offs_m[:, None]) | (n[None, :] < prefix_len)) & (n[None, :] < T)
            s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, T, D, prefix_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # Grid (query blocks, H, B): the query block varies fastest, and no index needs a division.
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    first = pid_m * BLOCK_M
    offs_m = first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    q = load_tile(Q + b * stride_qb + h * stride_qh, stride_qt, offs_m, offs_m < T, offs_d, D, True, PAD_D, UPCAST)

    # m starts finite so a block in which a row sees nothing leaves it unchanged (no inf - inf).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    every, anyone = _visible_keys(first, first + BLOCK_M, T, prefix_len, BLOCK_N)
    acc, l_i, m_i = _attention_fwd_steps(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, 0, every, offs_m,
                                         T, D, prefix_len, qk_scale, False, BLOCK_N, BLOCK_D, PAD_D, UPCAST, PRECISION)
    acc, l_i, m_i = _attention_fwd_steps(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, every, anyone,
                                         offs_m, T, D, prefix_len, qk_scale, True, BLOCK_N, BLOCK_D, PAD_D, UPCAST,
                                         PRECISION)  # fmt: skip

    acc = acc / l_i[:, None]
    _store_tile(O + b * stride_ob + h * stride_oh, stride_ot, offs_m, T, offs_d, D, acc, PAD_D)
    tl.store(LSE + (b * H + h) * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)


@triton.jit
def _attention_bwd_dkdv_steps(
    dk, dv, k, v, q_base, o_base, do_base, lse_base, stride_qt, stride_ot, stride_dot, lo, hi, offs_n,
    T, D, prefix_len, qk_scale,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dK, dV of the resident key block from query rows [lo, hi), in [keys, queries] (transposed) tiles.

    Query rows >= T load as zeros with lse2 = +inf, so their p is 0; key rows >= T are never stored.
    """
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in tl.range(lo, hi, BLOCK_N):
        start_m = tl.multiple_of(start_m, BLOCK_N)
        m = start_m + tl.arange(0, BLOCK_N)
        q = load_tile(q_base, stride_qt, m, m < T, offs_d, D, True, PAD_D, UPCAST)
        do = load_tile(do_base, stride_dot, m, m < T, offs_d, D, True, PAD_D, UPCAST)
        o = load_tile(o_base, stride_ot, m, m < T, offs_d, D, True, PAD_D, UPCAST)
        lse = tl.load(lse_base + m, mask=m < T, other=float("inf"))
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            visible = (offs_n[:, None] <= m[None, :]) | (offs_n[:, None] < prefix_len)
            p_t = tl.where(visible, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attention_bwd_dq_steps(
    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, lo, hi, offs_m, T, D, prefix_len, qk_scale,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ of the resident query block from key blocks [lo, hi)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        n = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(k_base, stride_kt, n, n < T, offs_d, D, MASKED, PAD_D, UPCAST)
        v = load_tile(v_base, stride_vt, n, n < T, offs_d, D, MASKED, PAD_D, UPCAST)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            visible = ((n[None, :] <= offs_m[:, None]) | (n[None, :] < prefix_len)) & (n[None, :] < T)
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _attention_bwd_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    stride_dkb, stride_dkt, stride_dkh,
    stride_dvb, stride_dvt, stride_dvh,
    H, T, D, prefix_len, scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    first = pid * BLOCK_M
    offs_own = first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    o_base = O + b * stride_ob + h * stride_oh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + (b * H + h) * T

    # 1. dK, dV of keys [first, first + BLOCK_M). Query rows >= its last key (or all rows, when every key of
    # the block lies in the prefix) see the whole block: no mask. Below that, rows from `lo` (0 when the block
    # reaches into the prefix, else its first key) see part of it: masked.
    k = load_tile(k_base, stride_kt, offs_own, offs_own < T, offs_d, D, True, PAD_D, UPCAST)
    v = load_tile(v_base, stride_vt, offs_own, offs_own < T, offs_d, D, True, PAD_D, UPCAST)
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    all_prefix = tl.minimum(first + BLOCK_M, T) <= prefix_len
    lo = tl.where(all_prefix | (first < prefix_len), 0, first)
    mid = tl.where(all_prefix, 0, first + BLOCK_M)
    dk, dv = _attention_bwd_dkdv_steps(dk, dv, k, v, q_base, o_base, do_base, lse_base, stride_qt, stride_ot,
                                       stride_dot, lo, tl.minimum(mid, T), offs_own, T, D, prefix_len, qk_scale,
                                       True, BLOCK_N, BLOCK_D, PAD_D, UPCAST, PRECISION)  # fmt: skip
    dk, dv = _attention_bwd_dkdv_steps(dk, dv, k, v, q_base, o_base, do_base, lse_base, stride_qt, stride_ot,
                                       stride_dot, mid, T, offs_own, T, D, prefix_len, qk_scale,
                                       False, BLOCK_N, BLOCK_D, PAD_D, UPCAST, PRECISION)  # fmt: skip
    _store_tile(DK + b * stride_dkb + h * stride_dkh, stride_dkt, offs_own, T, offs_d, D, dk * scale, PAD_D)
    _store_tile(DV + b * stride_dvb + h * stride_dvh, stride_dvt, offs_own, T, offs_d, D, dv, PAD_D)

    # 2. dQ of queries [first, first + BLOCK_M), key blocks split as in the forward.
    q = load_tile(q_base, stride_qt, offs_own, offs_own < T, offs_d, D, True, PAD_D, UPCAST)
    do = load_tile(do_base, stride_dot, offs_own, offs_own < T, offs_d, D, True, PAD_D, UPCAST)
    o = load_tile(o_base, stride_ot, offs_own, offs_own < T, offs_d, D, True, PAD_D, UPCAST)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lse = tl.load(lse_base + offs_own, mask=offs_own < T, other=float("inf"))
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    every, anyone = _visible_keys(first, first + BLOCK_M, T, prefix_len, BLOCK_N)
    dq = _attention_bwd_dq_steps(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, 0, every, offs_own,
                                 T, D, prefix_len, qk_scale, False, BLOCK_N, BLOCK_D, PAD_D, UPCAST, PRECISION)
    dq = _attention_bwd_dq_steps(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, every, anyone,
                                 offs_own, T, D, prefix_len, qk_scale, True, BLOCK_N, BLOCK_D, PAD_D, UPCAST,
                                 PRECISION)  # fmt: skip
    _store_tile(DQ + b * stride_dqb + h * stride_dqh, stride_dqt, offs_own, T, offs_d, D, dq * scale, PAD_D)


# ----------------------------------------------------------------------------------------------
# Tile configurations: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, dtype class and head-dim block.
# Every entry compiles without spills on sm_80 and sm_90, the fp16/bf16 ones use wgmma on sm_90 (>= 64-row MMA
# tiles, >= 4 warps), and every loop is a 3-stage cp.async pipeline (see "Pipelining" above). The first entry is
# the default: what the interpreter runs, and what a GPU falls back to before autotuning has a winner. Each entry
# allows MIN_CTAS_PER_SM CTAs per SM on sm_90 except those in ONE_CTA_PER_SM ("Occupancy" above); the AOT check
# (attn/aot.py, tests/test_aot_compile.py) holds every entry to its plan. Register counts (sm_90, bf16) in the
# comments are that check's.

_FWD_CONFIGS = {
    ("lowp", 16): [(128, 64, 8, 3), (64, 64, 4, 3)],  # 100, 88 registers
    ("lowp", 32): [(128, 64, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3)],  # 110, 103, 157
    ("lowp", 64): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4)],  # 112, 126, 112
    ("lowp", 128): [(128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)],  # 128, 127, 167
    ("fp32", 16): [(64, 32, 4, 3), (128, 32, 8, 3)],
    ("fp32", 32): [(64, 32, 4, 3)],
    ("fp32", 64): [(64, 16, 4, 3)],
    ("fp32", 128): [(32, 16, 4, 3)],
}
# An empty list: no tile of the fused backward fits the registers (fp32 at D = 128 spilled in every 3xTF32 tile
# tried, 16x16 with 4 warps included), so that backward recomputes through the reference (`_reference_bwd`).
_BWD_CONFIGS = {
    ("lowp", 16): [(128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)],  # 115, 104, 158 registers
    ("lowp", 32): [(128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)],  # 116, 118, 164
    ("lowp", 64): [(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3)],  # 163, 241, 172
    ("lowp", 128): [(64, 16, 4, 3)],  # 248
    ("fp32", 16): [(64, 16, 4, 3), (64, 32, 4, 3)],
    ("fp32", 32): [(64, 16, 4, 3)],
    ("fp32", 64): [(32, 16, 4, 3)],
    ("fp32", 128): [],
}
MIN_CTAS_PER_SM = 2
# (kernel, dtype class, head-dim block, config) planned at one CTA of 8 warps per SM ("Occupancy" above).
ONE_CTA_PER_SM = {("bwd", "lowp", 64, (128, 32, 8, 3))}
SHORT_T = 64  # sequences this short use 64-row blocks only (a 128-row block would be mostly padding)


def _configs(table: dict, dtype: torch.dtype, block_d: int, t: int) -> list[tuple[int, int, int, int]]:
    """The configs of `table` a launch may choose: per dtype class and head-dim block, 64-row ones for short T."""
    configs = table[("fp32" if dtype == torch.float32 else "lowp", block_d)]
    short = [c for c in configs if c[0] <= 64]
    return short if t <= SHORT_T and short else configs


def _prune(table: dict):
    def prune(configs, nargs, **kwargs):
        allowed = _configs(table, nargs["Q"].dtype, kwargs["BLOCK_D"], nargs["T"])
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]

    return prune


def _triton_configs(table: dict) -> list:
    every = sorted({c for configs in table.values() for c in configs})
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in every]


_KERNELS = {"fwd": (_attention_fwd_kernel, _FWD_CONFIGS), "bwd": (_attention_bwd_kernel, _BWD_CONFIGS)}


@functools.cache
def _tuned(kernel_name: str):
    """The autotuned GPU launcher of a kernel (built on first use: the interpreter never needs it)."""
    kernel, table = _KERNELS[kernel_name]
    prune = {"early_config_prune": _prune(table)}
    return triton.autotune(_triton_configs(table), key=["T", "D", "prefix_len"], prune_configs_by=prune)(kernel)


def _launch(kernel_name: str, shape: torch.Size, args: tuple, dtype, config, **constexprs):
    """Run `kernel_name` over `[B, T, H, D]` = shape: autotuned on a GPU, else with one config (`config`, or the
    first allowed one)."""
    b, t, h, d = shape
    block_d = head_dim_block(d)
    if config is None and not interpreter_on():
        grid = lambda meta: (triton.cdiv(t, meta["BLOCK_M"]), h, b)  # noqa: E731
        _tuned(kernel_name)[grid](*args, BLOCK_D=block_d, **constexprs)
        return
    kernel, table = _KERNELS[kernel_name]
    m, n, warps, stages = config if config is not None else _configs(table, dtype, block_d, t)[0]
    kernel[(triton.cdiv(t, m), h, b)](*args, BLOCK_M=m, BLOCK_N=n, BLOCK_D=block_d, **constexprs,
                                      num_warps=warps, num_stages=stages)  # fmt: skip


def _visible_prefix(causal: bool, prefix_len: int, t: int) -> int:
    """The kernels' prefix_len (keys below it are visible to every query) in one canonical form per mask, since it
    is part of the autotune key: T for full attention (or a prefix covering the sequence), 0 for plain causal (a
    prefix of 1 adds nothing to it), the prefix length for a prefix-LM."""
    if not causal or prefix_len >= t:
        return t
    return 0 if prefix_len <= 1 else prefix_len


def _dot_config(q: torch.Tensor) -> tuple[bool, str]:
    """(UPCAST, PRECISION): CPU tensors run under the interpreter, which needs fp32 loads and IEEE products."""
    upcast = not q.is_cuda
    return upcast, ("ieee" if upcast else "tf32x3" if q.dtype == torch.float32 else "tf32")


def _check_out(name: str, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    assert out.shape == like.shape and out.dtype == like.dtype and out.stride(-1) == 1, name
    return out


def _check_impl(impl: str) -> None:
    if impl != IMPL:
        raise ValueError(f"attention: unknown Triton implementation {impl!r} (this module ships {IMPL!r})")


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    prefix_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    impl: str = IMPL,
    config: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher. q, k, v `[B, T, H, D]` -> (out `[B, T, H, D]`, lse2 `[B, H, T]` fp32, log2 units).

    `config` = (BLOCK_M, BLOCK_N, num_warps, num_stages) pins one tile configuration (tests); by default a GPU
    autotunes and the interpreter runs the first allowed config.
    """
    _check_impl(impl)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    b, t, h, d = q.shape
    out = torch.empty_like(q) if out is None else _check_out("out", out, q)
    lse = torch.empty((b, h, t), device=q.device, dtype=torch.float32)
    block_d = head_dim_block(d)
    upcast, precision = _dot_config(q)
    o = interpreter_scratch(out)
    args = (q, k, v, o, lse, *bth(q), *bth(k), *bth(v), *bth(o), h, t, d, _visible_prefix(causal, prefix_len, t),
            scale * LOG2E)  # fmt: skip
    _launch("fwd", q.shape, args, q.dtype, config, PAD_D=block_d != d, UPCAST=upcast, PRECISION=precision)
    return copy_back(out, o), lse


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
    impl: str = IMPL,
    config: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher (one kernel): (dq, dk, dv), each `[B, T, H, D]` in q's dtype, from dO and the forward's
    o, lse2. `config` as in `attention_fwd`."""
    _check_impl(impl)
    do, q, k, v, o = (last_dim_contiguous(t) for t in (do, q, k, v, o))
    b, t, h, d = q.shape
    dq = torch.empty_like(q) if dq is None else _check_out("dq", dq, q)
    dk = torch.empty_like(k) if dk is None else _check_out("dk", dk, k)
    dv = torch.empty_like(v) if dv is None else _check_out("dv", dv, v)
    block_d = head_dim_block(d)
    if config is None and not _configs(_BWD_CONFIGS, q.dtype, block_d, t):
        return _reference_bwd(do, q, k, v, causal, prefix_len, scale, dq, dk, dv)
    upcast, precision = _dot_config(q)
    gq, gk, gv = (interpreter_scratch(g) for g in (dq, dk, dv))
    args = (q, k, v, o, do, lse, gq, gk, gv,
            *bth(q), *bth(k), *bth(v), *bth(o), *bth(do), *bth(gq), *bth(gk), *bth(gv),
            h, t, d, _visible_prefix(causal, prefix_len, t), scale, scale * LOG2E)  # fmt: skip
    _launch("bwd", q.shape, args, q.dtype, config, PAD_D=block_d != d, UPCAST=upcast, PRECISION=precision)
    return copy_back(dq, gq), copy_back(dk, gk), copy_back(dv, gv)


def _reference_bwd(do, q, k, v, causal, prefix_len, scale, dq, dk, dv):
    """Gradients by recomputing through the reference, written into dq, dk, dv (see `_BWD_CONFIGS`)."""
    from .ref import attention_ref

    with torch.enable_grad():
        x = [t.detach().requires_grad_(True) for t in (q, k, v)]
        grads = torch.autograd.grad(attention_ref(*x, causal, prefix_len, scale), x, do)
    for out, grad in zip((dq, dk, dv), grads):
        out.copy_(grad)
    return dq, dk, dv


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, prefix_len, scale, impl):
        out, lse = attention_fwd(q, k, v, causal, prefix_len, scale, impl=impl)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.prefix_len, ctx.scale, ctx.impl = causal, prefix_len, scale, impl
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, out, lse, ctx.causal, ctx.prefix_len, ctx.scale, impl=ctx.impl)
        return dq, dk, dv, None, None, None, None


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, prefix_len: int, scale: float, impl: str = IMPL
) -> torch.Tensor:
    """Differentiable Triton attention (arguments already validated and the mask canonicalised by the caller)."""
    return AttentionFunction.apply(q, k, v, causal, prefix_len, scale, impl)
