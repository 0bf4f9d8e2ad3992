"""The sampler: free functions over an autoregressive model of gpt-fast's shape, and the batch loop behind
`python -m spectralar.generate` and `python -m spectralar.evaluate generate`.

The model (`SpectralGPT`, or any model with the same five members) provides
- `config.num_tokens` (N), `config.num_classes`, `config.class_dropout` and `null_class` (the CFG row's id);
- `setup_caches(batch, dtype, device, zero=True)`: the static caches of one sampling call;
- `prefill(labels, caches, prefix=None)`: the first position and the codes `prefix` [B, k] in one pass, filling
  cache positions 0..k; logits [B, K] for token k + 1;
- `decode_one_token(token, caches, cache_seqlens)`: token [B] at position `cache_seqlens`; logits for the next;
- `model(labels, codes)`: logits [B, T + 1, K] for the whole prefix (the uncached path).

Everything that shapes the sampling distribution travels as one frozen `SamplingParams`, checked once when it is
built. `generate` returns codes; `stream` yields after every token (codes so far and, on request, the decoded
preview); both run the same loop, so a stream's last codes are `generate`'s. A coarse-to-fine sequence can stop
early (`num_tokens=k`: every prefix decodes to a whole image) or continue a given prefix (variations).

Batch c of a run draws from its own generator seeded from (seed, c) and, under torch.distributed, runs on rank
c % world, so the samples depend on the seed and the batch size only, never on the number of processes.
Imports no other spectralar module but the progress bars.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .progress import bar

__all__ = ["NonFiniteError", "SamplingParams", "StreamStep", "Samples", "build_decode_step", "check_labels",
           "compile_warm_up", "decode_prefix", "gather_samples", "generate", "guide", "sample_batches", "sample_codes",
           "sample_from_logits", "sample_step", "sample_variations", "stream", "batch_seed", "my_batches"]


class NonFiniteError(FloatingPointError, RuntimeError):
    """Sampling met NaN or inf logits (NaN weights, a guidance scale that overflows). A FloatingPointError, which
    the command lines report in one line, and a RuntimeError, as it always was."""


@dataclass(frozen=True)
class SamplingParams:
    """How each token is drawn; validated here, the one place these rules live (the command-line flag types build
    one too). cfg_scale: 1 = plain conditional sampling, > 1 mixes uncond + cfg_scale * (cond - uncond) over a
    batch doubled with the null class. temperature: 0 = greedy. top_k: keep the k most likely codes (int >= 1).
    top_p: nucleus mass in (0, 1]. Raises ValueError naming the first bad field."""

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        for name in ("cfg_scale", "temperature", "top_k", "top_p"):
            v = getattr(self, name)
            if v is None and name in ("top_k", "top_p"):  # off
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(f"cfg_scale must be finite and >= 0 (1 = no guidance), got {self.cfg_scale}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (not float(self.top_k).is_integer() or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        # one canonical form: equal settings compare (and key torch.compile's guards) equal
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.top_k is not None:
            object.__setattr__(self, "top_k", int(self.top_k))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def guided(self) -> bool:
        """Whether the batch is doubled with the null class (classifier-free guidance)."""
        return self.cfg_scale != 1.0


def sample_from_logits(logits, params: SamplingParams, *, u=None, generator=None):
    """One index per row of `logits [B, K]` under `params` (temperature, top_k, top_p; temperature 0 = argmax).

    Inverse-CDF sampling from one uniform draw per row (`u [B, 1]` when given, else drawn from `generator`), so
    the same draws give the same index whenever the probabilities agree to within the draw's distance from a CDF
    boundary. No host sync: a compiled step can include it.
    """
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if params.top_p is not None and params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    if u is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device if generator is None
                       else generator.device).to(probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def guide(logits, params: SamplingParams):
    """fp32 logits; with CFG (rows [cond; uncond]) mixed as uncond + cfg_scale * (cond - uncond)."""
    logits = logits.float()
    if params.guided:
        cond, uncond = logits.chunk(2)
        logits = uncond + params.cfg_scale * (cond - uncond)
    return logits


def check_labels(model, labels) -> torch.Tensor:
    """labels as an int64 tensor [B] of class ids in [0, num_classes) on the model's device, or ValueError."""
    nc = model.config.num_classes
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype not in (torch.int64, torch.int32) or labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= nc:
        bad = labels[(labels < 0) | (labels >= nc)][0].item()
        raise ValueError(f"class id {bad} outside [0, {nc})")
    dev = next(model.parameters()).device
    if labels.device != dev:
        raise ValueError(f"labels are on {labels.device} but the model is on {dev}")
    return labels.long()


# ---- one step, eager or compiled ---------------------------------------------------------------------------


def sample_step(model, token, caches, cache_seqlens, u, params: SamplingParams):
    """One whole sampling step, the unit `generate(compile=True)` compiles (one CUDA graph on CUDA).

    token [B] at position cache_seqlens (an int32 tensor [B], advanced in place, or a host int; see
    `decode_one_token`); with CFG the batch is doubled with the null rows here. u [B, 1] is this step's uniform
    draw (None for greedy). Returns the guided logits [B, K] (fp32) and the next token [B].
    """
    rows = torch.cat([token, token]) if params.guided else token
    logits = guide(model.decode_one_token(rows, caches, cache_seqlens), params)
    nxt = sample_from_logits(logits, params, u=u)
    if isinstance(cache_seqlens, torch.Tensor):
        cache_seqlens += 1
    return logits, nxt


def build_decode_step(model, batch: int, dtype, device, compile: bool = False):
    """(step, caches, cache_seqlens) for one sampling call of `batch` rows (CFG rows included):
    `step(token, caches, cache_seqlens, u, params)` is `sample_step` bound to `model`.

    Eager: fresh caches and positions as host ints (cache_seqlens None here; the caller passes the position).
    compile=True: `torch.compile(sample_step, fullgraph=True, dynamic=False)`, with mode "reduce-overhead" (CUDA
    graphs) on CUDA; the caches and the int32 `cache_seqlens` tensor are kept on the model and reused by later
    calls with the same batch, dtype and device, and on CUDA marked as static addresses, so the captured graph is
    replayed instead of re-recorded. A replay overwrites the previous outputs, so on CUDA the step marks each call
    as a new step and returns copies. The caller sets cache_seqlens (e.g. `fill_(1)` after a prefill of one
    position); each step advances it.
    """
    if not compile:  # host-int positions read only what was written: the caches need no zeroing

        def step(token, caches, pos, u, params):
            return sample_step(model, token, caches, pos, u, params)

        return step, model.setup_caches(batch, dtype, device, zero=False), None
    key = (id(model), batch, dtype, device)  # id: a deepcopy of the model must not call this model's graph
    state = model.__dict__.get("_compiled_decode")
    if state is None or state[0] != key:
        caches = model.setup_caches(batch, dtype, device)
        seqlens = torch.zeros(batch, dtype=torch.int32, device=device)
        cuda = device.type == "cuda"
        if cuda:
            for t in [seqlens, *caches.buffers()]:
                torch._dynamo.mark_static_address(t)

        def bound(token, caches, pos, u, params):
            return sample_step(model, token, caches, pos, u, params)

        fn = torch.compile(bound, fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else None)
        if cuda:
            graph = fn

            def fn(*args):
                torch.compiler.cudagraph_mark_step_begin()
                return tuple(t.clone() for t in graph(*args))
        state = model.__dict__["_compiled_decode"] = (key, fn, caches, seqlens)
    _, fn, caches, seqlens = state
    return fn, caches, seqlens


# ---- the sampling loop -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One checked sampling call: the class rows `cls` [B] (or [2B]: labels, then the null class for CFG), the
    prefix [B, k] it continues, the number of tokens n it stops at, and the uniform draws u [N, B, 1] (None when
    greedy)."""

    model: object
    cls: torch.Tensor
    prefix: torch.Tensor
    n: int
    params: SamplingParams
    u: torch.Tensor | None
    kv_cache: bool
    compile: bool


def _check_call(model, params, num_tokens, kv_cache, compile) -> tuple[SamplingParams, int]:
    """(params, n) after the checks that do not depend on the labels or the prefix; ValueError naming the argument."""
    c = model.config
    if params is None:
        params = SamplingParams()
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
    if compile and not kv_cache:
        raise ValueError("compile=True compiles the KV-cached decode step; it needs kv_cache=True")
    if params.guided and c.class_dropout <= 0:
        raise ValueError(f"cfg_scale={params.cfg_scale} needs a model trained with a null class (class_dropout > 0)")
    n = c.num_tokens if num_tokens is None else num_tokens
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= c.num_tokens:
        raise ValueError(f"num_tokens must be an integer in [1, {c.num_tokens}], got {num_tokens!r}")
    return params, int(n)


def _prepare(model, labels, params, num_tokens, prefix, kv_cache, compile, generator) -> _Run:
    """Check every argument (ValueError naming it) and draw the randomness, before any model call."""
    c = model.config
    labels = check_labels(model, labels)
    params, n = _check_call(model, params, num_tokens, kv_cache, compile)
    N, (B,), device = c.num_tokens, labels.shape, labels.device
    if prefix is None:
        prefix = torch.empty(B, 0, dtype=torch.long, device=device)
    if not isinstance(prefix, torch.Tensor) or prefix.dtype not in (torch.int64, torch.int32) or prefix.dim() != 2:
        raise ValueError(f"prefix must be an integer tensor [B, k] of codes, got {getattr(prefix, 'dtype', prefix)} "
                         f"{tuple(getattr(prefix, 'shape', ()))}")
    if prefix.shape[0] != B or prefix.shape[1] > n:
        raise ValueError(f"prefix must be [B={B}, k] with k <= num_tokens={n}, got {tuple(prefix.shape)}")
    if prefix.device != device:
        raise ValueError(f"prefix is on {prefix.device} but the labels and the model are on {device}")
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= c.codebook_size):
        raise ValueError(f"prefix codes must lie in [0, {c.codebook_size}), got [{prefix.min().item()}, "
                         f"{prefix.max().item()}]")
    cls = torch.cat([labels, torch.full_like(labels, model.null_class)]) if params.guided else labels
    u = None
    if params.temperature != 0:  # all N draws, whatever n and the prefix: step t always sees draw t
        u = torch.rand(N, B, 1, generator=generator,
                       device=device if generator is None else generator.device).to(device)  # fmt: skip
    return _Run(model, cls, prefix.long(), n, params, u, kv_cache, compile)


def _steps(run: _Run) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(t, guided logits [B, K] for token t + 1, token t + 1 sampled from them) for t = k..n-1, k the prefix length.

    KV cache: one prefill of the first position and the prefix, then one decode step per token. Without: the whole
    sequence so far recomputed at every step (the baseline). Step t draws u[t] in both, so the two give the same
    codes, and continuing a run's own first k codes with the same seed gives that run's codes.
    """
    model, params, u, n = run.model, run.params, run.u, run.n
    k = run.prefix.shape[1]
    if k == n:
        return
    rows = lambda x: torch.cat([x, x]) if params.guided else x  # noqa: E731  (the null rows see the same codes)
    if run.kv_cache:
        dtype = next(model.parameters()).dtype
        step, caches, seqlens = build_decode_step(model, run.cls.shape[0], dtype, run.cls.device, run.compile)
        logits = guide(model.prefill(run.cls, caches, rows(run.prefix) if k else None), params)
        nxt = sample_from_logits(logits, params, u=None if u is None else u[k])
        if seqlens is not None:
            seqlens.fill_(k + 1)
        for t in range(k + 1, n):
            yield t - 1, logits, nxt
            pos = t if seqlens is None else seqlens  # where nxt goes: s_t sits at position t
            logits, nxt = step(nxt, caches, pos, None if u is None else u[t], params)
        yield n - 1, logits, nxt
    else:
        codes = run.prefix
        for t in range(k, n):
            logits = guide(model(run.cls, rows(codes))[:, -1], params)
            nxt = sample_from_logits(logits, params, u=None if u is None else u[t])
            yield t, logits, nxt
            codes = torch.cat([codes, nxt[:, None]], 1)


def _raise_if_not_finite(run: _Run, flags: list[torch.Tensor]) -> None:
    """One finiteness flag per step, read back once (no host sync inside the loop): NaN or inf logits would
    otherwise sample the last code everywhere and pass for a result."""
    if not flags:
        return
    bad = torch.stack(flags)
    if bad.any():
        t = run.prefix.shape[1] + int(bad.nonzero()[0])
        raise NonFiniteError(f"non-finite logits (NaN or inf) at sampling step {t} of {run.n} (token s_{t + 1}) with "
                           f"cfg_scale={run.params.cfg_scale}, temperature={run.params.temperature}: the weights or "
                           "the guidance overflow")


@torch.no_grad()
def generate(model, labels, params: SamplingParams | None = None, *, num_tokens: int | None = None, prefix=None,
             kv_cache: bool = True, compile: bool = False, generator: torch.Generator | None = None,
             return_logits: bool = False):
    """Sample codes [B, n] for class ids `labels` [B] (n = num_tokens, default all N).

    params: a `SamplingParams` (default: no guidance, temperature 1). num_tokens=k samples only the first k
    tokens (anytime sampling: in about k/N of the time; `decode_prefix` turns them into images); the first k codes
    equal those of a full run with the same seed. prefix: codes [B, k] to continue (a real image's first tokens:
    variations); they are returned as given, and with the KV cache go through the model in one prefill pass.
    kv_cache=False recomputes the whole prefix each step (the baseline; same codes for the same seed).
    compile=True (needs kv_cache) runs each whole decoding step (null rows, decode, CFG mixing, sampling, position
    increment: `sample_step`) through torch.compile, as one CUDA graph on CUDA; the first call per batch size,
    dtype and sampling setting pays the compilation (seconds to a minute), later calls reuse it; prefill stays
    eager. With return_logits, also returns the guided fp32 logits [B, n - k, K] of the sampled steps.
    The N uniform draws of a sampled run are taken from `generator` up front, in step order (on CPU the same
    numbers as one draw per step), so the compiled and eager steps see the same randomness.
    Raises ValueError for bad arguments (before any model call) and RuntimeError naming the first step whose
    logits are not finite (NaN weights, a guidance that overflows) instead of returning garbage codes.
    """
    run = _prepare(model, labels, params, num_tokens, prefix, kv_cache, compile, generator)
    logits, toks = [], []
    for _, lg, nxt in _steps(run):
        logits.append(lg)
        toks.append(nxt)
    _raise_if_not_finite(run, [~x.isfinite().all() for x in logits])
    codes = torch.cat([run.prefix, torch.stack(toks, 1)], 1) if toks else run.prefix.clone()
    if return_logits:
        K = model.config.codebook_size
        return codes, torch.stack(logits, 1) if logits else codes.new_empty(codes.shape[0], 0, K, dtype=torch.float)
    return codes


@dataclass(frozen=True)
class StreamStep:
    """What `stream` yields after each sampled token: `index` tokens are decided (prefix included), of `total`;
    `codes` [B, index] on the model's device; `images` [B, C, S, S] decoded from them when the stream was given a
    tokenizer, else None."""

    index: int
    total: int
    codes: torch.Tensor
    images: torch.Tensor | None = None

    @property
    def last(self) -> bool:
        return self.index == self.total


def stream(model, labels, params: SamplingParams | None = None, *, tokenizer=None, num_tokens: int | None = None,
           prefix=None, kv_cache: bool = True, compile: bool = False,
           generator: torch.Generator | None = None) -> Iterator[StreamStep]:
    """`generate`, yielding a `StreamStep` after every sampled token (the same loop: the last step's codes are
    `generate`'s for the same arguments and seed). Arguments are checked and the randomness drawn here, at the
    call, before the first step.

    With `tokenizer`, each step also carries the preview: every row decoded from its codes so far, in one batched
    decoder pass (the streaming cost: at most one decoder pass per token). Nothing is read back to the host
    unless the caller reads a tensor; the finiteness of the logits is checked once, after the last step (a
    RuntimeError then, as `generate` raises). One `next()` per token suits a server that pushes frames.
    """
    run = _prepare(model, labels, params, num_tokens, prefix, kv_cache, compile, generator)
    if tokenizer is not None and tokenizer.config.num_tokens != model.config.num_tokens:
        raise ValueError(f"tokenizer has N={tokenizer.config.num_tokens} tokens, the generator "
                         f"{model.config.num_tokens}")
    return _stream(run, tokenizer)


@torch.no_grad()  # on a generator: gradients are off while a step runs, the caller's own mode between steps
def _stream(run: _Run, tokenizer) -> Iterator[StreamStep]:
    # Not `with torch.no_grad():` around the loop: a yield inside it would hand the caller a thread with gradients
    # off, and leave them off for good if the caller stops iterating early.
    codes, flags = run.prefix, []
    for t, logits, nxt in _steps(run):
        flags.append(~logits.isfinite().all())
        codes = torch.cat([codes, nxt[:, None]], 1)
        images = None if tokenizer is None else decode_prefix(tokenizer, codes)
        yield StreamStep(t + 1, run.n, codes, images)
    _raise_if_not_finite(run, flags)


@torch.no_grad()
def decode_prefix(tokenizer, codes) -> torch.Tensor:
    """Images [B, C, S, S] decoded from codes [B, k], 1 <= k <= N: the first k tokens, the rest absent (the
    tokenizer's learned "absent" slots). For k = N this is `tokenizer.decode(codes)`. The codes are not
    range-checked here (that would read them back to the host): pass codes the sampler made or `encode` gave."""
    N = tokenizer.config.num_tokens
    if codes.dim() != 2 or not 1 <= codes.shape[1] <= N or codes.shape[0] == 0:
        raise ValueError(f"codes must be [B, k] with 1 <= k <= {N}, got {tuple(codes.shape)}")
    B, k = codes.shape
    full = codes.long() if k == N else torch.cat([codes.long(), codes.new_zeros(B, N - k, dtype=torch.long)], 1)
    n = torch.full((B,), k, dtype=torch.long, device=codes.device)
    return tokenizer.decode_vectors(tokenizer.quantizer.codes_to_vectors(full), n)


@torch.no_grad()
def sample_variations(model, codes, labels, *, keep: int, num: int, params: SamplingParams | None = None,
                      seed: int = 0, kv_cache: bool = True) -> torch.Tensor:
    """Codes [M, num, N]: for each row i of `codes` [M, >= keep] (e.g. `tokenizer.encode` of real images) its first
    `keep` codes, then `num` independent continuations sampled for class `labels[i]`. A coarse-to-fine sequence
    keeps the image's silhouette at small `keep` and re-draws its detail; `keep` = N returns the codes `num` times.
    One batched `generate` call of M * num rows, drawing from a generator seeded with `seed`."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or not 0 <= keep <= model.config.num_tokens:
        raise ValueError(f"keep must be an integer in [0, {model.config.num_tokens}], got {keep!r}")
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] < keep:
        raise ValueError(f"codes must be a tensor [M, k] with k >= keep={keep}, got "
                         f"{tuple(getattr(codes, 'shape', ()))}")
    labels = check_labels(model, labels)
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {codes.shape[0]} rows of codes")
    g = torch.Generator(device=labels.device).manual_seed(seed)
    out = generate(model, labels.repeat_interleave(num), params, prefix=codes[:, :keep].repeat_interleave(num, 0),
                   kv_cache=kv_cache, generator=g)
    return out.view(codes.shape[0], num, -1)


# ---- the batch loop ----------------------------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index` of a run seeded with `seed`."""
    return seed * 100003 + index


def my_batches(num: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, slice]]:
    """(batch index, slice of the labels) of the batches rank `rank` of `world` samples."""
    return [(c, slice(s, s + batch_size)) for c, s in enumerate(range(0, num, batch_size)) if c % world == rank]


@dataclass
class Samples:
    """What a run sampled, per batch index: codes [b, n] and decoded images [b, C, S, S] (CPU), plus the
    sampled tokens, the seconds spent in the generator (not decoding), those spent decoding, and those of a
    compile warm-up set by the caller; `merge` joins the ranks' parts."""

    codes: dict[int, torch.Tensor] = field(default_factory=dict)
    images: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    compile_seconds: float = 0.0

    def all_codes(self) -> torch.Tensor:
        return torch.cat([self.codes[c] for c in sorted(self.codes)])

    def all_images(self) -> torch.Tensor:
        return torch.cat([self.images[c] for c in sorted(self.images)])

    @staticmethod
    def merge(parts: list[Samples]) -> Samples:
        """One run's samples from every rank's part (seconds: the slowest rank's)."""
        out = Samples(**{f: max(getattr(p, f) for p in parts) for f in ("seconds", "decode_seconds",
                                                                        "compile_seconds")})
        for p in parts:
            out.codes.update(p.codes)
            out.images.update(p.images)
            out.tokens += p.tokens
        return out


@torch.no_grad()
def sample_batches(tokenizer, generator, labels: torch.Tensor, *, batch_size: int, seed: int = 0,
                   params: SamplingParams | None = None, num_tokens: int | None = None, kv_cache: bool = True,
                   compile: bool = False, decode: bool = True, rank: int = 0, world: int = 1) -> Samples:
    """Sample codes (and, with `decode`, images through `tokenizer`) for class ids `labels` [M], batch by batch:
    batch c holds labels[c * batch_size:(c + 1) * batch_size], draws from seed `batch_seed(seed, c)` and is
    sampled here only when c % world == rank. num_tokens=k: the first k tokens only, decoded with the rest
    absent (`decode_prefix`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params, _ = _check_call(generator, params, num_tokens, kv_cache, compile)  # all checked before batch 0
    device = next(generator.parameters()).device
    check_labels(generator, labels.to(device))
    out = Samples()
    batches = my_batches(len(labels), batch_size, rank, world)
    for c, rows in bar(batches, desc="sample", unit="batch"):
        lab = labels[rows].to(device)
        g = torch.Generator(device=device).manual_seed(batch_seed(seed, c))
        _sync(device)
        t = time.perf_counter()
        codes = generate(generator, lab, params, num_tokens=num_tokens, kv_cache=kv_cache, generator=g,
                         compile=compile)
        _sync(device)
        out.seconds += time.perf_counter() - t
        out.tokens += codes.numel()
        out.codes[c] = codes.cpu()
        if decode:
            t = time.perf_counter()
            out.images[c] = decode_prefix(tokenizer, codes).cpu()
            out.decode_seconds += time.perf_counter() - t
    return out


def sample_codes(generator, labels: torch.Tensor, *, batch_size: int, seed: int = 0,
                 params: SamplingParams | None = None) -> torch.Tensor:
    """Codes [M, N] for class ids `labels`, sampled in one process exactly as `python -m spectralar.generate`
    samples them (KV cache, eager)."""
    return sample_batches(None, generator, labels, batch_size=batch_size, seed=seed, params=params,
                          decode=False).all_codes()


def compile_warm_up(generator, labels: torch.Tensor, *, batch_size: int, params: SamplingParams, rank: int = 0,
                    world: int = 1) -> float:
    """Compile the decode step for every batch size `sample_batches` will use on this rank, with the sampling
    settings it will use (each is one more compiled entry); returns the seconds spent."""
    device = next(generator.parameters()).device
    t = time.perf_counter()
    for n in sorted({len(labels[rows]) for _, rows in my_batches(len(labels), batch_size, rank, world)}):
        generate(generator, torch.zeros(n, dtype=torch.long, device=device), params, compile=True)
    _sync(device)
    return time.perf_counter() - t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- several processes (torchrun; spectralar.distributed joins the group) ----------------------------------


def gather_samples(part: Samples, rank: int, world: int) -> Samples | None:
    """Every rank's part joined on rank 0 (None on the other ranks); the part itself in one process."""
    if world == 1:
        return part
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return Samples.merge(parts) if rank == 0 else None

