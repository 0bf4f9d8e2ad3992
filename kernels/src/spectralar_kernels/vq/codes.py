"""Codebook-side state of the reference lookup (vq/ref.py): which codes hold inf or NaN, the centre of the l2
scores, cosine's mean unit vector and spread, the GEMM operands and the float64 copies the exact keys gather from.

All of it depends on the codebook alone. On CPU a small codebook's state is kept for later calls of the same
thread (`codes_for`) and used again only when the codebook holds the same bits, compared in full: a tensor changed
in place (through `.data` too) or a new tensor at the same address is a different codebook. Inference looks up one
codebook many times and saves the state's cost on each call (4 rows against 1024 codes, top-4: 0.26 ms a call
instead of 0.40); in training the comparison fails and the state is made again, so a call costs about what it
did without the cache.
"""

from __future__ import annotations

import math
import threading

import torch

from .keys import EPS, _np, _rows64, unit_rows64

FLT_MAX = 3.4028234663852886e38
CACHE_ELEMS = 1 << 16  # on CPU, codebooks of up to this many values K x (d + 1) keep their state between calls
#   (each entry holds a few copies of its codebook: 16 MiB at most for the CACHE_ENTRIES of a thread)
CACHE_ENTRIES = 8  # codebooks remembered per thread (per-group codebooks take one each), most recent first
_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}  # fmt: skip
_CACHE = threading.local()


class Codes:
    """Codebook terms shared by every row chunk: non-finite codes, the l2 centre and, for cosine, the centring.

    Everything runs in chunks of `code_chunk` codes, in place where it can: at most one float64 and two fp32
    [code_chunk, d + 1] temporaries are alive at once.
    """

    def __init__(self, codebook: torch.Tensor, cosine: bool, code_chunk: int):
        self.codebook, self.cosine, self.code_chunk = codebook, cosine, code_chunk
        self.ubar, self.w_max, self.mu, self._table64, self._units64 = None, 1.0, None, None, None
        self._operands = {}  # (k0, group) -> w, when the codebook is one chunk
        # per-coordinate sums in float64: finite when every value is (a sum of fp16/bf16/fp32 values cannot
        # overflow float64), so the per-code check runs only when they are not; and the l2 centre
        chunks = range(0, codebook.shape[0], code_chunk)
        total = sum(codebook[k0 : k0 + code_chunk].sum(0, dtype=torch.float64) for k0 in chunks)
        cpu = codebook.device.type == "cpu" and _np is not None  # numpy: a fraction of torch's cost on [d] vectors
        self.any_bad = not (_np.isfinite(total.numpy()).all() if cpu else bool(torch.isfinite(total).all()))
        self._bad = None  # made when first asked for (`bad`) unless some code is non-finite
        if self.any_bad:
            self._bad = torch.cat([~torch.isfinite(codebook[k0 : k0 + code_chunk]).all(dim=1) for k0 in chunks])
            self.any_bad = bool(self._bad.any())  # (float64 codes near its range can overflow the sum)
            total = sum(codebook[k0 : k0 + code_chunk][~self._bad[k0 : k0 + code_chunk]].sum(0, dtype=torch.float64)
                        for k0 in chunks)  # fmt: skip
        count = int((~self._bad).sum().clamp_min(1)) if self.any_bad else codebook.shape[0]
        if not cosine:  # the centre of the scores: the mean of the finite codes, in the fp32 range (float64 codes
            #   beyond it, or a sum of them past float64's, give a centre that serves too: any does)
            if cpu:
                mu = _np.clip(total.numpy() / count, -FLT_MAX, FLT_MAX)
                self.mu = torch.from_numpy((mu if _np.isfinite(mu).all() else _np.zeros_like(mu)).astype(_np.float32))
            else:
                self.mu = (total / count).nan_to_num(0.0, 0.0, 0.0).clamp(-FLT_MAX, FLT_MAX).float()
            return
        # cosine: two chunked passes, the mean unit vector of the finite codes, then max |ubar - u_k|
        total = torch.zeros(codebook.shape[1], dtype=torch.float64, device=codebook.device)
        for k0 in range(0, codebook.shape[0], code_chunk):
            total += self._units(k0).sum(0)
        self.ubar = (total / count).float()
        w_max = torch.zeros((), dtype=torch.float64, device=codebook.device)  # a tensor: no host sync on CUDA
        for k0 in range(0, codebook.shape[0], code_chunk):
            w = self._units(k0).neg_().add_(self.ubar.double()).float().double()  # |ubar - u| as rounded
            w_max = torch.maximum(w_max, w.norm(dim=1).max())
        self.w_max = w_max * (1 + 2.0**-20)

    @property
    def bad(self) -> torch.Tensor:
        """bool [K]: the codes holding inf or NaN."""
        if self._bad is None:
            self._bad = torch.zeros(self.codebook.shape[0], dtype=torch.bool, device=self.codebook.device)
        return self._bad

    def table64(self):
        """The codebook as a float64 numpy array [K, d] (made once; None when it spans several code chunks)."""
        if self._table64 is None and self.codebook.shape[0] <= self.code_chunk:
            self._table64 = _rows64(self.codebook)
        return self._table64

    def units64(self):
        """(c / |c| [K, d], |c| [K]) float64 numpy for cosine's exact keys (made once; None as for table64)."""
        if self._units64 is None and self.table64() is not None:
            self._units64 = unit_rows64(self.table64())
        return self._units64

    def bad_of(self, code: torch.Tensor) -> torch.Tensor | bool:
        """Which of the codes `code` hold inf or NaN (False when none of the codebook does)."""
        return self.bad.index_select(0, code) if self.any_bad else False

    def _units(self, k0: int) -> torch.Tensor:
        """u_k = c_k / max(|c_k|, EPS) in float64 for the chunk at k0, zero rows for non-finite codes."""
        u = self.codebook[k0 : k0 + self.code_chunk].double()
        u.masked_fill_(self.bad[k0 : k0 + u.shape[0], None], 0.0)
        return u.div_(u.norm(dim=1, keepdim=True).clamp_min_(EPS))

    def operands(self, k0: int, group: int) -> torch.Tensor:
        """w [kc_pad, d + 1] fp32 (kc codes padded to a multiple of `group`; read only: it may be kept for later
        calls): scores [kc_pad, m] = w @ [z - mu, 1]^T with the last column holding a_k (||c_k - mu||^2 for l2,
        0 for cosine), so one GEMM gives them whole (no broadcast add over M x K). Padding and non-finite codes
        get w = 0, a = +inf: never candidates."""
        w = self._operands.get((k0, group))
        if w is not None:
            return w
        c = self.codebook[k0 : k0 + self.code_chunk]
        kc, d = c.shape
        kc_pad = -(-kc // group) * group
        w = torch.zeros(kc_pad, d + 1, dtype=torch.float32, device=c.device)
        if kc_pad > kc:
            w[kc:, d] = math.inf
        bad = self.bad[k0 : k0 + kc]
        if self.cosine:
            w[:kc, :d] = self._units(k0).neg_().add_(self.ubar.double())
        else:
            cc = w[:kc, :d]
            torch.sub(c, self.mu, out=cc)
            w[:kc, d] = cc.square().sum(dim=1)
            cc.mul_(-2.0)
        if self.any_bad:
            w[:kc].masked_fill_(bad[:, None], 0.0)
            w[:kc, d].masked_fill_(bad, math.inf)
        if kc == self.codebook.shape[0]:  # one chunk: small enough to keep
            self._operands[(k0, group)] = w
        return w


def codes_for(codebook: torch.Tensor, cosine: bool, code_chunk: int) -> Codes:
    """The codebook's `Codes`: on CPU, for a codebook of at most CACHE_ELEMS values in one chunk, the one an earlier
    call of this thread made for a codebook of the same bits (dtype, shape and every value's bits: NaN payloads and
    the sign of zero count), else a new one (kept for later calls, in place of any made for a tensor at the same
    address)."""
    bits_dtype = _BITS.get(codebook.dtype)
    small = codebook.numel() + len(codebook) <= CACHE_ELEMS and len(codebook) <= code_chunk  # (one chunk: no copy
    #   beyond the chunk a caller asked for)
    if codebook.device.type != "cpu" or bits_dtype is None or not small:
        return Codes(codebook, cosine, code_chunk)
    bits = codebook.detach().view(bits_dtype)
    key = (cosine, code_chunk, codebook.dtype, tuple(codebook.shape))
    entries = _CACHE.__dict__.setdefault("entries", [])  # [(key, address, saved bits, Codes)], most recent first
    held = bits.numpy() if _np is not None else bits  # numpy compares in half of torch.equal's time
    for i, (k, _, saved, codes) in enumerate(entries):
        if k == key and (bool((saved.numpy() == held).all()) if _np is not None else torch.equal(saved, held)):
            entries.insert(0, entries.pop(i))
            return codes
    saved = bits.clone(memory_format=torch.contiguous_format)  # the caller may change its tensor later
    codes = Codes(saved.view(codebook.dtype), cosine, code_chunk)
    address = codebook.data_ptr()
    kept = [e for e in entries if e[:2] != (key, address)]  # a codebook changed in place replaces its old state
    entries[:] = [(key, address, saved, codes), *kept[: CACHE_ENTRIES - 1]]
    return codes


def clear_cache() -> None:
    """Forget the codebook states this thread keeps (their memory goes back at once)."""
    _CACHE.__dict__.pop("entries", None)
