"""Physical floors and the work formulas the benchmarks report against.

A kernel's floor is the time the machine needs for its unavoidable work at the machine's own measured
rates: `floor_s = max(bytes / copy bandwidth, flops / matmul rate of its dtype)` (a roofline), so the
reported "% of floor" is `floor_s / measured_s` whichever bound applies. The rates are measured on the
machine itself (`measure_copy_gbps`, `measure_matmul_tflops`), never taken from a datasheet;
`NOMINAL_H200` (datasheet numbers) is only a fallback when a measurement failed.

Work formulas (flops count a multiply-add as 2; bytes are the op's minimum traffic: each input read
once, each output written once, scratch and recomputation not counted):
  dct2d whole plane  [P, H, W]:  flops = 2 P (H^2 W + H W^2)        (D_H @ x, then @ D_W^T; ~4S flop/pixel)
  dct2d block b                   flops = 4 b * numel                (two 1-D passes of b taps; 32 flop/pixel at b=8)
                                  bytes = 2 * numel * elsize         (read x, write y) for both
  sub-images, window w, [C, S, S] per sample:
                                  flops = 4 C (S^2 w + S w^2)        (coefficients D_w x D_w^T, then D_w^T C_w D_w)
                                  bytes = 2 * numel * elsize
  sub-images, all N prefixes      flops = B C [2 (S^2 w_N + S w_N^2) + sum_n 2 (S^2 w_n + S w_n^2)]
                                  bytes = (1 + N) * numel * elsize   (read x once, write N images)
  vq_nearest [M, d] x [K, d]      flops = 2 M K d                    (the distance GEMM; the argmin is not counted)
                                  bytes = (M + K) d elsize + 12 M    (int64 index + fp32 distance per row)
  attention [B, T, H, D]          flops = 4 B H D * visible(query, key) pairs; backward = 2.5 x forward
                                  (flash-attn's convention: 2 matmuls forward, 5 backward)
                                  bytes = 4 B T H D elsize forward (q, k, v, o); 8 B T H D elsize backward
                                  (read q, k, v, o, dO; write dq, dk, dv)
  attention_with_kvcache          flops = 4 H D * sum over queries of visible keys
                                  bytes = elsize H D (2 * visible cache rows + 4 B Tq)  (read K, V; q, o, new k, v)
  generator decode step           flops = 2 P rows + 4 rows L W (p + 1)  (P weights, L layers, width W, position p)
                                  bytes = P elsize + 2 rows L (p + 1) W elsize  (weights once, K and V read)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# H200 datasheet numbers (dense): only used when a measurement is missing.
NOMINAL_H200 = {"copy_gbps": 4800.0, "tflops": {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0, "fp16": 990.0}}

DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@dataclass
class Cost:
    flops: float
    bytes: float


@dataclass
class Floors:
    """Measured machine rates: copy bandwidth (GB/s, read + write counted) and GEMM TFLOP/s per dtype.

    `tflops["fp32"]` is measured with TF32 off: the rate of the fp32 "ieee" dots our kernels use.
    """

    copy_gbps: float
    tflops: dict[str, float] = field(default_factory=dict)
    measured: bool = True

    @classmethod
    def nominal(cls) -> Floors:
        return cls(NOMINAL_H200["copy_gbps"], dict(NOMINAL_H200["tflops"]), measured=False)

    def floor_s(self, cost: Cost, dtype: torch.dtype) -> tuple[float, str]:
        """(time at the roofline, "memory" or "compute": which term bounds it)."""
        mem = cost.bytes / (self.copy_gbps * 1e9)
        rate = self.tflops.get(DTYPE_NAME[dtype])
        comp = cost.flops / (rate * 1e12) if rate else 0.0
        return (mem, "memory") if mem >= comp else (comp, "compute")


def achieved(cost: Cost, seconds: float, floors: Floors | None, dtype: torch.dtype) -> dict:
    """GB/s, TFLOP/s, the bounding resource and the fraction of the floor reached in `seconds`."""
    out = {"gbps": cost.bytes / seconds / 1e9, "tflops": cost.flops / seconds / 1e12, "bound": "-", "frac": None}
    if floors is not None:
        floor, bound = floors.floor_s(cost, dtype)
        out["bound"], out["frac"] = bound, floor / seconds
    return out


# ---- measured rates ------------------------------------------------------------------------------
# `timer(fn)` returns the device seconds of one call of fn (the GPU report passes its kernel-time measurement,
# bench/report/timing.py, which on a CPU dry run times on the host clock).


def measure_copy_gbps(nbytes: int, device: str, timer) -> float:
    """Device-to-device copy of `nbytes` (read + write counted: 2 * nbytes per copy), GB/s."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timer(lambda: dst.copy_(src)) / 1e9


def measure_matmul_tflops(n: int, dtype: torch.dtype, device: str, timer, tf32: bool = False) -> float:
    """Square n x n x n GEMM rate in TFLOP/s (2 n^3 flops); `tf32` allows TF32 for fp32 inputs."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = timer(lambda: a @ b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n**3 / seconds / 1e12


# ---- work formulas --------------------------------------------------------------------------------


def dct2d_cost(shape, block: int | None, elsize: int) -> Cost:
    numel = 1
    for s in shape:
        numel *= s
    h, w = shape[-2], shape[-1]
    if block is None:
        planes = numel // (h * w)
        flops = 2 * planes * (h * h * w + h * w * w)
    else:
        flops = 4 * block * numel
    return Cost(flops, 2 * numel * elsize)


def subimages_cost(shape, windows, all_prefixes: bool, elsize: int) -> Cost:
    """`windows`: the N prefix windows (all_prefixes) or the B per-sample windows (a list of ints)."""
    b, c, s, _ = shape
    numel = b * c * s * s

    def pair(w):  # one plane: contract S x S against w rows, then w x w against w rows (both axes)
        return 2 * (s * s * w + s * w * w)

    if all_prefixes:
        flops = b * c * (pair(windows[-1]) + sum(pair(w) for w in windows))
        return Cost(flops, (1 + len(windows)) * numel * elsize)
    flops = c * sum(2 * pair(w) for w in windows)
    return Cost(flops, 2 * numel * elsize)


def vq_cost(m: int, k: int, d: int, elsize: int) -> Cost:
    return Cost(2 * m * k * d, (m + k) * d * elsize + 12 * m)


def visible_pairs(t: int, causal: bool, prefix_len: int) -> int:
    """(query, key) pairs the mask lets through: key j visible to query i iff j <= i or j < prefix_len."""
    if not causal or prefix_len >= t:
        return t * t
    return sum(max(i + 1, prefix_len) for i in range(t))


def attention_cost(b: int, t: int, h: int, d: int, causal: bool, prefix_len: int, elsize: int,
                   backward: bool = False) -> Cost:  # fmt: skip
    """Forward, or forward + backward when `backward` (3.5 x the forward flops)."""
    fwd = 4 * b * h * d * visible_pairs(t, causal, prefix_len)
    if not backward:
        return Cost(fwd, 4 * b * t * h * d * elsize)
    return Cost(3.5 * fwd, 12 * b * t * h * d * elsize)


def decode_cost(seqlens, t_q: int, h: int, d: int, elsize: int) -> Cost:
    """One attention_with_kvcache call: query t of sample b sees seqlens[b] + t + 1 cache rows."""
    keys = sum(s + t + 1 for s in seqlens for t in range(t_q))
    rows = sum(s + t_q for s in seqlens)
    b = len(seqlens)
    return Cost(4 * h * d * keys, elsize * h * d * (2 * rows + 4 * b * t_q))


def generator_step_cost(params_read: int, rows: int, depth: int, width: int, position: int, elsize: int) -> Cost:
    """One KV-cached decode step of a GPT over `rows` sequences at cache position `position`.

    flops = 2 params_read rows (every weight once per row) + 4 rows depth width (position + 1) (q.k and p.v
    against the cached keys); bytes = params_read elsize (the weights, read once per step) + 2 rows depth
    (position + 1) width elsize (K and V read). `params_read` leaves out the embedding tables, of which a step
    reads one row per sequence.
    """
    keys = position + 1
    flops = 2 * params_read * rows + 4 * rows * depth * width * keys
    return Cost(flops, params_read * elsize + 2 * rows * depth * keys * width * elsize)
