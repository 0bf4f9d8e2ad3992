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
        l2:      s_mk = ||c_k - mu||^2 - 2 (z_m - mu).(c_k - mu)   (mu: the mean of the chunk's finite rows)
        cosine:  s_mk = z_m.(ubar - u_k)                          (u_k = c_k / max(|c_k|, EPS), ubar their mean)
    s_mk + Z_m (Z_m = ||z_m - mu||^2) approximates dist_k for l2, 1 - (z_m.ubar - s_mk) / |z_m| for cosine.
 2. A rigorous bound on the GEMM's rounding (`score_gamma`: |error| <= gamma (8 Z + 2 dist) for l2,
    <= gamma max_k |ubar - u_k| for cosine) turns an upper bound on the k-th smallest score into a
    per-row threshold (`l2_threshold`, `cosine_threshold`) that every code whose fp32 distance may tie
    the k-th nearest passes: usually k to 2k codes per row. Codes are grouped by GROUP; the group minima
    (one vectorised pass) give the bound and the groups worth expanding.
 3. Only those codes get their exact distance (`exact_keys`); the ranking key packs the fp32 distance
    bits over the code index in one int64, so the minimum key is the nearest code, lowest index on ties.
Rows the bound cannot serve (non-finite or huge values, or more than a few groups of candidates, as with
many duplicate codes) are ranked exactly over all codes, chunk by chunk.

Memory: the M x K score matrix is never allocated. Scores live in chunks of at most CHUNK_ELEMS, code-side
temporaries in chunks of at most CHUNK_ELEMS elements, candidates in batches of the same size.
Host syncs: `nonzero` on the candidate groups, one per chunk (free on CPU; on CUDA this reference syncs).
"""

from __future__ import annotations

import functools
import math
import threading

import torch

EPS = 1e-12
CHUNK_ELEMS = 1 << 22  # scores alive at once (16 MiB in fp32); also bounds code-side and candidate temporaries
MERGE_PASSES_K = 4  # up to this k, vectorised passes pick a row's k smallest keys; beyond, torch.topk per row
BOUND_PASSES_K = 8  # up to this k, vectorised passes bound the k-th smallest group minimum; beyond, torch.topk
TOP = 64  # group minima are taken in levels (16 codes, then x4) down to at least max(TOP, 2k) groups
FLT_MAX = 3.4028234663852886e38
REGULAR = 2.0**100  # |scores| and Z beyond this: no overflow-free bound, rank the row exactly
# ranking-key classes above every finite or infinite fp32 distance (bits of +inf: 0x7F800000)
KEY_NAN = 0x7FC00000  # distance NaN (a row holding NaN)
KEY_BAD = 0x7FE00000  # a code holding inf or NaN
KEY_NONE = 0x7FFFFFFFFFFFFFFF  # no candidate


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


def l2_threshold(ub: torch.Tensor, Z: torch.Tensor, gamma: float) -> torch.Tensor:
    """Score threshold [m] (float64) that every code within fp32 ties of the k-th nearest passes (l2).

    ub: an upper bound of the k-th smallest score of the row; Z = ||z - mu||^2 (float64). With
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
    return (ub.double() + Z).clamp_min_(0.0).mul_(A).add_(Z, alpha=B).add_(2.0**-130)


def cosine_threshold(ub: torch.Tensor, nz: torch.Tensor, zu: torch.Tensor, gamma: float, w_max) -> torch.Tensor:
    """Score threshold [m] (float64) for cosine: scores are z.(ubar - u), nz = max(|z|, EPS), zu = z.ubar.

    t = 1 - (zu - s) / nz approximates the distance within E = gamma w_max (+ float64 rounding), so a code
    tying the k-th nearest in fp32 has t below (t_ub + E)(1 + 2^-22) + 2^-140 + E.
    """
    E = gamma * w_max + 2.0**-50
    t = (1.0 - (zu - ub.double()) / nz).clamp_min(0.0)
    margin = 2 * E + 2.0**-22 * (t + E) + 2.0**-140 + 2.0**-45 * (t + 1)
    return ub.double() + nz * margin


def round_up_fp32(x: torch.Tensor) -> torch.Tensor:
    """float64 -> fp32, never below x (a threshold rounded down would lose candidates): fp32 rounding moves a
    value by at most 2^-24 of it, or 2^-150 below the normal range."""
    return (x + x.abs() * 2.0**-22 + 2.0**-126).float()


def _coordinate_sum(x: torch.Tensor) -> torch.Tensor:
    """x[0] + x[1] + ... + x[d-1] for x [d, n], strictly in that order (a fixed order is what makes the sum
    independent of how and where it runs; torch's reductions choose their own)."""
    out = x[0].clone()
    for j in range(1, x.shape[0]):
        out += x[j]
    return out


def exact_keys(
    zT: torch.Tensor, cT: torch.Tensor, idx: torch.Tensor, cosine: bool, bad: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranking keys int64 [n] and float64 distances [n] of the pairs (zT[:, i], cT[:, i]).

    zT, cT: [d, n], any float dtype (contiguous: one vector per coordinate, as `x.T.index_select(1, rows)` gives
    them). The contract's distance (module docstring), summed one coordinate after another with separate
    multiply and add, so equal inputs give bit-equal keys wherever they sit; key = fp32 distance bits << 32 |
    idx, with KEY_NAN for a NaN distance and KEY_BAD for a non-finite code (`bad` [n], computed when None).
    """
    if bad is None:
        bad = ~torch.isfinite(cT).all(dim=0)
    zT, cT = zT.double(), cT.double()
    if cosine:
        nz = _coordinate_sum(zT * zT).sqrt()
        nc = _coordinate_sum(cT * cT).sqrt()
        # 1 - cos as half the squared distance of the unit vectors: no cancellation near cos = 1
        diff = zT / nz - cT / nc
        dist = _coordinate_sum(diff.mul_(diff)) * 0.5
        # a norm below EPS (zero vectors): 1 - z.c / (max(|z|, EPS) max(|c|, EPS)), 1 for a zero vector
        tiny = (nz < EPS) | (nc < EPS)
        if tiny.any():
            zc = _coordinate_sum(zT * cT)
            clamped = 1.0 - zc / (nz.masked_fill(nz < EPS, EPS) * nc.masked_fill(nc < EPS, EPS))
            dist = torch.where(tiny, clamped.masked_fill(clamped < 0, 0.0), dist)
    else:
        diff = zT.sub_(cT) if zT.data_ptr() != cT.data_ptr() else zT - cT  # float64 (exact conversions), in place
        dist = _coordinate_sum(diff.mul_(diff))
    v = dist.float()
    bits = v.masked_fill(v == 0, 0.0).view(torch.int32).to(torch.int64)  # -0.0 -> +0.0: one pattern per value
    bits.masked_fill_(torch.isnan(v), KEY_NAN).masked_fill_(bad, KEY_BAD)
    return (bits << 32) | idx, dist


def pair_distances(z: torch.Tensor, c: torch.Tensor, cosine: bool) -> torch.Tensor:
    """float64 contract distances [n] of matching rows z [n, d] and c [n, d] (what an index's distance is)."""
    idx = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    return exact_keys(z.T.contiguous(), c.T.contiguous(), idx, cosine)[1]


_direct_distance = pair_distances  # the name the GPU report calls


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64, fp32 distances) of ranking keys."""
    bits = (keys >> 32).to(torch.int32)
    dist = torch.where(bits >= KEY_NAN, torch.nan, bits.view(torch.float32))
    return keys & 0xFFFFFFFF, dist


def merge_smallest(
    best: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, rows_sorted: bool = False
) -> torch.Tensor:
    """The k smallest ranking keys per row [k, m] of `best` [k, m] and the flat candidates (rows, keys), ascending.

    Keys of one row are distinct (the code index is part of the key) apart from KEY_NONE. k <= MERGE_PASSES_K: k passes
    of (row minimum by scatter-min, remove it), vectorised over all candidates. Larger k: the candidates go into a
    dense [m, k + most per row] matrix beside `best` (KEY_NONE elsewhere), one top-k per row picks the k smallest.
    """
    k, m = best.shape
    if k <= MERGE_PASSES_K:
        allr = torch.cat([torch.arange(m, device=best.device).repeat(k), rows])
        allk = torch.cat([best.reshape(-1), keys])
        out = torch.empty_like(best)
        for i in range(k):
            out[i].fill_(KEY_NONE).scatter_reduce_(0, allr, allk, "amin")
            if i + 1 < k:
                allk.masked_fill_(allk == out[i][allr], KEY_NONE)
        return out
    if not rows_sorted:
        order = rows.argsort(stable=True)
        rows, keys = rows[order], keys[order]
    counts = torch.bincount(rows, minlength=m)
    dense = torch.full((m, k + int(counts.max())), KEY_NONE, dtype=torch.int64, device=best.device)
    dense[:, :k] = best.T
    dense[rows, k + torch.arange(rows.numel(), device=best.device) - (torch.cumsum(counts, 0) - counts)[rows]] = keys
    return dense.topk(k, dim=1, largest=False).values.T


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """An upper bound of the k-th smallest value of each column of x [G, m] (G >= k); NaN propagates.

    k <= BOUND_PASSES_K: the k-th smallest distinct value, by k passes of (column minimum, mask its copies out),
    vectorised over the columns (repeats make it larger, never smaller: still a bound). Larger k: one top-k per
    column, exact (torch.topk's per-row cost beats 3k passes there).
    """
    if k == 1:
        return x.amin(0)
    if k <= BOUND_PASSES_K:
        x = x.clone()
        for _ in range(k - 1):
            x.masked_fill_(x == x.amin(0), math.inf)
        return x.amin(0)
    kth = x.T.contiguous().topk(k, dim=1, largest=False).values[:, -1]
    return torch.where(torch.isnan(x).any(0), math.nan, kth)  # topk ranks NaN as largest


class _Codes:
    """Codebook terms shared by every row chunk: non-finite codes and, for cosine, the centring.

    Everything runs in chunks of `code_chunk` codes, in place where it can: at most one float64 and two fp32
    [code_chunk, d + 1] temporaries are alive at once.
    """

    def __init__(self, codebook: torch.Tensor, cosine: bool, code_chunk: int):
        self.codebook, self.cosine, self.code_chunk = codebook, cosine, code_chunk
        self.ubar, self.w_max = None, 1.0
        self.bad = torch.cat([~torch.isfinite(codebook[k0 : k0 + code_chunk]).all(dim=1)
                              for k0 in range(0, codebook.shape[0], code_chunk)])  # fmt: skip
        if cosine:  # two chunked passes: the mean unit vector of the finite codes, then max |ubar - u_k|
            total = torch.zeros(codebook.shape[1], dtype=torch.float64, device=codebook.device)
            for k0 in range(0, codebook.shape[0], code_chunk):
                total += self._units(k0).sum(0)
            self.ubar = (total / (~self.bad).sum().clamp_min(1)).float()
            w_max = torch.zeros((), dtype=torch.float64, device=codebook.device)  # a tensor: no host sync on CUDA
            for k0 in range(0, codebook.shape[0], code_chunk):
                w = self._units(k0).neg_().add_(self.ubar.double()).float().double()  # |ubar - u| as rounded
                w_max = torch.maximum(w_max, w.norm(dim=1).max())
            self.w_max = w_max * (1 + 2.0**-20)

    def _units(self, k0: int) -> torch.Tensor:
        """u_k = c_k / max(|c_k|, EPS) in float64 for the chunk at k0, zero rows for non-finite codes."""
        u = self.codebook[k0 : k0 + self.code_chunk].double()
        u.masked_fill_(self.bad[k0 : k0 + u.shape[0], None], 0.0)
        return u.div_(u.norm(dim=1, keepdim=True).clamp_min_(EPS))

    def operands(self, k0: int, mu: torch.Tensor | None, group: int) -> torch.Tensor:
        """w [kc_pad, d + 1] fp32 (kc codes padded to a multiple of `group`): scores [kc_pad, m] = w @ [z - mu, 1]^T
        with the last column holding a_k (||c_k - mu||^2 for l2, 0 for cosine), so one GEMM gives them whole
        (no broadcast add over M x K). Padding and non-finite codes get w = 0, a = +inf: never candidates."""
        c = self.codebook[k0 : k0 + self.code_chunk]
        kc, d = c.shape
        kc_pad = -(-kc // group) * group
        w = torch.zeros(kc_pad, d + 1, dtype=torch.float32, device=c.device)
        w[kc:, d] = math.inf
        bad = self.bad[k0 : k0 + kc]
        if self.cosine:
            w[:kc, :d] = self._units(k0).neg_().add_(self.ubar.double())
        else:
            cc = w[:kc, :d]
            torch.sub(c, mu, out=cc)
            w[:kc, d] = cc.square().sum(dim=1)
            cc.mul_(-2.0)
        w[:kc].masked_fill_(bad[:, None], 0.0)
        w[:kc, d].masked_fill_(bad, math.inf)
        return w


def _exact_rows(z, codes: _Codes, rows, best, chunk_elems):
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
            bad = codes.bad[k0 : k0 + kc].repeat(f)
            keys, _ = exact_keys(zf.T.repeat_interleave(kc, dim=1), c.T.repeat(1, f), idx, codes.cosine, bad)
            sub = merge_smallest(sub, torch.arange(f, device=z.device).repeat_interleave(kc), keys)
        best[:, part] = sub


_SCRATCH = threading.local()


def _scratch(slot: int, numel: int, device: torch.device) -> torch.Tensor:
    """A reused fp32 CPU buffer of at least `numel` elements (per thread and slot, at most CHUNK_ELEMS each): a
    score chunk is a few MiB, and a fresh CPU allocation that size pays its page faults again on every call
    (measured ~0.3 ms of 2.5 at M = K = 1024). CUDA's caching allocator already reuses memory."""
    if device.type != "cpu":
        return torch.empty(numel, dtype=torch.float32, device=device)
    key = (slot, device)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        buf = bufs[key] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


def _rank_chunk(z, codes: _Codes, k, gamma, chunk_elems, best):
    """Top-k keys [k, m] of the rows z [m, d] into `best`; returns the rows left for the exact pass."""
    m, d = z.shape
    K = codes.codebook.shape[0]
    z32 = z.float()
    finite = torch.isfinite(z32.sum(1))  # an overflowing sum counts as non-finite: such rows are ranked exactly
    if codes.cosine:
        zs = z32
        nz = z32.double().norm(dim=1)
        zu = z32.double() @ codes.ubar.double()
        regular = finite & (nz >= 2.0**-60) & (nz <= 2.0**60)
        nz = nz.clamp_min(EPS)
        mu = None
    else:
        mu = z32[finite].sum(0) / finite.sum().clamp_min(1)
        zs = z32 - mu
        Z = zs.double().pow(2).sum(1)
        regular = finite & (Z <= REGULAR)
    # [d + 1, m]: scores come out [codes, rows], so reductions over codes vectorise over rows
    zsT = torch.cat([zs, torch.ones(m, 1, dtype=zs.dtype, device=zs.device)], dim=1).T.contiguous()
    if codes.cosine:
        threshold = functools.partial(cosine_threshold, nz=nz, zu=zu, gamma=gamma, w_max=codes.w_max)
    else:
        threshold = functools.partial(l2_threshold, Z=Z, gamma=gamma)
    ub = torch.full((m,), math.inf, dtype=torch.float32, device=z.device)
    cap = 4 * k + 16  # candidates per row and level beyond which the row is ranked exactly (many equal codes)
    for k0 in range(0, K, codes.code_chunk):
        kc = min(codes.code_chunk, K - k0)
        # minima of groups of 16 codes, then of 4 such groups, 4 of those, ...: the top level keeps at least
        # max(TOP, 2k) groups, so the k-th smallest minimum stays close to the k-th smallest score
        factors = [16] if -(-kc // 16) >= max(TOP, 2 * k) else []
        while factors and -(-kc // (16 * 4 ** len(factors))) >= max(TOP, 2 * k):
            factors.append(4)
        w = codes.operands(k0, mu, math.prod(factors))
        s = torch.mm(w, zsT, out=_scratch(0, w.shape[0] * m, z.device).view(w.shape[0], m))  # [kc_pad, m]
        levels = [s]
        for f in factors:
            levels.append(levels[-1].view(-1, f, m).amin(1))
        if levels[-1].shape[0] >= k:  # k distinct codes score at most the k-th smallest top-level minimum
            ub = torch.minimum(ub, kth_smallest(levels[-1], k))  # NaN propagates
        # rows with a non-finite or huge bound get wrong or no candidates here: they are ranked exactly at the end
        thr32 = round_up_fp32(threshold(ub))
        # every code within the threshold sits in groups whose minima are within it: descend level by level
        r, g = (levels[-1] <= thr32).T.nonzero(as_tuple=True)
        # k > 1 expands several groups of 16: the same scores laid out [m, kc_pad] (one more GEMM) turn each group's
        # 16 scores into one contiguous read instead of 16 reads m apart
        rows_major = None
        if k > 1 and factors:  # [m, kc_pad]
            rows_major = torch.mm(zsT.T, w.T, out=_scratch(1, w.shape[0] * m, z.device).view(m, w.shape[0]))
        for level, (lower, f) in enumerate(zip(reversed(levels[:-1]), reversed(factors))):
            if rows_major is not None and level == len(factors) - 1:  # groups of 16 -> codes, from rows_major
                block = rows_major.view(-1, f).index_select(0, r * (rows_major.shape[1] // f) + g)  # [n, 16]
                pair, lane = (block <= thr32.index_select(0, r)[:, None]).nonzero(as_tuple=True)
                g, r = g[pair] * f + lane, r[pair]
            else:
                g = (g[:, None] * f + torch.arange(f, device=z.device)).view(-1)
                r = r.repeat_interleave(f)
                keep = lower.view(-1).index_select(0, g * m + r) <= thr32.index_select(0, r)
                g, r = g[keep], r[keep]
            heavy = torch.bincount(r, minlength=m) > cap
            if heavy.any():
                regular &= ~heavy
                keep = ~heavy[r]
                g, r = g[keep], r[keep]
        step = max(1, chunk_elems // (d + 1))  # (row, code) pairs per batch of exact keys
        for p0 in range(0, r.numel(), step):  # r is sorted: nonzero on [m, G] and every step after keep the order
            rp, code = r[p0 : p0 + step], g[p0 : p0 + step] + k0
            # [d, n] gathers from the transposed views: one contiguous vector per coordinate
            keys, _ = exact_keys(z.T.index_select(1, rp), codes.codebook.T.index_select(1, code), code, codes.cosine,
                                 codes.bad[code])  # fmt: skip
            best.copy_(merge_smallest(best, rp, keys, rows_sorted=True))
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
    codes = _Codes(codebook, cosine, code_chunk)
    gamma = score_gamma(z.device, d, cosine)
    best = torch.full((k, M), KEY_NONE, dtype=torch.int64, device=z.device)
    for r0 in range(0, M, row_chunk):
        part = best[:, r0 : r0 + row_chunk]
        left = _rank_chunk(z[r0 : r0 + row_chunk], codes, k, gamma, chunk_elems, part)
        if left.any():
            _exact_rows(z[r0 : r0 + row_chunk], codes, left.nonzero().flatten(), part, chunk_elems)
    indices, distances = decode(best.T.contiguous())  # [M, k]
    if upcast:
        rows = torch.arange(M, device=z.device).repeat_interleave(k)
        flat = indices.reshape(-1)
        _, dist64 = exact_keys(z.T.index_select(1, rows), codebook.T.index_select(1, flat), flat, cosine)
        distances = dist64.view(M, k)
    if topk is None:
        return indices.view(M), distances.view(M)
    return indices, distances
