"""Sampling as a library: the one check of the sampling arguments, the per-row sampler the generator's steps
use, and the batch loop behind `python -m spectralar.generate` and `python -m spectralar.evaluate generate`.

Batch c of a run draws from its own generator seeded from (seed, c) and, under torch.distributed, runs on
rank c % world, so the samples depend on the seed and the batch size only, never on the number of processes.
Imports no other spectralar module but the progress bars (the generator imports this one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .progress import bar


class NonFiniteError(FloatingPointError, RuntimeError):
    """Sampling met NaN or inf logits (NaN weights, a guidance scale that overflows). A FloatingPointError, which
    the command lines report in one line, and a RuntimeError, as it always was."""


def check_sampling_args(*, cfg_scale: float = 1.0, temperature: float = 1.0, top_k=None, top_p=None,
                        kv_cache: bool = True, compile: bool = False) -> None:
    """Raise ValueError naming the first bad sampling argument. The one place these rules live: the
    generator's `generate` and the command-line flag types both call it."""
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be finite and >= 0 (1 = no guidance), got {cfg_scale}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not float(top_k).is_integer() or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if compile and not kv_cache:
        raise ValueError("compile=True compiles the KV-cached decode step; it needs kv_cache=True")


def sample_from_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None, u=None):
    """Sample one index per row of `logits [B, K]` (fp32). temperature == 0 means greedy (argmax).

    Inverse-CDF sampling from one uniform draw per row (`u [B, 1]` when given, else drawn from
    `generator`), so the same draws give the same index whenever the probabilities agree to within
    the draw's distance from a CDF boundary. No host sync: a compiled step can include it.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    if u is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device if generator is None
                       else generator.device).to(probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


# ---- the batch loop ------------------------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index` of a run seeded with `seed`."""
    return seed * 100003 + index


def my_batches(num: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, slice]]:
    """(batch index, slice of the labels) of the batches rank `rank` of `world` samples."""
    return [(c, slice(s, s + batch_size)) for c, s in enumerate(range(0, num, batch_size)) if c % world == rank]


@dataclass
class Samples:
    """What a run sampled, per batch index: codes [b, N] and decoded images [b, C, S, S] (CPU), plus the
    sampled tokens, the seconds spent in the generator (not decoding) and those of a compile warm-up set by the
    caller; `merge` joins the ranks' parts."""

    codes: dict[int, torch.Tensor] = field(default_factory=dict)
    images: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0

    def all_codes(self) -> torch.Tensor:
        return torch.cat([self.codes[c] for c in sorted(self.codes)])

    def all_images(self) -> torch.Tensor:
        return torch.cat([self.images[c] for c in sorted(self.images)])

    @staticmethod
    def merge(parts: list[Samples]) -> Samples:
        """One run's samples from every rank's part (seconds: the slowest rank's)."""
        out = Samples(seconds=max(p.seconds for p in parts), compile_seconds=max(p.compile_seconds for p in parts))
        for p in parts:
            out.codes.update(p.codes)
            out.images.update(p.images)
            out.tokens += p.tokens
        return out


@torch.no_grad()
def sample_batches(tokenizer, generator, labels: torch.Tensor, *, batch_size: int, seed: int = 0,
                   cfg_scale: float = 1.0, temperature: float = 1.0, top_k=None, top_p=None, kv_cache: bool = True,
                   compile: bool = False, decode: bool = True, rank: int = 0, world: int = 1) -> Samples:
    """Sample codes (and, with `decode`, images through `tokenizer`) for class ids `labels` [M], batch by batch:
    batch c holds labels[c * batch_size:(c + 1) * batch_size], draws from seed `batch_seed(seed, c)` and is
    sampled here only when c % world == rank."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_sampling_args(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, kv_cache=kv_cache,
                        compile=compile)
    device = next(generator.parameters()).device
    out = Samples()
    batches = my_batches(len(labels), batch_size, rank, world)
    for c, rows in bar(batches, desc="sample", unit="batch"):
        lab = labels[rows].to(device)
        g = torch.Generator(device=device).manual_seed(batch_seed(seed, c))
        _sync(device)
        t = time.perf_counter()
        codes = generator.generate(lab, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                   kv_cache=kv_cache, generator=g, compile=compile)
        _sync(device)
        out.seconds += time.perf_counter() - t
        out.tokens += codes.numel()
        out.codes[c] = codes.cpu()
        if decode:
            out.images[c] = tokenizer.decode(codes).cpu()
    return out


def sample_codes(generator, labels: torch.Tensor, *, batch_size: int, seed: int = 0, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
    """Codes [M, N] for class ids `labels`, sampled in one process exactly as `python -m spectralar.generate`
    samples them (KV cache, eager)."""
    return sample_batches(None, generator, labels, batch_size=batch_size, seed=seed, cfg_scale=cfg_scale,
                          temperature=temperature, top_k=top_k, top_p=top_p, decode=False).all_codes()


def compile_warm_up(generator, labels: torch.Tensor, *, batch_size: int, cfg_scale: float, rank: int = 0,
                    world: int = 1) -> float:
    """Compile the decode step for every batch size `sample_batches` will use on this rank (one throw-away call
    each); returns the seconds spent."""
    device = next(generator.parameters()).device
    t = time.perf_counter()
    for n in sorted({len(labels[rows]) for _, rows in my_batches(len(labels), batch_size, rank, world)}):
        generator.generate(torch.zeros(n, dtype=torch.long, device=device), cfg_scale=cfg_scale, compile=True)
    _sync(device)
    return time.perf_counter() - t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- several processes (torchrun; spectralar.distributed joins the group) ------------------------------


def gather_samples(part: Samples, rank: int, world: int) -> Samples | None:
    """Every rank's part joined on rank 0 (None on the other ranks); the part itself in one process."""
    if world == 1:
        return part
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return Samples.merge(parts) if rank == 0 else None

