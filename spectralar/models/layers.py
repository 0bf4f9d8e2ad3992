"""Transformer building blocks shared by the tokenizer and the generator.

Attention goes through `spectralar_kernels.attention` (layout [B, T, H, D]) so every model picks
up the fused kernels and the flash-attn / SDPA fallbacks without code of its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spectralar_kernels import attention, attention_with_kvcache

__all__ = ["AdaLNBlock", "Block", "KVCache", "SelfAttention", "init_weights"]


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
            # T > 1: a prefill of several positions, causal among themselves (a decode step's one query sees
            # the whole cache either way, so it skips the mask)
            y = attention_with_kvcache(q, cache.k, cache.v, cache_seqlens, k=k, v=v, causal=T > 1)
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


class AdaLNBlock(nn.Module):
    """Pre-LN block whose norms are modulated by the class (VAR / DiT adaptive LayerNorm).

    The LayerNorms carry no affine of their own; `mod [B, 6 * width]` (from the class embedding, see
    `modulation`) gives shift and scale for each norm and a gate for each residual branch, in the order
    shift1, scale1, gate1 (attention), shift2, scale2, gate2 (MLP).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width),
                                 nn.Dropout(dropout))
        self.ada = nn.Linear(width, 6 * width)

    def modulation(self, cond):
        """cond [B, width] (the class embedding) -> [B, 6 * width]; fixed over a sequence, so samplers compute
        it once per call."""
        return self.ada(F.silu(cond))

    def forward(self, x, mod, **attn_kw):
        shift1, scale1, gate1, shift2, scale2, gate2 = mod[:, None].chunk(6, -1)  # [B, 1, C] each
        x = x + gate1 * self.attn(self.ln1(x) * (1 + scale1) + shift1, **attn_kw)
        return x + gate2 * self.mlp(self.ln2(x) * (1 + scale2) + shift2)


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init: N(0, 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

