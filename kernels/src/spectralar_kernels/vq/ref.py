"""Nearest-codebook lookup in plain PyTorch: the CPU path, the test oracle and the benchmark baseline.

The ranking contract, the same on every path (this reference and the Triton kernels), on any BLAS and for
any chunking or tiling. For a row z and code c_k, the distance is evaluated in float64 from the raw values,
one coordinate after another (j = 0 .. d-1, no fused multiply-add), and rounded once to fp32:
    l2:      dist_k = fp32( sum_j (z_j - c_kj)^2 )
    cosine:  dist_k = fp32( |z / |z| - c_k / |c_k||^2 / 2 )  (= 1 - cos, without cancellation near cos = 1)
             or, when |z| or |c_k| is below EPS, fp32( max(0, 1 - z.c_k / (max(|z|, EPS) max(|c_k|, EPS))) )
The nearest code is the lowest index among the codes at the smallest dist_k; top-k lists codes by
ascending (dist_k, index). So exact duplicates resolve to the lowest copy, and the answer is the true
nearest code up to the fp32 rounding of its distance, whatever the data's offset, clusters or outliers.
Non-finite values: a code holding inf or NaN ranks after every finite code (it is chosen only when all
codes are non-finite); a row holding NaN is at distance NaN from every finite code, so it gets the
lowest-index finite code with a NaN distance; a row holding inf gets distance inf the same way.

Ranking M x K distances in float64 would be slow, so it runs in three steps:
 1. Approximate scores from one fp32 GEMM per chunk:
        l2:      s_mk = ||c_k - mu||^2 - 2 (z_m - mu).(c_k - mu)   (mu: the mean of the finite codes)
        cosine:  s_mk = z_m.(ubar - u_k)                          (u_k = c_k / max(|c_k|, EPS), ubar their mean)
    s_mk + Z_m (Z_m = ||z_m - mu||^2) approximates dist_k for l2, 1 - (z_m.ubar - s_mk) / |z_m| for cosine.
 2. A rigorous bound on the GEMM's rounding (`score_gamma`: |error| <= gamma (8 Z + 2 dist) for l2,
    <= gamma max_k |ubar - u_k| for cosine) turns an upper bound on the k-th smallest score into a
    per-row threshold (`l2_threshold`, `cosine_threshold`) that every code whose fp32 distance may tie
    the k-th nearest passes: usually k to 1.2k codes per row. The scores' minima over groups of FIRST codes, then
    of 4 such groups, ... (one vectorised pass each) give the bound and the groups worth expanding, level by
    level down to the codes. At the top level, on CPU up to k = PASSES_TOP_K: `top_groups`, k passes of a
    column minimum that each give a row's next smallest group with its position, so the bound and the k groups
    come without a compaction (`_extra_groups` adds any other group within the threshold); elsewhere
    `kth_smallest`, then every top-level group under the threshold.
 3. Only those codes get their exact distance (`exact_keys`); the ranking key packs the fp32 distance
    bits over the code index in one int64, so the minimum key is the nearest code, lowest index on ties;
    one sort of the keys repacked with their row gives every row's k smallest (`merge_smallest`).
Rows the bound cannot serve (non-finite or huge values, or more than a few groups of candidates, as with
many duplicate codes) are ranked exactly over all codes, chunk by chunk.
On CPU, with numpy installed, the sparse steps (the top level's passes, expanding groups, exact keys, the
sort) run in numpy: its gathers, compactions and sorts cost a fraction of torch's there, and the keys are the
same bits (vq/keys.py: the same float64 operations in the same order). Temporaries of a few hundred KiB and more
come from per-thread buffers reused across calls (`_scratch`): a fresh allocation pays its page faults on every
call. Where a chunk has at most ROW_MAJOR_CODES k codes, a second product gives the scores row-major too, and the
codes' level is expanded from it (a group's lanes in one cache line). The codebook's own terms (vq/codes.py) are
kept per thread between calls for a small codebook, used again while it holds the same bits.

`vq_nearest` sends small problems on CPU (M x K x (d + 2) <= 2^18, M x K <= 2^16) to vq/dense.py instead, which
computes every pair's exact distance at once: the same keys, without this machinery's fixed cost.

Memory: the M x K score matrix is never allocated. Scores live in chunks of at most CHUNK_ELEMS (two copies with
the row-major product), code-side temporaries in chunks of at most CHUNK_ELEMS elements, candidates in batches of
the same size.
Host syncs: a few per chunk (candidate counts; free on CPU; on CUDA this reference syncs).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from .codes import Codes, codes_for
from .keys import (  # noqa: F401 - re-exported: the reference's callers and tests name them here
    EPS,
    EXACT_BATCH,
    KEY_BAD,
    KEY_NONE,
    _rows64,
    _scratch,
    decode,
    exact_keys,
    pair_distances,
    pair_keys_numpy,
    unit_rows64,
)

try:  # optional: on CPU, numpy runs the sparse candidate steps several times faster than torch; same results
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

CHUNK_ELEMS = 1 << 22  # scores alive at once (16 MiB in fp32); also bounds code-side and candidate temporaries
MERGE_PASSES_K = 4  # up to this k, vectorised passes pick a row's k smallest keys; beyond, torch.topk per row
PASSES_TOP_K = 16  # up to this k on CPU, the top level's k smallest by k passes (top_groups)
KTH_PASSES_K = 4  # kth_smallest: passes up to this k on CPU, numpy's partition beyond
ROW_MAJOR_CODES = 128  # up to this many codes per unit of k in a chunk (CPU, top_groups, at least MEMBERS_AT_ONCE
#   candidate groups), the codes' level is read from a second, row-major product of the scores, where a group's
#   lanes are one cache line: top-16 at 1024 codes 5-8% faster, top-4 at 512 codes 2-4%; beyond, the product costs
#   more than the scattered reads it replaces
TINY = 2.0**-126  # kth_smallest's push (the smallest normal fp32: no flush-to-zero setting can turn it into 0 / 0)
FIRST = 8  # codes per group at the first level (8 rather than 16: top-16 5-9% faster, top-4 the same, on CPU)
TOP = 64  # group minima are taken in levels (FIRST codes, then x4) down to at least max(TOP, 2k) groups
TOP_FIRST = 16  # the first level is taken when it leaves at least max(TOP_FIRST, 2k) groups
FLT_MAX = 3.4028234663852886e38
REGULAR = 2.0**100  # |scores| and Z beyond this: no overflow-free bound, rank the row exactly


def score_gamma(device: torch.device, d: int, cosine: bool) -> float:
    """Relative rounding bound of the fp32 GEMM scores under torch's current matmul precision settings.

    A dot of d products in fp32 errs by at most (d + 1) u of the sum of |terms| for any summation order;
    with the shifts and norms computed in fp32 the total stays below (2 d + 8) u (l2) or (d + 4) u
    (cosine). TF32 (CUDA with allow_tf32, or float32_matmul_precision "high") rounds products at
    u = 2^-11 and bf16 ("medium") at 2^-8: the bound grows, more codes become candidates, the result
    stays exact.
    """
    precision = torch.get_float32_matmul_precision()
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    u = 2.0**-24 if precision == "highest" and not tf32 else (2.0**-8 if precision == "medium" else 2.0**-11)
    return ((d + 4) if cosine else (2 * d + 8)) * u * 1.01


def l2_threshold(ub, Z, gamma: float):
    """Score threshold [m] (float64) that every code within fp32 ties of the k-th nearest passes (l2).

    ub: an upper bound of the k-th smallest score of the row; Z = ||z - mu||^2; both float64, torch tensors or
    numpy arrays (the CPU path's: its per-call overhead is a fraction of torch's). With
    t = s + Z and |t - dist| <= g (8 Z + 2 dist) (g = gamma + 2^-24 covers the shifts' rounding), the k-th
    nearest distance is at most (t_ub + E) / (1 - 2g), E = 8 g Z; a code ties it in fp32 only if its
    distance is within a factor (1 + 2^-22) (plus the smallest subnormal), so its t is below
    T = (1 + 2g) [(1 + 2^-22)(t_ub + E) / (1 - 2g) + 2^-140] + E, and the threshold on s is T - Z. That is
    linear in t_ub and Z: A t_ub + B Z + C, with 2^-44 of slack on each term for this float64 arithmetic.
    """
    g = gamma + 2.0**-24
    a = (1 + 2 * g) * (1 + 2.0**-22) / (1 - 2 * g)
    A = a * (1 + 2.0**-44)
    B = (a + 1) * 8 * g * (1 + 2.0**-20) * (1 + 2.0**-44) - 1 + 2.0**-44
    return (ub + Z).clip(min=0.0) * A + Z * B + 2.0**-130


def cosine_threshold(ub, nz, zu, gamma: float, w_max):
    """Score threshold [m] (float64) for cosine: scores are z.(ubar - u), nz = max(|z|, EPS), zu = z.ubar (all
    float64, torch tensors or numpy arrays).

    t = 1 - (zu - s) / nz approximates the distance within E = gamma w_max (+ float64 rounding), so a code
    tying the k-th nearest in fp32 has t below (t_ub + E)(1 + 2^-22) + 2^-140 + E.
    """
    E = gamma * w_max + 2.0**-50
    t = (1.0 - (zu - ub) / nz).clip(min=0.0)
    margin = 2 * E + 2.0**-22 * (t + E) + 2.0**-140 + 2.0**-45 * (t + 1)
    return ub + nz * margin


def round_up_fp32(x):
    """float64 -> fp32 (torch or numpy), never below x (a threshold rounded down would lose candidates): fp32
    rounding moves a value by at most 2^-24 of it, or 2^-150 below the normal range."""
    up = x + abs(x) * 2.0**-22 + 2.0**-126
    return up.float() if isinstance(up, torch.Tensor) else up.astype(_np.float32)


_direct_distance = pair_distances  # the name the GPU report calls


def _members_within(lower, first, f: int, m: int, thr, xp):
    """(pair, lane) [c]: lane j of candidate i qualifies when lower.flat[first[i] + j m] <= thr[i].

    `lower` [G f, m] contiguous (torch, or numpy with xp = numpy), `first` [n] the flat position of each candidate
    group's lane 0 (numpy: overwritten), f a power of two. numpy: one lane at a time over [n] vectors that stay in
    cache (up to MEMBERS_AT_ONCE pairs: one gather, fewer calls); torch: one [n, f] gather.
    """
    n, shift = first.shape[0], f.bit_length() - 1
    if xp is torch or n * f <= MEMBERS_AT_ONCE:
        at = first[:, None] + xp.arange(0, f * m, m, **({"device": first.device} if xp is torch else {}))
        vals = lower.take(at) if xp is torch else lower.take(at, mode="clip")  # "raise" costs a bounds pass
        x = _flatnonzero(vals <= thr[:, None], xp)  # = pair * f + lane
        return x >> shift, x & (f - 1)
    flat = lower.reshape(-1)
    ok = _scratch("lanes", (f, n), torch.bool, torch.device("cpu")).numpy()
    vals = _scratch("values", (n,), torch.float32, torch.device("cpu")).numpy()
    at = first
    for j in range(f):
        _np.less_equal(_np.take(flat, at, out=vals, mode="clip"), thr, out=ok[j])
        _np.add(at, m, out=at)
    x = _np.flatnonzero(ok)  # = lane * n + pair, ascending: the lanes come in order (no division, which costs
    #   numpy more than the gathers)
    lane = _np.repeat(_np.arange(f), _np.diff(_np.searchsorted(x, _np.arange(f + 1) * n)))
    return x - lane * n, lane


def _members_row_major(scores, g, r, f: int, thr):
    """(pair, lane) [c] as `_members_within`, from the scores [m, G f] row-major (numpy): a candidate group's f
    lanes are one contiguous read (f = 8: 32 bytes) instead of f reads a row of scores apart."""
    vals = _np.take(scores.reshape(-1, f), r * (scores.shape[1] // f) + g, axis=0, mode="clip")  # [n, f]
    x = _np.flatnonzero(vals.reshape(-1) <= _np.repeat(thr, f))  # = pair * f + lane (a broadcast compare: slower)
    return x >> (f.bit_length() - 1), x & (f - 1)


def _flatnonzero(mask, xp):
    """int64 [n]: the positions of the True elements of a bool array, flattened in C order, ascending."""
    if xp is torch:
        return mask.reshape(-1).nonzero().squeeze(1)
    return _np.flatnonzero(mask)


def _first_k(rows, keys, k: int, m: int, index_bits: int, xp):
    """[k, m] the k smallest keys of each row (KEY_NONE where a row has fewer), for numpy (xp = numpy) or torch
    arrays: each key repacked as (row, distance bits, index) in one int64, one sort orders every row at once."""
    row_shift = 31 + index_bits  # distance classes (KEY_BAD at most) fit in 31 bits
    packed = (rows << row_shift) | ((keys >> 32) << index_bits) | (keys & 0xFFFFFFFF)
    packed = xp.sort(packed) if xp is _np else packed.sort().values
    # row i's candidates sit at [start[i], start[i + 1]): its answer is the first k of them
    arange = functools.partial(xp.arange, device=rows.device) if xp is torch else xp.arange
    start = xp.searchsorted(packed, arange(m + 1) << row_shift)
    at = start[:-1] + arange(k)[:, None]  # [k, m]
    first = packed.take(xp.minimum(at, arange(1) + max(packed.shape[0] - 1, 0))) if packed.shape[0] else at
    out = (((first >> index_bits) & 0x7FFFFFFF) << 32) | (first & ((1 << index_bits) - 1))
    out[at >= start[1:]] = KEY_NONE
    return out


def merge_smallest(best: torch.Tensor, rows, keys, codes: int = 1 << 32) -> torch.Tensor:
    """The k smallest ranking keys per row [k, m] of `best` [k, m] and the flat candidates (rows, keys), ascending;
    rows and keys int64, torch tensors or (best on CPU) numpy arrays.

    Keys of one row are distinct (the code index is part of the key) apart from KEY_NONE. k = 1: one scatter-min.
    Larger k, when row, distance class and code index (`codes`: an upper bound of the indices) fit in 63 bits
    together: `_first_k`, one sort of the repacked keys (numpy's on CPU). Otherwise, k <= MERGE_PASSES_K: k passes
    of (row minimum by scatter-min, remove it), vectorised over all candidates; larger k: the candidates go into a
    dense [m, k + most per row] matrix beside `best` (KEY_NONE elsewhere), one top-k per row picks the k smallest.
    """
    k, m = best.shape
    index_bits = max(1, (codes - 1).bit_length())
    row_shift = 31 + index_bits
    packs = row_shift + max(1, (m - 1).bit_length()) <= 63
    if k > 1 and packs and best.device.type == "cpu" and _np is not None:  # numpy: several times faster on CPU
        rows, keys = _np.asarray(rows), _np.asarray(keys)
        bn = best.numpy()
        held = bn != KEY_NONE
        if held.any():
            rows = _np.concatenate([rows, _np.broadcast_to(_np.arange(m), (k, m))[held]])
            keys = _np.concatenate([keys, bn[held]])
        return torch.from_numpy(_first_k(rows, keys, k, m, index_bits, _np))
    if not isinstance(rows, torch.Tensor):
        rows, keys = torch.from_numpy(rows), torch.from_numpy(keys)
    if k == 1:  # the row minimum, by one scatter-min into best itself
        return best.scatter_reduce(1, rows.unsqueeze(0), keys.unsqueeze(0), "amin")
    if packs:
        held = best != KEY_NONE
        if held.any():
            rows = torch.cat([rows, torch.arange(m, device=best.device).expand(k, m)[held]])
            keys = torch.cat([keys, best[held]])
        return _first_k(rows, keys, k, m, index_bits, torch)
    if k <= MERGE_PASSES_K:
        allr = torch.cat([torch.arange(m, device=best.device).repeat(k), rows])
        allk = torch.cat([best.reshape(-1), keys])
        out = torch.empty_like(best)
        for i in range(k):
            out[i].fill_(KEY_NONE).scatter_reduce_(0, allr, allk, "amin")
            if i + 1 < k:
                allk.masked_fill_(allk == out[i][allr], KEY_NONE)
        return out
    order = rows.argsort(stable=True)
    rows, keys = rows[order], keys[order]
    counts = torch.bincount(rows, minlength=m)
    dense = torch.full((m, k + int(counts.max())), KEY_NONE, dtype=torch.int64, device=best.device)
    dense[:, :k] = best.T
    dense[rows, k + torch.arange(rows.numel(), device=best.device) - (torch.cumsum(counts, 0) - counts)[rows]] = keys
    return dense.topk(k, dim=1, largest=False).values.T


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """An upper bound of the k-th smallest entry of each column of x [G, m] (G >= k): at least k entries of the
    column are at most it. NaN propagates, and so does -inf or a column of +inf (NaN: the row is ranked exactly).

    Up to k = KTH_PASSES_K, or off CPU or without numpy: k - 1 passes, vectorised over the columns; each adds
    TINY / min(x - column minimum, 1) to every value, which sends the minimum's copies to +inf and moves the others
    up by a negligible amount (arithmetic: on CPU a comparison producing a mask costs several times an add; the
    clamp at 1 keeps every push a normal number, as a subnormal result costs x86 a hundred cycles or more). Values
    only grow, and each pass retires at least one entry whose original value is at most every later minimum: the
    result is the k-th smallest distinct value up to the drift (which only a subnormal gap makes visible, looser).
    Beyond: numpy's partition of the transposed values, the k-th smallest entry exactly (one pass costs about a
    third of it at 64 x 1024 on a 2-core x86).
    """
    low = x.amin(0)
    if k > KTH_PASSES_K and x.device.type == "cpu" and _np is not None:
        xt = x.numpy().T.copy()  # [m, G], C order, always a copy (ascontiguousarray returns [1, G] views as they are)
        xt.partition(k - 1, axis=1)  # numpy orders NaN last: the amin's NaN, added as (low - low), propagates it
        return torch.from_numpy(xt[:, k - 1].copy()) + (low - low)  # low - low: +0, or NaN for NaN and +-inf
    if k == 1:
        return low
    gap, one = torch.empty_like(x), x.new_ones(())
    for p in range(k - 1):
        torch.sub(x, low, out=gap).clamp_(max=1.0)  # >= +0, exactly +0 at the minimum's copies; NaN propagates
        x = x.addcdiv(one, gap, value=TINY) if p == 0 else x.addcdiv_(one, gap, value=TINY)
        low = x.amin(0)
    return low


def _exact_rows(z, codes: Codes, rows, best, chunk_elems):
    """Rank rows `rows` of z exactly over every code (chunks of at most chunk_elems pairs x d): best[:, rows]."""
    K, d = codes.codebook.shape
    pairs = max(1, chunk_elems // d)  # (row, code) pairs per exact_keys call
    row_step = max(1, pairs // min(K, 64))
    for p0 in range(0, rows.numel(), row_step):
        part = rows[p0 : p0 + row_step]
        f = part.numel()
        sub = torch.full((best.shape[0], f), KEY_NONE, dtype=torch.int64, device=z.device)
        zf = z[part]
        step = max(1, pairs // f)
        for k0 in range(0, K, step):
            c = codes.codebook[k0 : k0 + step]
            kc = c.shape[0]
            idx = torch.arange(k0, k0 + kc, device=z.device).repeat(f)
            if z.device.type == "cpu" and _np is not None:  # the numpy keys, as every other row's on this path
                local = _np.repeat(_np.arange(f), kc)
                keys = torch.from_numpy(pair_keys_numpy(zf, codes, local, idx.numpy(), EXACT_BATCH))
            else:
                bad = codes.bad[k0 : k0 + kc].repeat(f)
                keys, _ = exact_keys(zf.T.repeat_interleave(kc, dim=1), c.T.repeat(1, f), idx, codes.cosine, bad)
            sub = merge_smallest(sub, torch.arange(f, device=z.device).repeat_interleave(kc), keys, codes=K)
        best[:, part] = sub


MEMBERS_AT_ONCE = 1 << 12  # numpy candidates x lanes up to this: one gather; beyond, one lane at a time (at 2^15
#   pairs the lane loop took 100 us, one [n, f] gather 167)


def _rank_rows(r0, r1, levels, factors, thr32, z, codes: Codes, k0, cap, chunk_elems, best, regular, xp,
               top=None, row_major=None) -> None:
    """Candidates, exact keys and the k best of rows [r0, r1) of one code chunk, into best[:, r0:r1].

    levels: the score levels (codes, then group minima) as torch tensors (xp = torch) or numpy views (xp = numpy,
    CPU); thr32 [m] the rows' thresholds (a numpy array with xp = numpy); rows found to have too many candidates
    leave `regular`. top: the top level's (group, row) pairs when known (`top_groups`); row_major: the scores
    [m, codes] too (numpy), for the last step.
    """
    m, rows = thr32.shape[0], r1 - r0
    thr = thr32[r0:r1]
    # every code within the threshold sits in groups whose minima are within it: descend level by level, from the
    # (group, row) pairs of the top level, ordered by group: the reads below go through memory in order
    if top is None:
        at = _flatnonzero(levels[-1][:, r0:r1] <= thr, xp)  # = group * rows + row - r0
        g, r = at // rows, at % rows
    else:
        g, r = top
    for i in reversed(range(len(factors))):  # level i + 1's groups expand into level i's entries
        f = factors[i]
        if i == 0 and row_major is not None:  # the codes' own level, from the row-major copy
            pair, lane = _members_row_major(row_major, g, r + r0, f, thr[r])
        else:
            pair, lane = _members_within(levels[i], g * (f * m) + r + r0, f, m, thr[r], xp)
        g, r = g[pair] * f + lane, r[pair]
        counts = xp.bincount(r, minlength=rows)
        if counts.max() > cap:  # rows with more candidates than any bound leaves (many equal codes): exact
            heavy = counts > cap
            regular[r0:r1] &= ~(heavy if xp is torch else torch.from_numpy(heavy))
            keep = ~heavy[r]
            g, r = g[keep], r[keep]
    if r.shape[0] == 0:
        return
    code = g + k0
    step = max(1, chunk_elems // (z.shape[1] + 1))  # (row, code) pairs per batch of exact keys
    if xp is _np:
        keys = pair_keys_numpy(z[r0:r1], codes, r, code, min(step, EXACT_BATCH))
    else:
        zT, cT = z[r0:r1].T, codes.codebook.T
        keys = torch.cat([  # [d, n] gathers from the transposed views: one contiguous vector per coordinate
            exact_keys(zT.index_select(1, r[p0 : p0 + step]), cT.index_select(1, code[p0 : p0 + step]),
                       code[p0 : p0 + step], codes.cosine, codes.bad_of(code[p0 : p0 + step]))[0]
            for p0 in range(0, r.shape[0], step)
        ])  # fmt: skip
    part = best[:, r0:r1]
    part.copy_(merge_smallest(part, r, keys, codes=codes.codebook.shape[0]))


def top_groups(top: torch.Tensor, k: int):
    """(sel [k, m] int64, ub [m]) numpy, from the top level [G, m] (G >= k, CPU, overwritten): each column's k
    smallest entries and an upper bound ub of its k-th smallest (at least k entries are at most it), by k passes of
    a column minimum over values with their row index in the low mantissa bits: one min gives value and position
    (numpy's argmin over columns costs ten times its min). Values within 2^-(23 - bits) of each other may come in
    either order; ub is the largest value its high bits allow, so the bound holds: +inf above REGULAR (fewer than
    k finite values too), NaN for a column holding NaN or a value below -REGULAR (such rows are ranked exactly).
    `top` is left holding the embedded values (clamped to finite, NaN kept), +inf at the selected entries."""
    G, m = top.shape
    bits = max(1, (G - 1).bit_length())
    low_mask = (1 << bits) - 1
    top.clamp_(-FLT_MAX, FLT_MAX)  # +-inf would turn into NaN below
    ti = top.view(torch.int32)
    ti.bitwise_and_(~low_mask).bitwise_or_(_group_ids(G))
    emb = top.numpy()
    sel = _np.empty((k, m), dtype=_np.int64)
    flat, cols = emb.reshape(-1), _np.arange(m)
    for i in range(k):
        low = emb.min(0)
        if i == 0:
            first = low
        at = low.view(_np.int32) & low_mask
        _np.minimum(at, G - 1, out=at)  # a NaN minimum carries no position: any in range (the row is ranked exactly)
        sel[i] = at
        flat[at * m + cols] = _np.inf
    lb = low.view(_np.int32)
    hi = lb & ~low_mask  # the largest value with these high bits: at least the entry's true value
    ub = _np.where(lb >= 0, hi | low_mask, hi).view(_np.float32)
    ub[ub > REGULAR] = _np.inf  # (fewer than k finite values: the clamp made +inf FLT_MAX)
    ub[~(first >= -REGULAR)] = _np.nan
    return sel, ub


@functools.lru_cache(maxsize=8)
def _group_ids(G: int) -> torch.Tensor:
    """[G, 1] int32 0 .. G - 1 (made once per size)."""
    return torch.arange(G, dtype=torch.int32)[:, None]


def _extra_groups(emb, thr):
    """(g, r) numpy: the entries of the top level at most thr beyond the selected ones, from its embedded values
    `emb` [G, m] (+inf at the selected entries), for the rows whose next-smallest value may be within the threshold
    (ties, clusters): usually none. None when there are none."""
    low_mask = (1 << max(1, (emb.shape[0] - 1).bit_length())) - 1
    def lower(v):  # the smallest value with v's high bits: at most the entry's true value
        b = v.view(_np.int32)
        return _np.where(b >= 0, b & ~low_mask, b | low_mask).view(_np.float32)
    rows = _np.flatnonzero(lower(emb.min(0)) <= thr)
    if rows.shape[0] == 0:
        return None
    sub = _np.take(emb, rows, axis=1)
    at = _np.flatnonzero((lower(sub) <= thr[rows]) & (sub != _np.inf))
    return at // rows.shape[0], rows[at % rows.shape[0]]


def _plan(kc: int, k: int) -> list[int]:
    """Group factors for kc codes and top-k: minima of groups of FIRST codes, then of 4 such groups, ...; the top level
    keeps at least max(TOP, 2k) groups (TOP_FIRST for the first), so the k-th smallest minimum stays close to the
    k-th smallest score while the bound's passes run over far fewer values than the scores. [] when kc is small."""
    factors = [FIRST] if -(-kc // FIRST) >= max(TOP_FIRST, 2 * k) else []
    while factors and -(-kc // (FIRST * 4 ** len(factors))) >= max(TOP, 2 * k):
        factors.append(4)
    return factors


def _rank_chunk(z, codes: Codes, k, gamma, chunk_elems, best):
    """Top-k keys [k, m] of the rows z [m, d] into `best`; returns the rows left for the exact pass."""
    m, d = z.shape
    K = codes.codebook.shape[0]
    z32 = z.float()
    # [d + 1, m]: scores come out [codes, rows], so reductions over codes vectorise over rows
    zsT = torch.empty(d + 1, m, dtype=torch.float32, device=z.device)
    zsT[d].fill_(1.0)
    # rows holding inf or NaN, or too large for the bound, fail `regular` (NaN compares false): ranked exactly
    if codes.cosine:
        zsT[:d].copy_(z32.T)
        nz = z32.double().norm(dim=1)
        zu = z32.double() @ codes.ubar.double()
        regular = (nz >= 2.0**-60) & (nz <= 2.0**60)
        nz = nz.clamp_min(EPS)
    else:
        # any centre serves the bound (it only has to be the one the scores use): the finite codes' mean
        Z = torch.sub(z32.T, codes.mu[:, None], out=zsT[:d]).double().pow(2).sum(0)
        regular = Z <= REGULAR
    cpu = z.device.type == "cpu" and _np is not None
    # fp32 thresholds from the running bound: numpy arrays on CPU (numpy's small operations cost less), else torch
    f64 = (lambda t: t.numpy().astype(_np.float64)) if cpu else (lambda t: t.double())
    if codes.cosine:  # on CPU w_max as a float: a 0-d tensor would turn the numpy arithmetic into torch's
        nz, zu, w_max = (nz.numpy(), zu.numpy(), float(codes.w_max)) if cpu else (nz, zu, codes.w_max)
        threshold = functools.partial(cosine_threshold, nz=nz, zu=zu, gamma=gamma, w_max=w_max)
    else:
        threshold = functools.partial(l2_threshold, Z=Z.numpy() if cpu else Z, gamma=gamma)

    def thresholds(ub):  # rows past the bound (inf, NaN: ranked exactly) make inf - inf here: quietly, in numpy
        with _np.errstate(all="ignore") if cpu else contextlib.nullcontext():
            return round_up_fp32(threshold(f64(ub)))

    ub = torch.full((m,), math.inf, dtype=torch.float32, device=z.device)
    cap = 4 * k + 16  # candidates per row and level beyond which the row is ranked exactly (many equal codes)
    for k0 in range(0, K, codes.code_chunk):
        kc = min(codes.code_chunk, K - k0)
        factors = _plan(kc, k)
        w = codes.operands(k0, math.prod(factors))
        s = torch.mm(w, zsT, out=_scratch("scores", (w.shape[0], m), torch.float32, z.device))  # [kc_pad, m]
        levels = [s]
        for f in factors:
            levels.append(levels[-1].view(-1, f, m).amin(1))
        if cpu and k <= PASSES_TOP_K and levels[-1].shape[0] >= k:
            sel, ub_chunk = top_groups(levels[-1], k)
            _np.minimum(ub.numpy(), ub_chunk, out=ub.numpy())  # in place; NaN propagates
            thr32 = thresholds(ub)
            g, r = sel.reshape(-1), _np.tile(_np.arange(m), k)
            extra = _extra_groups(levels[-1].numpy(), thr32)
            if extra is not None:
                g, r = _np.concatenate([g, extra[0]]), _np.concatenate([r, extra[1]])
            views, rm = [lv.numpy() for lv in levels], None
            if factors and w.shape[0] <= ROW_MAJOR_CODES * k and m * k >= MEMBERS_AT_ONCE:  # (fewer: one gather)
                rm = torch.mm(zsT.T, w.T, out=_scratch("row scores", (m, w.shape[0]), torch.float32, z.device))
            _rank_rows(0, m, views, factors, thr32, z, codes, k0, cap, chunk_elems, best, regular, _np, top=(g, r),
                       row_major=None if rm is None else rm.numpy())
            continue
        if levels[-1].shape[0] >= k:  # k distinct codes score at most the k-th smallest top-level minimum
            ub = torch.minimum(ub, kth_smallest(levels[-1], k))  # NaN propagates
        # rows with a non-finite or huge bound get wrong or no candidates here: they are ranked exactly at the end
        thr32 = thresholds(ub)
        if not cpu:  # CUDA, or no numpy: the same steps in torch
            _rank_rows(0, m, levels, factors, thr32, z, codes, k0, cap, chunk_elems, best, regular, torch)
            continue
        # numpy on CPU: its gathers, compactions and sorts cost a fraction of torch's there, less overhead per call
        views = [lv.numpy() for lv in levels]
        _rank_rows(0, m, views, factors, thr32, z, codes, k0, cap, chunk_elems, best, regular, _np)
    # a bound of +inf (fewer than k finite scores) or past REGULAR: the error bound does not hold, rank exactly
    return ~(regular & (ub.abs() <= REGULAR))


@torch.no_grad()
def vq_nearest_ref(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    upcast: bool = False,
    chunk_elems: int = CHUNK_ELEMS,
    topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference nearest-code lookup (arguments are assumed valid: see `vq_nearest`).

    Args:
        z: [M, d] float tensor.
        codebook: [K, d] float tensor.
        metric: "l2" (squared Euclidean) or "cosine" (1 - cosine similarity).
        upcast: return the chosen codes' distances in float64 (the oracle's precision) instead of their fp32
            rounding; the ranking (module docstring) is the same either way.
        chunk_elems: most scores (and code-side or candidate elements) alive at once.
        topk: None for the nearest code ([M] outputs), or k <= K for the k nearest ([M, k], ascending
            distance, ties by lowest index).
    Returns:
        indices int64 [M] (or [M, k]), distances of the same shape (float32, or float64 with `upcast`); no autograd.
    """
    cosine = metric == "cosine"
    M, d = z.shape
    K = codebook.shape[0]
    k = topk or 1
    code_chunk = max(1, min(K, chunk_elems // (d + 1)))  # code-side operands [codes, d + 1]
    # scores [codes, rows], and the candidates of the group levels (at most 4 (4k + 16) per row)
    row_chunk = max(1, min(M, chunk_elems // min(K, code_chunk), chunk_elems // (16 * k + 64)))
    codes = codes_for(codebook, cosine, code_chunk)
    gamma = score_gamma(z.device, d, cosine)
    best = torch.full((k, M), KEY_NONE, dtype=torch.int64, device=z.device)
    for r0 in range(0, M, row_chunk):
        part = best[:, r0 : r0 + row_chunk]
        left = _rank_chunk(z[r0 : r0 + row_chunk], codes, k, gamma, chunk_elems, part)
        if left.any():
            _exact_rows(z[r0 : r0 + row_chunk], codes, left.nonzero().flatten(), part, chunk_elems)
    indices, distances = decode(best.T)  # [M, k]
    if upcast:
        rows = torch.arange(M, device=z.device).repeat_interleave(k)
        flat = indices.reshape(-1)
        if z.device.type == "cpu" and _np is not None:  # as the keys were made
            dist64 = torch.from_numpy(pair_keys_numpy(z, codes, rows.numpy(), flat.numpy(), EXACT_BATCH, dist64=True))
        else:
            _, dist64 = exact_keys(z.T.index_select(1, rows), codebook.T.index_select(1, flat), flat, cosine)
        distances = dist64.view(M, k)
    if topk is None:
        return indices.view(M), distances.view(M)
    return indices, distances
