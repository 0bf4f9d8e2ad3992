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

from .config import GeneratorConfig
from .layers import AdaLNBlock, Block, KVCache, init_weights

__all__ = ["CONDITIONING", "SamplingCache", "SpectralGPT"]

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

    # ---- sampling (the loop itself lives in spectralar.sampling) --------------------------------------

    def setup_caches(self, batch: int, dtype, device, zero: bool = True) -> SamplingCache:
        c = self.config
        layers = [KVCache(batch, c.num_tokens, c.heads, c.width // c.heads, dtype, device, zero) for _ in self.blocks]
        mod = None
        if c.cond == "adaln":
            mod = torch.zeros(batch, (6 * c.depth + 2) * c.width, dtype=dtype, device=device)
        return SamplingCache(layers, mod)

    def prefill(self, labels, caches, prefix=None):
        """Run the first position and the given codes s_1..s_k (`prefix` [B, k], optional) through the model in one
        pass, filling positions 0..k of every cache (and, for adaln, the class modulation the decode steps reuse);
        logits [B, K] for s_{k+1}."""
        mod = self.modulation(labels)
        if mod is not None:
            caches.mod.copy_(mod)
        x = self._blocks(self._embed(labels, prefix, 0), mod, caches, cache_seqlens=0)
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

    def generate(self, labels, cfg_scale=1.0, temperature=1.0, top_k=None, top_p=None, kv_cache=True,
                 generator: torch.Generator | None = None, return_logits=False, compile=False, num_tokens=None,
                 prefix=None):
        """Sample codes [B, num_tokens] for class ids `labels` [B]: `spectralar.sampling.generate` with
        `SamplingParams(cfg_scale, temperature, top_k, top_p)`; see there for every argument."""
        from ..sampling import SamplingParams, generate  # the sampler sits above the models (the one way up)

        return generate(self, labels, SamplingParams(cfg_scale, temperature, top_k, top_p), num_tokens=num_tokens,
                        prefix=prefix, kv_cache=kv_cache, compile=compile, generator=generator,
                        return_logits=return_logits)
