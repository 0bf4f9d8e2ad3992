"""Class-conditional GPT over spectral tokens, with a static KV cache for sampling.

Sequence: [first token, s_1 .. s_N]. Position t predicts s_{t+1}. The class enters in one of two ways
(`GeneratorConfig.cond`): "token", the first token is the class embedding (GPT-2 blocks); "adaln", the
first token is a learned start token and every block's LayerNorms, and the one before the head, are
shifted, scaled and gated by maps of the class embedding (VAR's d16). The class embedding has one extra
row, the null class (index `num_classes`), used for classifier-free guidance: class dropout during
training, and at sampling time the batch is doubled with the null class and the logits are mixed as
uncond + scale * (cond - uncond).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling import NonFiniteError, check_sampling_args, sample_from_logits
from .config import GeneratorConfig
from .layers import AdaLNBlock, Block, KVCache, init_weights

CONDITIONING = ("token", "adaln")


class SamplingCache(nn.Module):
    """What one sampling call keeps between steps: a `KVCache` per block (`layers`) and, for cond="adaln",
    the class modulation `mod` [B, (6 * depth + 2) * width] that `prefill` writes (fixed over the sequence,
    so the decode steps skip the depth + 1 modulation matmuls); `mod` is None for cond="token"."""

    def __init__(self, layers: list[KVCache], mod: torch.Tensor | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("mod", mod, persistent=False)


class SpectralGPT(nn.Module):
    """GPT-2-like decoder-only transformer (learned positions, pre-LN) over spectral token codes.

    Parameters with width C, depth L, MLP ratio r, K codes, M classes, N tokens (docs/design-notes.md,
    "Generator conditioning"): embeddings K*C + (M+1)*C + N*C and head K*C, plus
    - cond="token": L * ((4 + 2r) C^2 + (9 + r) C) + 2C (final LayerNorm);
    - cond="adaln": L * ((10 + 2r) C^2 + (11 + r) C) (no LayerNorm affine, + 6C^2 + 6C per block for the
      modulation) + C (start token) + 2C^2 + 2C (the head's adaptive LayerNorm).
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        if c.cond not in CONDITIONING:
            raise ValueError(f"unknown generator conditioning cond={c.cond!r}; choose from {list(CONDITIONING)}")
        self.tok_emb = nn.Embedding(c.codebook_size, c.width)
        self.cls_emb = nn.Embedding(c.num_classes + 1, c.width)  # + null class
        self.pos_emb = nn.Parameter(torch.zeros(1, c.num_tokens, c.width))
        self.drop = nn.Dropout(c.dropout)
        adaln = c.cond == "adaln"
        block = AdaLNBlock if adaln else Block
        self.blocks = nn.ModuleList(block(c.width, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.depth))
        self.ln_f = nn.LayerNorm(c.width, elementwise_affine=not adaln)
        if adaln:
            self.start = nn.Parameter(torch.zeros(1, 1, c.width))  # the first position's input
            self.head_ada = nn.Linear(c.width, 2 * c.width)  # shift and scale of ln_f
        self.head = nn.Linear(c.width, c.codebook_size, bias=False)
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)
        if adaln:
            nn.init.normal_(self.start, std=0.02)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def modulation(self, labels):
        """cond="adaln": the class's shifts, scales and gates for every block, then the shift and scale of
        the final LayerNorm, [B, (6 * depth + 2) * width]. None for cond="token"."""
        if self.config.cond != "adaln":
            return None
        e = self.cls_emb(labels)
        return torch.cat([blk.modulation(e) for blk in self.blocks] + [self.head_ada(F.silu(e))], 1)

    def _embed(self, labels, codes, start: int):
        """Embeddings of positions start.. : position 0 is the class token (cond="token") or the learned
        start token (cond="adaln"), position t>0 is s_t."""
        parts = []
        if start == 0:
            if self.config.cond == "token":
                parts.append(self.cls_emb(labels)[:, None])
            else:
                parts.append(self.start.expand(labels.shape[0], -1, -1))
        if codes is not None and codes.shape[1] > 0:
            parts.append(self.tok_emb(codes))
        x = torch.cat(parts, 1)
        return self.drop(x + self.pos_emb[:, start:start + x.shape[1]])

    def _blocks(self, x, mod, caches=None, **attn_kw):
        """x [B, T, C] through every block, modulated by `mod` (adaln) and against `caches` when given."""
        mods = [None] * len(self.blocks) if mod is None else mod.split(6 * self.config.width, 1)
        for i, blk in enumerate(self.blocks):
            kw = attn_kw if caches is None else {"cache": caches.layers[i], **attn_kw}
            x = blk(x, **kw) if mod is None else blk(x, mods[i], **kw)
        return x

    def _logits(self, x, mod):
        """Final LayerNorm and head on x [B, T, C] or [B, C]; with adaln the norm is shifted and scaled by
        the last 2 * width entries of `mod`."""
        if mod is None:
            return self.head(self.ln_f(x))
        shift, scale = mod[:, -2 * self.config.width:].chunk(2, -1)  # [B, C] each
        if x.dim() == 3:
            shift, scale = shift[:, None], scale[:, None]
        return self.head(self.ln_f(x) * (1 + scale) + shift)

    def forward(self, labels, codes, targets=None):
        """labels [B] (null class allowed), codes [B, T] with T <= N-1 (teacher forcing input s_1..s_T).

        Returns logits [B, T+1, K] for s_1..s_{T+1}, and the mean cross-entropy when targets [B, T+1].
        """
        mod = self.modulation(labels)
        x = self._blocks(self._embed(labels, codes, 0), mod, causal=True)
        logits = self._logits(x, mod)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def loss(self, labels, codes):
        """Training loss on full sequences codes [B, N], with class dropout for CFG."""
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self(labels, codes[:, :-1], targets=codes)[1]

    # ---- sampling -------------------------------------------------------------------------------

    def setup_caches(self, batch: int, dtype, device, zero: bool = True) -> SamplingCache:
        c = self.config
        layers = [KVCache(batch, c.num_tokens, c.heads, c.width // c.heads, dtype, device, zero) for _ in self.blocks]
        mod = None
        if c.cond == "adaln":
            mod = torch.zeros(batch, (6 * c.depth + 2) * c.width, dtype=dtype, device=device)
        return SamplingCache(layers, mod)

    def prefill(self, labels, caches, cache_seqlens=0):
        """Run the first token through the model, filling position 0 of every cache (and, for adaln, the
        class modulation the decode steps reuse); logits for s_1."""
        mod = self.modulation(labels)
        if mod is not None:
            caches.mod.copy_(mod)
        x = self._blocks(self._embed(labels, None, 0), mod, caches, cache_seqlens=cache_seqlens)
        return self._logits(x[:, -1], mod)

    def decode_one_token(self, token, caches, cache_seqlens):
        """Feed s_p (token [B]) at position p = cache_seqlens against the cache; logits for s_{p+1}.

        `cache_seqlens` is an int32 tensor `[B]` (what a compiled step takes: one graph serves every
        step, and nothing is read back to the host) or a host int shared by every row (the eager
        sampler: the cache append and the attention then work by slicing).
        """
        x = self.tok_emb(token) + self.pos_emb[0, cache_seqlens]  # [B, C] (pos_emb row [C] for an int)
        x = (self.drop(x) if self.training else x)[:, None]
        x = self._blocks(x, caches.mod, caches, cache_seqlens=cache_seqlens)
        return self._logits(x[:, -1], caches.mod)

    @staticmethod
    def _guide(logits, cfg_scale: float):
        """fp32 logits; with CFG (rows [cond; uncond]) mixed as uncond + cfg_scale * (cond - uncond)."""
        logits = logits.float()
        if cfg_scale != 1.0:
            cond, uncond = logits.chunk(2)
            logits = uncond + cfg_scale * (cond - uncond)
        return logits

    def sample_step(self, token, caches, cache_seqlens, u, cfg_scale, temperature, top_k, top_p):
        """One whole sampling step, the unit `generate(compile=True)` compiles (one CUDA graph on CUDA).

        token [B] at position cache_seqlens (see `decode_one_token`); with CFG the batch is doubled with
        the null rows here. u [B, 1] is this step's uniform draw (None for greedy). A tensor cache_seqlens
        is advanced in place. Returns the guided logits [B, K] (fp32) and the next token [B].
        """
        rows = torch.cat([token, token]) if cfg_scale != 1.0 else token
        logits = self._guide(self.decode_one_token(rows, caches, cache_seqlens), cfg_scale)
        nxt = sample_from_logits(logits, temperature, top_k, top_p, u=u)
        if isinstance(cache_seqlens, torch.Tensor):
            cache_seqlens += 1
        return logits, nxt

    def _decode_state(self, batch: int, dtype, device, compile: bool):
        """(step function, caches, positions) for one sampling call.

        Eager: `sample_step`, fresh caches, and positions as host ints (None here). compile=True:
        `torch.compile(sample_step, fullgraph=True, dynamic=False)`, with mode "reduce-overhead" (CUDA
        graphs) on CUDA; the caches and the int32 `cache_seqlens` tensor are kept on the model and reused by
        later calls with the same batch, dtype and device, and on CUDA marked as static addresses, so the
        captured graph is replayed instead of re-recorded. A replay overwrites the previous outputs, so on
        CUDA the step marks each call as a new step and returns copies.
        """
        if not compile:  # host-int positions read only what was written: the caches need no zeroing
            return self.sample_step, self.setup_caches(batch, dtype, device, zero=False), None
        key = (id(self), batch, dtype, device)  # id: a deepcopy of the model must not call this model's graph
        state = self.__dict__.get("_compiled_decode")
        if state is None or state[0] != key:
            caches = self.setup_caches(batch, dtype, device)
            seqlens = torch.zeros(batch, dtype=torch.int32, device=device)
            cuda = device.type == "cuda"
            if cuda:
                for t in [seqlens, *caches.buffers()]:
                    torch._dynamo.mark_static_address(t)
            fn = torch.compile(self.sample_step, fullgraph=True, dynamic=False,
                               mode="reduce-overhead" if cuda else None)
            if cuda:
                graph = fn

                def fn(*args):
                    torch.compiler.cudagraph_mark_step_begin()
                    return tuple(t.clone() for t in graph(*args))
            state = self.__dict__["_compiled_decode"] = (key, fn, caches, seqlens)
        _, fn, caches, seqlens = state
        return fn, caches, seqlens

    @torch.no_grad()
    def generate(self, labels, cfg_scale=1.0, temperature=1.0, top_k=None, top_p=None, kv_cache=True,
                 generator: torch.Generator | None = None, return_logits=False, compile=False):
        """Sample codes [B, N] for class ids `labels` [B].

        cfg_scale: 1.0 = plain conditional sampling; > 1 doubles the batch with the null class and mixes
        logits uncond + cfg_scale * (cond - uncond). temperature 0 = greedy. top_k >= 1, 0 < top_p <= 1.
        kv_cache=False recomputes the whole prefix each step (the baseline). With return_logits, also
        returns the (guided) logits [B, N, K] used at each step.
        compile=True (needs kv_cache) runs each whole decoding step (null rows, decode, CFG mixing, sampling,
        position increment: `sample_step`) through torch.compile, as one CUDA graph on CUDA; the first call
        per batch size and dtype pays the compilation (seconds to a minute), later calls reuse it. Prefill
        stays eager. See docs/benchmarks.md for what it buys.
        The N uniform draws of a sampled run are taken from `generator` up front, in step order (on CPU the
        same numbers as one draw per step), so the compiled and eager steps see the same randomness.
        Raises NonFiniteError (a FloatingPointError and a RuntimeError) naming the first step whose logits are not
        finite (NaN weights, a guidance that overflows) instead of returning the garbage codes sampled from them.
        """
        c = self.config
        labels = self._check_labels(labels)
        check_sampling_args(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, kv_cache=kv_cache,
                            compile=compile)
        if cfg_scale != 1.0 and c.class_dropout <= 0:
            raise ValueError(f"cfg_scale={cfg_scale} needs a model trained with a null class (class_dropout > 0)")
        B, device = labels.shape[0], labels.device
        use_cfg = cfg_scale != 1.0
        cls = torch.cat([labels, torch.full_like(labels, self.null_class)]) if use_cfg else labels
        u = None
        if temperature != 0:
            u = torch.rand(c.num_tokens, B, 1, generator=generator,
                           device=device if generator is None else generator.device).to(device)  # fmt: skip
        sampling = (temperature, top_k, top_p)

        all_logits, toks = [], []
        if kv_cache:
            dtype = next(self.parameters()).dtype
            step, caches, seqlens = self._decode_state(cls.shape[0], dtype, device, compile)
            logits = self._guide(self.prefill(cls, caches, 0), cfg_scale)
            nxt = sample_from_logits(logits, *sampling, u=None if u is None else u[0])
            if seqlens is not None:
                seqlens.fill_(1)
            for t in range(1, c.num_tokens):
                all_logits.append(logits)
                toks.append(nxt)
                pos = t if seqlens is None else seqlens  # where nxt goes: s_t sits at position t
                logits, nxt = step(nxt, caches, pos, None if u is None else u[t], cfg_scale, *sampling)
            all_logits.append(logits)
            toks.append(nxt)
            codes = torch.stack(toks, 1)
        else:
            codes = torch.empty(B, 0, dtype=torch.long, device=device)
            for t in range(c.num_tokens):
                logits = self._guide(self(cls, codes.repeat(2, 1) if use_cfg else codes)[:, -1], cfg_scale)
                nxt = sample_from_logits(logits, *sampling, u=None if u is None else u[t])
                all_logits.append(logits)
                codes = torch.cat([codes, nxt[:, None]], 1)
        # one finiteness flag per step, read back once here (no host sync inside the loop): NaN or inf logits
        # would otherwise sample the last code everywhere and pass for a result
        bad = torch.stack([~x.isfinite().all() for x in all_logits])
        if bad.any():
            t = int(bad.nonzero()[0])
            raise NonFiniteError(f"non-finite logits (NaN or inf) at sampling step {t} of {c.num_tokens} (token "
                               f"s_{t + 1}) with cfg_scale={cfg_scale}, temperature={temperature}: the weights or the "
                               "guidance overflow")
        if return_logits:
            return codes, torch.stack(all_logits, 1)
        return codes

    def _check_labels(self, labels):
        """labels as an int64 tensor of class ids on the model's device, or ValueError."""
        c = self.config
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if labels.dtype not in (torch.int64, torch.int32) or labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= c.num_classes:
            bad = labels[(labels < 0) | (labels >= c.num_classes)][0].item()
            raise ValueError(f"class id {bad} outside [0, {c.num_classes})")
        dev = next(self.parameters()).device
        if labels.device != dev:
            raise ValueError(f"labels are on {labels.device} but the model is on {dev}")
        return labels.long()
