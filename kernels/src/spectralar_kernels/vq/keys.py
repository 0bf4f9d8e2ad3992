"""Ranking keys: the contract's exact distance of (row, code) pairs and its int64 encoding (fp32 distance bits over
the code index, so that the smallest key is the nearest code, lowest index on ties), in torch and, on CPU, numpy.

The numpy steps compute the same float64 operations in the same order as `exact_keys`, so the same keys bit for
bit; vq/ref.py and vq/dense.py call them on CPU, where numpy's gathers and small operations cost a fraction of
torch's. Temporaries of a few hundred KiB and more come from per-thread buffers reused across calls (`_scratch`).
"""

from __future__ import annotations

import functools
import math
import threading

import torch

try:  # optional: on CPU, numpy runs these steps several times faster than torch; same results
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

EPS = 1e-12
# ranking-key classes above every finite or infinite fp32 distance (bits of +inf: 0x7F800000)
KEY_NAN = 0x7FC00000  # distance NaN (a row holding NaN)
KEY_BAD = 0x7FE00000  # a code holding inf or NaN
KEY_NONE = 0x7FFFFFFFFFFFFFFF  # no candidate
EXACT_BATCH = 8192  # (row, code) pairs per batch of exact keys on CPU: the temporaries stay in cache
SCRATCH_BYTES = 1 << 24  # temporaries up to this size come from reused per-thread buffers on CPU


def _coordinate_sum(x: torch.Tensor) -> torch.Tensor:
    """x[0] + x[1] + ... + x[d-1] for x [d, n], strictly in that order (a fixed order is what makes the sum
    independent of how and where it runs; torch's reductions choose their own)."""
    out = x[0].clone()
    for j in range(1, x.shape[0]):
        out += x[j]
    return out


def exact_keys(
    zT: torch.Tensor, cT: torch.Tensor, idx: torch.Tensor, cosine: bool, bad: torch.Tensor | bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranking keys int64 [n] and float64 distances [n] of the pairs (zT[:, i], cT[:, i]).

    zT, cT: [d, n], any float dtype (contiguous: one vector per coordinate, as `x.T.index_select(1, rows)` gives
    them). The contract's distance (module docstring), summed one coordinate after another with separate
    multiply and add, so equal inputs give bit-equal keys wherever they sit; key = fp32 distance bits << 32 |
    idx, with KEY_NAN for a NaN distance and KEY_BAD for a non-finite code (`bad` [n]: computed when None,
    False when the caller knows every code is finite).
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
    # every distance is +0, positive or NaN (sums of squares, a clamped 1 - cos): abs() only clears a NaN's sign,
    # and every NaN pattern then lies at or above KEY_NAN's, so one clamp gives NaN its class
    bits = dist.float().abs_().view(torch.int32).to(torch.int64).clamp_max_(KEY_NAN)
    if bad is not False:
        bits.masked_fill_(bad, KEY_BAD)
    return bits.bitwise_left_shift_(32).bitwise_or_(idx), dist


def pair_distances(z: torch.Tensor, c: torch.Tensor, cosine: bool) -> torch.Tensor:
    """float64 contract distances [n] of matching rows z [n, d] and c [n, d] (what an index's distance is)."""
    idx = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    return exact_keys(z.T.contiguous(), c.T.contiguous(), idx, cosine)[1]


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64, fp32 distances) of ranking keys (the same steps in numpy on CPU: a fraction of the cost)."""
    if keys.device.type == "cpu" and _np is not None:
        kn = _np.ascontiguousarray(keys.numpy())
        bits = (kn >> 32).astype(_np.int32)
        dist = bits.view(_np.float32)
        dist[bits >= KEY_NAN] = _np.nan
        return torch.from_numpy(kn & 0xFFFFFFFF), torch.from_numpy(dist)
    keys = keys.contiguous()
    bits = (keys >> 32).to(torch.int32)
    dist = torch.where(bits >= KEY_NAN, torch.nan, bits.view(torch.float32))
    return keys & 0xFFFFFFFF, dist


def keys_numpy(dist32, idx, bad=None, out=None):
    """exact_keys' encoding in numpy: int64 keys from fp32 distances `dist32` (clobbered), code indices `idx` and a
    mask of non-finite codes `bad` (None: none), both indexing dist32's last axis; into `out` when given."""
    bits = _np.abs(dist32, out=dist32).view(_np.int32).astype(_np.int64)  # as in exact_keys: one clamp for NaN
    _np.minimum(bits, KEY_NAN, out=bits)
    if bad is not None:
        bits[..., bad] = KEY_BAD
    bits <<= 32
    return _np.bitwise_or(bits, idx, out=bits if out is None else out)


_SCRATCH = threading.local()


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor from a buffer reused across calls (per thread and slot, on CPU, up to SCRATCH_BYTES):
    a fresh CPU allocation of a few hundred KiB or more pays its page faults again on every call, and on a virtual
    machine those cost more than the work (measured: a 1.8 MiB gather took 1.0 ms fresh, 0.14 ms reused).
    Elsewhere, and for larger tensors, a plain allocation (CUDA's caching allocator already reuses memory)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes > SCRATCH_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    views = _SCRATCH.__dict__.setdefault("views", {})  # the last view handed out per slot: views cost microseconds
    last = views.get(slot)
    if last is not None and last.dtype == dtype and last.shape == shape:
        return last
    buf = bufs.get(slot)
    if buf is None or buf.numel() < nbytes:
        buf = bufs[slot] = torch.empty(-(-max(nbytes, 4096) // 8), dtype=torch.int64).view(torch.uint8)
    views[slot] = out = buf[:nbytes].view(dtype).view(shape)
    return out


def _rows64(x: torch.Tensor):
    """x [n, d] as a C-ordered float64 numpy array (exact: every float converts exactly)."""
    if x.dtype in (torch.float32, torch.float64, torch.float16):
        return _np.ascontiguousarray(x.numpy(), dtype=_np.float64)
    return x.double().contiguous().numpy()


def _coordinate_sum_numpy(x):
    """x[:, 0] + x[:, 1] + ... for x [n, d] float64, strictly in that order (as `_coordinate_sum`)."""
    out = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        out += x[:, j]
    return out


def unit_rows64(x64):
    """(x / |x| [n, d], |x| [n]) for x [n, d] float64 numpy: the norms and quotients `exact_keys` computes for cosine,
    the same operations in the same order (so per row once, then gathered, they are the same bits)."""
    with _np.errstate(all="ignore"):
        norm = _np.sqrt(_coordinate_sum_numpy(x64 * x64))
        return x64 / norm[:, None], norm


def pair_keys_numpy(z: torch.Tensor, codes, rows, code, batch: int, dist64: bool = False):
    """exact_keys(z.T[:, rows], codebook.T[:, code], code, codes.cosine)[0] on CPU in numpy (rows, code and the keys:
    int64 numpy arrays [n]; with dist64, [1] instead: the float64 distances): bit for bit the same keys (the same
    float64 operations in the same order, IEEE's square root), in batches of `batch` pairs through reused buffers.
    The gathers take whole rows ([n, d], d values at a time: several times faster than gathering [d, n] one value
    at a time); for cosine, of the unit vectors, made once per row and code."""
    d = z.shape[1]
    z64 = _rows64(z)  # [m, d]: a row chunk
    table = codes.table64()  # [K, d] float64, or None for a codebook too large to copy whole

    def code_rows(c, out=None):  # float64 rows of the codes c
        if table is None:
            return _rows64(codes.codebook.index_select(0, torch.from_numpy(_np.ascontiguousarray(c))))
        return _np.take(table, c, axis=0, out=out, mode="clip")

    if codes.cosine:
        uz, nz = unit_rows64(z64)
        units = codes.units64()  # ([K, d], [K]) or None, as table
    out = _np.empty(rows.shape[0], dtype=_np.float64 if dist64 else _np.int64)
    for p0 in range(0, rows.shape[0], batch):
        r, c = rows[p0 : p0 + batch], code[p0 : p0 + batch]
        big = r.shape[0] * d * 8 > 1 << 18  # temporaries past 256 KiB come from the reused buffers
        reuse = functools.partial(_scratch, shape=(r.shape[0], d), dtype=torch.float64, device=z.device)
        # mode="clip" (the indices are in range): with out= and the default mode, numpy gathers into a temporary
        # and copies, twice the time
        diff = _np.take(uz if codes.cosine else z64, r, axis=0, out=reuse("zrows").numpy() if big else None,
                        mode="clip")  # fmt: skip
        if not codes.cosine:
            cc = code_rows(c, reuse("crows").numpy() if big else None)
        elif units is not None:
            cc, nc = _np.take(units[0], c, axis=0, mode="clip"), _np.take(units[1], c, mode="clip")
        else:
            cc, nc = unit_rows64(code_rows(c))
        with _np.errstate(all="ignore"):  # inf, NaN and overflow to inf in the fp32 rounding: as torch, silently
            diff -= cc
            diff *= diff
            dist = _coordinate_sum_numpy(diff)
            if codes.cosine:
                dist *= 0.5  # 1 - cos as half the squared distance of the unit vectors
                nr = nz[r]
                tiny = (nr < EPS) | (nc < EPS)
                if tiny.any():  # a norm below EPS: 1 - z.c / (max(|z|, EPS) max(|c|, EPS)), clamped at 0
                    zc = _coordinate_sum_numpy(z64[r[tiny]] * code_rows(c[tiny]))
                    clamped = 1.0 - zc / (_np.maximum(nr[tiny], EPS) * _np.maximum(nc[tiny], EPS))
                    dist[tiny] = _np.maximum(clamped, 0.0)
            if dist64:
                out[p0 : p0 + batch] = dist
                continue
            dist32 = dist.astype(_np.float32)
        keys_numpy(dist32, c, codes.bad.numpy()[c] if codes.any_bad else None, out[p0 : p0 + batch])
    return out
