"""Raster tokens (the VQGAN / LlamaGen scheme): one token per cell of a sqrt(N) x sqrt(N) grid over the image, in
raster order (left to right, top to bottom), for comparison with the spectral tokens on the same backbone.

The backbone is the spectral tokenizer's: a ViT over the P = (S / patch_size)^2 patches, the same widths, depths,
codebook and VQ. Each token cell holds g x g patches (g = sqrt(P / N); at 32x32 with patch 4: N = 16 tokens are
8x8-pixel cells of 2x2 patches, N = 64 tokens are the 4x4 patches themselves), so the encoder and decoder see the
image at the same resolution whatever N is, as LlamaGen's convolutional encoder sees pixels finer than its token
grid. Encoder: full attention over the patches -> each cell's g*g patch features, concatenated -> linear to the
code dim. Decoder: each code -> linear to g*g patch features at its cell -> full attention over the P positions ->
pixels. No nested targets: training decodes all N tokens and regresses the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TokenizerConfig
from .layers import Block, init_weights
from .tokenizer import Tokenizer, VectorQuantizer, patchify, unpatchify

__all__ = ["RasterTokenizer"]


class RasterTokenizer(Tokenizer):
    """One token per grid cell in raster order. Images are float [B, C, S, S] in [-1, 1]; codes int64 [B, N]."""

    kind = "raster"
    prefix_meaning = ("decoded from the first k cells in raster order with the other N - k tokens absent (zero "
                      "vectors): the decoder is trained on all N tokens only, so a prefix shows what it makes of "
                      "the missing cells, not a trained reconstruction")

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        c = config
        if c.windows:
            raise ValueError(f"windows apply to tokens='spectral' only, got windows={c.windows} for 'raster'")
        grid, side = c.image_size // c.patch_size, math.isqrt(c.num_tokens)
        if side * side != c.num_tokens or grid % side:
            raise ValueError(f"raster tokens need num_tokens a square whose side divides the {grid}x{grid} patch "
                             f"grid, got num_tokens={c.num_tokens}")
        self.side, self.group = side, grid // side
        P, W, pd, cell = c.num_patches, c.width, c.channels * c.patch_size**2, self.group**2 * c.width
        # encoder
        self.patch_in = nn.Linear(pd, W)
        self.enc_pos = nn.Parameter(torch.zeros(1, P, W))
        self.enc_blocks = nn.ModuleList(Block(W, c.heads, c.mlp_ratio) for _ in range(c.enc_depth))
        self.enc_ln = nn.LayerNorm(W)
        self.to_code = nn.Linear(cell, c.code_dim)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.commitment, c.restart_every, c.restart_buffer)
        # decoder
        self.from_code = nn.Linear(c.code_dim, cell)
        self.dec_pos = nn.Parameter(torch.zeros(1, P, W))
        self.dec_blocks = nn.ModuleList(Block(W, c.heads, c.mlp_ratio) for _ in range(c.dec_depth))
        self.dec_ln = nn.LayerNorm(W)
        self.to_pixels = nn.Linear(W, pd)
        init_weights(self)
        for p in (self.enc_pos, self.dec_pos):
            nn.init.normal_(p, std=0.02)

    def _to_cells(self, x):
        """Patch features [B, P, W] (patch raster order) -> [B, N, g*g*W], one row per token cell (cell raster
        order, each cell's patches in raster order)."""
        B, _, W = x.shape
        s, g = self.side, self.group
        x = x.reshape(B, s, g, s, g, W).permute(0, 1, 3, 2, 4, 5)  # [B, cell row, cell col, g, g, W]
        return x.reshape(B, s * s, g * g * W)

    def _from_cells(self, x):
        """The inverse of `_to_cells`: [B, N, g*g*W] -> [B, P, W]."""
        B = x.shape[0]
        s, g = self.side, self.group
        W = x.shape[-1] // (g * g)
        x = x.reshape(B, s, s, g, g, W).permute(0, 1, 3, 2, 4, 5)  # [B, cell row, g, cell col, g, W]
        return x.reshape(B, s * g * s * g, W)

    def encode_continuous(self, images):
        """Unquantised encoder output [B, N, code_dim], token j for grid cell j in raster order."""
        x = self.patch_in(patchify(images, self.config.patch_size)) + self.enc_pos
        for blk in self.enc_blocks:
            x = blk(x)
        return self.to_code(self._to_cells(self.enc_ln(x)))

    def decode_vectors(self, vectors, num_tokens):
        """vectors [B, N, code_dim], num_tokens [B] -> images [B, C, S, S] from tokens 1..num_tokens (the cells
        past it enter as zero vectors)."""
        c = self.config
        N = vectors.shape[1]
        present = torch.arange(N, device=vectors.device)[None, :] < num_tokens[:, None]  # [B, N]
        cells = self.from_code(vectors) * present[..., None].to(vectors.dtype)
        x = self._from_cells(cells) + self.dec_pos
        for blk in self.dec_blocks:
            x = blk(x)
        return unpatchify(self.to_pixels(self.dec_ln(x)), c.patch_size, c.channels, c.image_size)
