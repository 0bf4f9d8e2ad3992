"""Helpers both Triton implementations of vq_nearest use (vq/triton_v1.py, vq/triton.py).

The kernels follow the ranking contract of `ref.py` (its module docstring): an approximate score per
(row, code) from a 3xTF32 tensor-core product, a rigorous per-row threshold from the row's smallest score,
then the exact float64 key (fp32 distance bits << 32 | code index) of every code under the threshold:

  score loop    each program keeps, per row and per lane (code index mod BLOCK_K), the smallest score v1,
                its tile, and the second smallest v2 (`_lane_update`): everything under the threshold is
                then either a lane's v1 or shows up as a v2 under it.
  `_best_keys`  ranks the RERANK lanes with the smallest v1 exactly (`_exact_key`); a row is certified when
                every other lane's v1 and every v2 clear the threshold. Rows that are not (non-finite or
                huge values, more near-ties than RERANK, or two near-ties in one lane) get an exact scan of
                the program's slice of codes (`_exact_scan`).
The key's minimum is the nearest code with the lowest index on ties, so slices combine by an int64 min in
any order. Error bound of the scores: GAMMA relative (3xTF32 keeps ~2^-21 per product; 2^-15 leaves room for
the accumulation over up to 64 columns); the thresholds are ref.l2_threshold / ref.cosine_threshold in float64.

The exact key sums one coordinate after another with separate multiply and add, as keys.exact_keys does;
the launchers pass enable_fp_fusion=False so no FMA merges them, and the key is then the reference's bit
for bit (cosine's float64 square root is correctly rounded here, as in the reference's numpy keys; torch's CPU
sqrt is not always, so the reference without numpy can differ where that last bit decides).

Launch plans: `launch_plan` spreads the codebook over enough programs to fill the GPU once (no partial
second wave): programs per SM come from the compiled kernel's registers, shared memory and warps
(`ctas_per_sm`, read from the JIT's compiled kernel by `programs_per_sm`), with a documented per-config
estimate when no compiled kernel is at hand (the interpreter, or a triton without those attributes).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._common import cuda_sm_count
from .keys import EPS, KEY_BAD, KEY_NAN, KEY_NONE
from .ref import FLT_MAX, REGULAR

__all__ = ["GAMMA", "ctas_per_sm", "device_sms", "launch_plan", "programs_per_sm", "EPS"]

GAMMA = 2.0**-15  # relative error bound of a 3xTF32 score (module docstring)
MIN_TILES_PER_SPLIT = 8  # a codebook slice spans at least this many code tiles (amortises its epilogue)

_KEY_NONE = tl.constexpr(KEY_NONE)
_KEY_NAN = tl.constexpr(KEY_NAN)
_KEY_BAD = tl.constexpr(KEY_BAD)
_FLT_MAX = tl.constexpr(FLT_MAX)
_REGULAR = tl.constexpr(REGULAR)


@triton.jit
def _tf32_hi(x):
    """x with its mantissa cut to tf32's 10 bits (x - _tf32_hi(x) is exact in fp32)."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _dot3(z_hi, z_lo, w, acc):
    """acc + z @ w^T in 3xTF32 on tensor cores: small terms first, lo x lo (~2^-22 relative) dropped."""
    w_hi = _tf32_hi(w)
    w_lo = w - w_hi
    acc = tl.dot(z_lo, tl.trans(w_hi), acc, input_precision="tf32")
    acc = tl.dot(z_hi, tl.trans(w_lo), acc, input_precision="tf32")
    return tl.dot(z_hi, tl.trans(w_hi), acc, input_precision="tf32")


@triton.jit
def _lane_update(s, k0, v1, v2, blk):
    """Per (row, lane): smallest score v1 and its tile k0, second smallest v2. NaN scores are ignored."""
    better = s < v1  # strict: an earlier tile keeps an equal score
    v2 = tl.where(better, v1, tl.where(s < v2, s, v2))
    v1 = tl.where(better, s, v1)
    blk = tl.where(better, k0, blk)
    return v1, v2, blk


@triton.jit
def _finite_rows(x):
    """[rows] True where the row of x [rows, cols] holds only finite values (masked-out entries are 0)."""
    bad = (x != x) | (tl.abs(x) == float("inf"))
    return tl.sum(bad.to(tl.int32), axis=1) == 0


@triton.jit
def _exact_key(z_ptr, c_ptr, rows, codes, ok, D, stride_zm, stride_ck, eps, IS_COSINE: tl.constexpr):
    """Ranking keys (int64, shape of rows x codes broadcast) of the contract's float64 distance: keys.exact_keys."""
    z_row = z_ptr + rows.to(tl.int64) * stride_zm
    c_row = c_ptr + codes.to(tl.int64) * stride_ck
    zero = (rows.to(tl.float64) + codes.to(tl.float64)) * 0.0  # float64 zeros of the broadcast shape
    bad = zero != 0.0
    if IS_COSINE:
        zz = zero
        cc = zero
        zc = zero
        for j in range(0, D):
            zv = tl.load(z_row + j, mask=ok, other=0.0).to(tl.float64)
            cv = tl.load(c_row + j, mask=ok, other=0.0).to(tl.float64)
            bad = bad | (cv != cv) | (tl.abs(cv) == float("inf"))
            zz = zz + zv * zv
            cc = cc + cv * cv
            zc = zc + zv * cv
        nz = tl.sqrt(zz)
        nc = tl.sqrt(cc)
        acc = zero
        for j in range(0, D):  # 1 - cos as half the squared distance of the unit vectors
            zv = tl.load(z_row + j, mask=ok, other=0.0).to(tl.float64)
            cv = tl.load(c_row + j, mask=ok, other=0.0).to(tl.float64)
            diff = zv / nz - cv / nc
            acc = acc + diff * diff
        dist = acc * 0.5
        tiny = (nz < eps) | (nc < eps)
        clamped = 1.0 - zc / (tl.where(nz < eps, eps, nz) * tl.where(nc < eps, eps, nc))
        dist = tl.where(tiny, tl.where(clamped < 0.0, 0.0, clamped), dist)
    else:
        dist = zero
        for j in range(0, D):
            zv = tl.load(z_row + j, mask=ok, other=0.0).to(tl.float64)
            cv = tl.load(c_row + j, mask=ok, other=0.0).to(tl.float64)
            bad = bad | (cv != cv) | (tl.abs(cv) == float("inf"))
            diff = zv - cv
            dist = dist + diff * diff
    v = dist.to(tl.float32)
    v = tl.where(v == 0.0, 0.0, v)  # -0.0 -> +0.0
    bits = v.to(tl.int32, bitcast=True).to(tl.int64)
    bits = tl.where(v != v, _KEY_NAN, bits)
    bits = tl.where(bad, _KEY_BAD, bits)
    return (bits << 32) | codes.to(tl.int64)


@triton.jit
def _threshold(smin, Z, nz, zu, w_max, gamma, row_ok, IS_COSINE: tl.constexpr):
    """(threshold [rows] fp32 rounded up, regular [rows]): ref.l2_threshold / ref.cosine_threshold in float64.

    l2: Z = ||z - mu||^2; cosine: nz = max(|z|, EPS), zu = z.ubar, w_max = max_k |ubar - u_k| (all float64).
    `regular` is False where the bound does not hold (non-finite or huge values): those rows scan exactly.
    """
    s = smin.to(tl.float64)
    fin = (s == s) & (tl.abs(s) <= _REGULAR)
    # no float64 division (a called subroutine that costs stack): 1 / (1 - 2g) <= 1 + 2g + 8g^2 for g < 1/4,
    # and cosine's t only scales the 2^-22 term, so its fp32 quotient plus 2^-20 bounds it
    if IS_COSINE:
        E = gamma * w_max + 2.0**-50
        t = tl.maximum(1.0 - (zu - s).to(tl.float32) / nz.to(tl.float32), 0.0).to(tl.float64) + 2.0**-20
        thr = s + nz * (2.0 * E + 2.0**-22 * (t + E) + 2.0**-140 + 2.0**-45 * (t + 1.0))
        regular = row_ok & fin & (nz >= 2.0**-60) & (nz <= 2.0**60)
    else:
        g = gamma + 2.0**-24
        E = 8.0 * g * Z * (1.0 + 2.0**-20)
        t = tl.maximum(s + Z, 0.0)
        T = (1.0 + 2.0 * g) * ((1.0 + 2.0**-22) * (t + E) * (1.0 + 2.0 * g + 8.0 * g * g) + 2.0**-140) + E
        thr = T - Z + 2.0**-45 * (T + Z)
        regular = row_ok & fin & (Z <= _REGULAR)
    thr = tl.where(regular, thr, 0.0)
    t32 = thr.to(tl.float32)
    t32 = tl.where(t32.to(tl.float64) < thr, t32 + tl.abs(t32) * 2.0**-22 + 1e-38, t32)  # never round down
    return t32, regular


@triton.jit
def _exact_scan(z_ptr, c_ptr, rows, need, k_lo, k_hi, D, stride_zm, stride_ck, eps,
                IS_COSINE: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """Smallest exact key [rows] over codes [k_lo, k_hi) for the rows in `need` (KEY_NONE elsewhere)."""
    offs_e = tl.arange(0, BLOCK_E)
    acc = tl.full([rows.shape[0], BLOCK_E], _KEY_NONE, tl.int64)
    for e0 in range(k_lo, k_hi, BLOCK_E):
        codes = e0 + offs_e
        ok = need[:, None] & (codes < k_hi)[None, :]
        key = _exact_key(z_ptr, c_ptr, rows[:, None], codes[None, :], ok, D, stride_zm, stride_ck, eps, IS_COSINE)
        acc = tl.minimum(acc, tl.where(ok, key, _KEY_NONE))
    return tl.min(acc, axis=1)


@triton.jit
def _best_keys(z_ptr, c_ptr, rows, row_ok, v1, v2, blk, thr, regular, K, k_lo, k_hi, D, stride_zm, stride_ck,
               eps, IS_COSINE: tl.constexpr, RERANK: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_E: tl.constexpr):  # fmt: skip
    """The exact best key [rows] over the program's codes [k_lo, k_hi) from its lane minima (module docstring)."""
    offs_k = tl.arange(0, BLOCK_K)
    best = tl.full(rows.shape, _KEY_NONE, tl.int64)
    vv = v1
    for _ in tl.static_range(RERANK):
        m_r = tl.min(vv, axis=1)
        lane = tl.min(tl.where(vv == m_r[:, None], offs_k[None, :], BLOCK_K), axis=1)
        sel = offs_k[None, :] == lane[:, None]
        code = tl.sum(tl.where(sel, blk, 0), axis=1) + lane
        take = regular & (m_r <= thr) & (code < K)
        key = _exact_key(z_ptr, c_ptr, rows, code, take, D, stride_zm, stride_ck, eps, IS_COSINE)
        best = tl.minimum(best, tl.where(take, key, _KEY_NONE))
        vv = tl.where(sel, float("inf"), vv)
    certified = regular & (tl.min(vv, axis=1) > thr) & (tl.min(v2, axis=1) > thr)
    need = row_ok & ~certified
    if tl.max(need.to(tl.int32), axis=0) > 0:
        scanned = _exact_scan(z_ptr, c_ptr, rows, need, k_lo, tl.minimum(k_hi, K), D, stride_zm, stride_ck, eps,
                              IS_COSINE, BLOCK_E)  # fmt: skip
        best = tl.where(need, scanned, best)
    return best


@triton.jit
def _store_keys(idx_ptr, dist_ptr, rows, row_ok, key):
    """Index and fp32 distance from ranking keys (keys.decode)."""
    bits = (key >> 32).to(tl.int32)
    dist = tl.where(bits >= _KEY_NAN, float("nan"), bits.to(tl.float32, bitcast=True))
    tl.store(idx_ptr + rows, key & 0xFFFFFFFF, mask=row_ok)
    tl.store(dist_ptr + rows, dist, mask=row_ok)


# --- launch plans -------------------------------------------------------------------------------------------------

# Per-SM limits by compute capability (CUDA occupancy tables): registers, threads, resident CTAs, shared memory
# (bytes usable by CTAs; the runtime reserves 1 KiB per CTA on top of what the kernel declares).
_SM_LIMITS = {
    (8, 0): (65536, 2048, 32, 164 * 1024),
    (8, 6): (65536, 1536, 16, 100 * 1024),
    (8, 7): (65536, 1536, 16, 164 * 1024),
    (8, 9): (65536, 1536, 24, 100 * 1024),
    (9, 0): (65536, 2048, 32, 228 * 1024),
}
_RESERVED_SHARED = 1024
_REG_UNIT = 256  # registers are allocated per warp in units of 256 (per thread: multiples of 8)


def ctas_per_sm(registers: int, shared_bytes: int, num_warps: int, arch: tuple[int, int] = (9, 0)) -> int:
    """Resident CTAs per SM of a kernel using `registers` per thread, `shared_bytes` per CTA and `num_warps`.

    The occupancy calculation of the CUDA programming guide: the smallest of the register, thread, CTA and
    shared-memory limits of the arch (unknown arches use the closest lower one). At least 1.
    """
    regs, threads, ctas, shared = _SM_LIMITS.get(arch) or _SM_LIMITS[max(a for a in _SM_LIMITS if a <= arch)]
    per_warp = -(-registers * 32 // _REG_UNIT) * _REG_UNIT
    by_regs = (regs // per_warp) // num_warps if per_warp else ctas
    by_threads = threads // (32 * num_warps)
    by_shared = shared // (shared_bytes + _RESERVED_SHARED) if shared_bytes else ctas
    return max(1, min(by_regs, by_threads, by_shared, ctas))


def device_sms(device: torch.device) -> int:
    """SMs of a CUDA device; 4 for the interpreter (any small number does)."""
    return cuda_sm_count(device) if device.type == "cuda" else 4


_PLANS: dict[tuple, int] = {}


def programs_per_sm(kernel, args: tuple, meta: dict, device: torch.device, key: tuple, fallback: int) -> int:
    """Resident programs per SM of `kernel` compiled for (args, meta), from the compiled kernel's registers
    (`n_regs`), shared memory (`metadata.shared`) and warps, cached per (device, key).

    Falls back to `fallback` (the configuration's estimate, checked against the ahead-of-time compile) where
    no compiled kernel is available: the interpreter, CPU tensors, or a triton that does not report them.
    """
    if device.type != "cuda":
        return fallback
    cache_key = (device, *key)
    if cache_key not in _PLANS:
        try:
            compiled = kernel.warmup(*args, grid=(1,), **meta)
            compiled._init_handles()  # loads the binary: the driver reports its registers then
            arch = torch.cuda.get_device_capability(device)
            _PLANS[cache_key] = ctas_per_sm(int(compiled.n_regs), int(compiled.metadata.shared),
                                            int(compiled.metadata.num_warps), arch)  # fmt: skip
        except Exception:  # a triton without these attributes: the estimate, once per key
            _PLANS[cache_key] = fallback
    return _PLANS[cache_key]


def launch_plan(M: int, K: int, block_m: int, block_k: int, sms: int, ctas: int, split: int | None = None):
    """(codes per program, codebook splits): enough programs for one full wave of `ctas` per SM on `sms` SMs,
    each spanning at least MIN_TILES_PER_SPLIT code tiles; `split` forces the number of splits."""
    tiles = triton.cdiv(K, block_k)
    if split is None:
        split = max(1, (ctas * sms) // triton.cdiv(M, block_m))  # never past one wave
        split = min(split, triton.cdiv(tiles, MIN_TILES_PER_SPLIT))
    split = max(1, min(split, tiles))
    per_split = triton.cdiv(tiles, split) * block_k
    return per_split, triton.cdiv(tiles * block_k, per_split)


@functools.cache
def block_d(d: int) -> int:
    """Padded code width: room for d columns plus the score's constant column, at least tl.dot's 16."""
    return max(16, triton.next_power_of_2(d + 1))
