"""Triton KV-cache decoding (flash-decoding) for `attention_with_kvcache`.

Query t of sample b sees cache positions `0 .. cache_seqlens[b] + t`. When batch x heads is too small
to fill the GPU, the cache is cut into `num_splits` contiguous chunks: one program per (batch, head,
split, block of 16 queries) writes a normalised partial output and its logsumexp (log2 units), and
a combine kernel merges the partials with the usual rescaling
    o = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m),   m = max_s lse_s.
With one split the decode kernel writes the output directly. A split holding no visible key for a
row contributes weight 0. Numerics, tiles and head-dim padding follow `triton.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import AOTSpec
from .triton import (
    _NAMES,
    _PTR,
    COMBINE_BLOCK_M,
    DECODE_BLOCK_M,
    HEAD_DIM_BLOCKS,
    LOG2E,
    NUM_STAGES,
    NUM_WARPS,
    _block_d,
    _bth,
    _check_out,
    _dot_config,
    _dot_over_d,
    _last_dim_contiguous,
    _load_rows,
    _spec,
    _tiles,
)


@triton.jit
def _attention_decode_kernel(
    Q, K, V, SEQLENS, OUT, O_PART, LSE_PART,
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
        o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=mask_md)
    else:
        row = (pid_s * tl.num_programs(0) + pid_bh).to(tl.int64) * TQ + offs_m  # [S, B*H, TQ] rows
        tl.store(O_PART + row[:, None] * D + offs_d[None, :], acc, mask=mask_md)
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(LSE_PART + row, lse, mask=offs_m < TQ)


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
        o = tl.load(O_PART + row[:, None] * D + offs_d[None, :], mask=mask_md, other=0.0)
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
        **tiles, UPCAST=upcast, PRECISION=precision, num_stages=NUM_STAGES,
    )  # fmt: skip
    if not direct:
        _attention_decode_combine_kernel[(b * h, triton.cdiv(t_q, COMBINE_BLOCK_M))](
            o_part, lse_part, out, *_bth(out), h, t_q, d, splits, b * h * t_q,
            BLOCK_M=COMBINE_BLOCK_M, BLOCK_D=tiles["BLOCK_D"], num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )  # fmt: skip
    return out


def decode_aot_specs() -> list[AOTSpec]:
    specs = []
    for dtype, ptr in _PTR.items():
        common = {"UPCAST": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
        for block_d in HEAD_DIM_BLOCKS:
            tag = f"{_NAMES[dtype]} D={block_d}"
            decode = {**common, **_tiles("decode", block_d, dtype)}
            parts = {"SEQLENS": "*i32", "O_PART": "*fp32", "LSE_PART": "*fp32"}
            specs.append(_spec(_attention_decode_kernel, decode, parts, dtype != torch.float32, "decode", ptr, tag))
            combine = {"BLOCK_M": COMBINE_BLOCK_M, "BLOCK_D": block_d}
            specs.append(_spec(_attention_decode_combine_kernel, combine, parts, False, "decode combine", ptr, tag))
    return specs
