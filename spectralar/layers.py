"""Transformer building blocks shared by the tokenizer and the generator.

Attention goes through `spectralar_kernels.attention` (layout [B, T, H, D]) so every model picks
up the fused kernels and the flash-attn / SDPA fallbacks without code of its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spectralar_kernels import attention, attention_with_kvcache


class KVCache(nn.Module):
    """A static per-layer cache [B, T_max, H, D], allocated once per sampling call (gpt-fast style).

    zero=False leaves the memory uninitialised: only for callers that pass host-int positions (which read
    just the written prefix) or run the Triton kernel (masked loads); the tensor-position reference masks
    unwritten entries but still multiplies them by zero, and garbage may hold NaN.
    """

    def __init__(self, batch: int, max_len: int, heads: int, head_dim: int, dtype, device, zero: bool = True):
        super().__init__()
        shape = (batch, max_len, heads, head_dim)
        alloc = torch.zeros if zero else torch.empty
        self.register_buffer("k", alloc(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", alloc(shape, dtype=dtype, device=device), persistent=False)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, causal=False, prefix_len=0, cache: KVCache | None = None, cache_seqlens=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)  # [B, T, H, D] each
        if cache is None:
            y = attention(q, k, v, causal=causal, prefix_len=prefix_len)
        else:
            y = attention_with_kvcache(q, cache.k, cache.v, cache_seqlens, k=k, v=v)
        y = self.proj(y.reshape(B, T, C))
        return self.dropout(y) if self.training else y  # eval: skip the identity call (the sampler's hot loop)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width),
                                 nn.Dropout(dropout))

    def forward(self, x, **attn_kw):
        x = x + self.attn(self.ln1(x), **attn_kw)
        return x + self.mlp(self.ln2(x))


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init: N(0, 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


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
