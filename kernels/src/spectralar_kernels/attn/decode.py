"""Triton KV-cache decoding for `attention_with_kvcache` ("decode-v2"): append and attention in one launch.

Query t of sample b sits at position `p = s_b + t` (`s`: the launcher's cache_seqlens) and sees cache
positions `0 .. min(p, T_max - 1)` (causal) or `0 .. min(s_b + Tq - 1, T_max - 1)` (not causal), nothing when
that bound is negative (zero output). GQA: query head h reads cache head `h // group`. One program owns
(b, h, split, block of queries):

  append   with new k/v, it stores the new rows of its queries whose position lies in its split and in
           `[0, T_max)` into the caches (no separate indexing launches; out-of-range rows are dropped);
  cache    pipelined loop (`tl.range(num_stages=...)`, cp.async on sm_80+) over the old positions
           `[lo, min(hi, s))`: every query sees them, so only the bounds are masked;
  new      a short loop over `[max(lo, s), hi)`, the new tokens, read from the k/v arguments rather
           than from the cache another program may be writing (race-free), masked per query.

Online softmax in base 2 (`qk_scale = scale * log2(e)`, `_tiles.online_softmax_step`), fp32 accumulation.
fp16/bf16 products run on tensor cores: the query tile is padded to 64 rows (a one-token step wastes 63 of
them; the step is bound by reading the cache, not by arithmetic) so sm_90 can use wgmma, which wants >= 64
rows and 4 warps. fp32 uses 16-row tiles and IEEE products (TF32 would miss the fp32 tolerance).

Flash-decoding split-K only when batch x heads x query blocks cannot fill the GPU: the cache is cut
into `num_splits` chunks, each program writes a normalised partial output and its logsumexp (log2
units), and a combine kernel merges them:
    o = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m),   m = max_s lse_s.
A split that holds no visible key for a row contributes weight 0.
Reference: flash-attn's `flash_attn_with_kvcache` (append fused into attention) and the flash-decoding
write-up (split-K with a log-sum-exp combine).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import (
    LOG2E,
    bth,
    copy_back,
    head_dim_block,
    interpreter_scratch,
    load_tile,
    num_sms,
    online_softmax_step,
)

IMPLS = ("decode-v2",)
NUM_STAGES = 3
COMBINE_BLOCK_M = 16


@triton.jit
def _attention_decode_kernel(
    Q, K, V, K_NEW, V_NEW, SEQLENS, OUT, O_PART, LSE_PART,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_knb, stride_knt, stride_knh,
    stride_vnb, stride_vnt, stride_vnh,
    stride_ob, stride_ot, stride_oh,
    H, TQ, T_MAX, D, chunk, group, causal, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    HAS_NEW: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // group  # the cache head this query head reads (GQA)
    s = tl.load(SEQLENS + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < TQ
    pos = s + offs_m  # position of each query's token
    # The last key each query sees: its own position (causal) or the last new token's, and never past the cache.
    # Negative: it sees nothing and its output is zero.
    last = tl.minimum(tl.where(causal != 0, pos, s + TQ - 1), T_MAX - 1)
    q = load_tile(Q + b * stride_qb + h * stride_qh, stride_qt, offs_m, mask_m, offs_d, D, True, PAD_D, UPCAST)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    kn_base = K_NEW + b * stride_knb + hk * stride_knh
    vn_base = V_NEW + b * stride_vnb + hk * stride_vnh

    lo = pid_s * chunk
    if HAS_NEW:  # fused append: this split's new rows, for this block of queries, inside the cache
        mine = mask_m & (pos >= lo) & (pos < lo + chunk) & (pos >= 0) & (pos < T_MAX)
        kn = load_tile(kn_base, stride_knt, offs_m, mine, offs_d, D, True, PAD_D, False)
        vn = load_tile(vn_base, stride_vnt, offs_m, mine, offs_d, D, True, PAD_D, False)
        if PAD_D:
            mask_w = mine[:, None] & (offs_d[None, :] < D)
        else:
            mask_w = mine[:, None]
        tl.store(k_base + pos[:, None] * stride_kt + offs_d[None, :], kn, mask=mask_w)
        tl.store(v_base + pos[:, None] * stride_vt + offs_d[None, :], vn, mask=mask_w)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    block_end = tl.where(causal != 0, tl.minimum((pid_m + 1) * BLOCK_M, TQ), TQ)  # queries of the block see < s + this
    last_block = tl.minimum(tl.maximum(s + block_end - 1, 0), T_MAX - 1)
    hi = tl.minimum(lo + chunk, last_block + 1)
    # Old positions (only when s > 0): visible to every query (each sees at least up to min(s, T_MAX - 1)).
    end_old = tl.minimum(hi, tl.maximum(s, 0))
    for start_n in tl.range(lo, end_old, BLOCK_N, num_stages=STAGES):
        n = start_n + offs_n
        in_range = n < end_old
        k = load_tile(k_base, stride_kt, n, in_range, offs_d, D, True, PAD_D, UPCAST)
        v = load_tile(v_base, stride_vt, n, in_range, offs_d, D, True, PAD_D, UPCAST)
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        logits = tl.where(in_range[None, :], logits, float("-inf"))
        m_i, l_i, acc = online_softmax_step(logits, v, m_i, l_i, acc, PRECISION)
    # New positions (s .. s + TQ - 1, within this split and what the block sees): masked per query.
    for start_n in tl.range(tl.maximum(lo, s), hi, BLOCK_N, num_stages=1):  # one or two steps: no pipeline
        n = start_n + offs_n
        in_range = n < hi
        if HAS_NEW:  # per row: the new k/v argument for positions s .. s + TQ - 1, the cache otherwise
            is_new = ((n >= s) & (n - s < TQ))[:, None]
            k_rows = tl.where(is_new, kn_base + (n - s)[:, None] * stride_knt, k_base + n[:, None] * stride_kt)
            v_rows = tl.where(is_new, vn_base + (n - s)[:, None] * stride_vnt, v_base + n[:, None] * stride_vt)
        else:
            k_rows = k_base + n[:, None] * stride_kt
            v_rows = v_base + n[:, None] * stride_vt
        k = load_tile(k_rows, 0, n, in_range, offs_d, D, True, PAD_D, UPCAST)
        v = load_tile(v_rows, 0, n, in_range, offs_d, D, True, PAD_D, UPCAST)
        visible = in_range[None, :] & (n[None, :] <= last[:, None])
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        logits = tl.where(visible, logits, float("-inf"))
        m_i, l_i, acc = online_softmax_step(logits, v, m_i, l_i, acc, PRECISION)

    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    if PAD_D:
        mask_md = mask_m[:, None] & (offs_d[None, :] < D)
    else:
        mask_md = mask_m[:, None]
    if SPLIT:
        row = (pid_s * tl.num_programs(0) + pid_bh).to(tl.int64) * TQ + offs_m  # [S, B*H, TQ] rows
        tl.store(O_PART + row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=mask_md)
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(LSE_PART + row, lse, mask=mask_m)
    else:
        o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=mask_md)


@triton.jit
def _attention_decode_combine_kernel(
    O_PART, LSE_PART, OUT,
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
        o = tl.load(O_PART + row[:, None] * BLOCK_D + offs_d[None, :], mask=mask_md, other=0.0)
        m_new = tl.maximum(m_i, lse)
        alpha = tl.math.exp2(m_i - m_new)
        w = tl.math.exp2(lse - m_new)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o
        m_i = m_new
        row += rows_per_split
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=mask_md)


def _decode_tiles(block_d: int, dtype: torch.dtype) -> dict[str, int]:
    """BLOCK_M, BLOCK_N, num_warps: 64-row tensor-core tiles for fp16/bf16, 16-row FMA tiles for fp32."""
    if dtype == torch.float32:  # FMA products keep both operands in registers: 8 warps for D = 128
        return {"BLOCK_M": 16, "BLOCK_N": 32 if block_d <= 64 else 16, "num_warps": 4 if block_d <= 64 else 8}
    return {"BLOCK_M": 64, "BLOCK_N": 64 if block_d > 16 else 32, "num_warps": 4}


def _decode_splits(programs: int, t_max: int, block_n: int, sms: int) -> tuple[int, int]:
    """(num_splits, chunk). One split once the programs fill the SMs; below, split the cache until there
    are ~2 programs per SM. chunk is a multiple of block_n."""
    n_blocks = triton.cdiv(t_max, block_n)
    splits = 1 if programs >= sms else max(1, min(n_blocks, triton.cdiv(2 * sms, programs), 64))
    chunk = triton.cdiv(n_blocks, splits) * block_n
    return triton.cdiv(t_max, chunk), chunk


def attention_with_kvcache_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    scale: float,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    impl: str = IMPLS[-1],
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Decode launcher (arguments validated by the public function). q `[B, Tq, H, D]`, caches
    `[B, T_max, H_kv, D]` (H % H_kv == 0, last dim contiguous, written in place with k/v `[B, Tq, H_kv, D]` when
    given), int cache_seqlens `[B]` (any strides): the position s of each sample's first query. Query t sees
    positions `0 .. min(s + t, T_max - 1)` (causal) or `0 .. min(s + Tq - 1, T_max - 1)`; none when negative.
    -> `[B, Tq, H, D]`. `num_splits` overrides the heuristic (tests)."""
    assert impl in IMPLS, impl
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "the caches are written in place"
    q = q if q.stride(-1) == 1 else q.contiguous()
    has_new = k is not None
    if has_new:
        k = k if k.stride(-1) == 1 else k.contiguous()
        v = v if v.stride(-1) == 1 else v.contiguous()
    else:
        k = v = k_cache  # unused by the kernel
    seqlens = cache_seqlens.to(torch.int32).contiguous()  # the kernel reads SEQLENS + b: a strided view would lie
    b, t_q, h, d = q.shape
    t_max, h_kv = k_cache.shape[1:3]
    out = torch.empty((b, t_q, h, d), device=q.device, dtype=q.dtype) if out is None else out
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(-1) == 1
    block_d = head_dim_block(d)
    tiles = _decode_tiles(block_d, q.dtype)
    m_blocks = triton.cdiv(t_q, tiles["BLOCK_M"])
    splits, chunk = _decode_splits(b * h * m_blocks, t_max, tiles["BLOCK_N"], num_sms(q.device))
    if num_splits is not None:
        chunk = triton.cdiv(triton.cdiv(t_max, tiles["BLOCK_N"]), num_splits) * tiles["BLOCK_N"]
        splits = triton.cdiv(t_max, chunk)
    split = splits > 1
    if split:
        o_part = torch.empty((splits, b * h, t_q, block_d), device=q.device, dtype=torch.float32)
        lse_part = torch.empty((splits, b * h, t_q), device=q.device, dtype=torch.float32)
    else:
        o_part = lse_part = out  # unused by the kernel
    upcast = not q.is_cuda  # the interpreter computes bf16 products wrongly: fp32 loads
    precision = "ieee" if upcast or q.dtype == torch.float32 else "tf32"
    o = interpreter_scratch(out)
    _attention_decode_kernel[(b * h, splits, m_blocks)](
        q, k_cache, v_cache, k, v, seqlens, o, o_part, lse_part,
        *bth(q), *bth(k_cache), *bth(v_cache), *bth(k), *bth(v), *bth(o),
        h, t_q, t_max, d, chunk, h // h_kv, int(causal), scale * LOG2E,
        BLOCK_M=tiles["BLOCK_M"], BLOCK_N=tiles["BLOCK_N"], BLOCK_D=block_d, PAD_D=d != block_d,
        HAS_NEW=has_new, SPLIT=split, STAGES=NUM_STAGES, UPCAST=upcast, PRECISION=precision,
        num_warps=tiles["num_warps"], num_stages=NUM_STAGES,
    )  # fmt: skip
    if split:
        _attention_decode_combine_kernel[(b * h, triton.cdiv(t_q, COMBINE_BLOCK_M))](
            o_part, lse_part, o, *bth(o), h, t_q, d, splits, b * h * t_q,
            BLOCK_M=COMBINE_BLOCK_M, BLOCK_D=block_d, num_warps=4, num_stages=1,
        )  # fmt: skip
    return copy_back(out, o)
