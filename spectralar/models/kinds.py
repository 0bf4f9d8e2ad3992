"""The tokenizer kinds behind `TokenizerConfig.tokens`, for comparing tokenizations on one backbone, one VQ, one
trainer and one generator (docs/results.md, "Tokenizer kinds"):

    spectral  the Nested Spectral Tokenizer (models/tokenizer.py): learned queries under the prefix-LM mask,
              prefix i trained to reconstruct the low-pass sub-image x_i
    raster    one token per cell of a patch grid in raster order, VQGAN / LlamaGen (models/raster.py)
    1d        TiTok-style learned 1-D queries under the same causal encoder mask, without nested targets: the
              decoder is trained to reconstruct the whole image from all N tokens (what the nested targets add)

`build_tokenizer(config)` makes the kind a config names; every checkpoint without the field is "spectral".
"""

from __future__ import annotations

from .config import TOKEN_KINDS, TokenizerConfig
from .raster import RasterTokenizer
from .tokenizer import SpectralTokenizer, Tokenizer

__all__ = ["TOKENIZERS", "QueryTokenizer", "build_tokenizer"]


class QueryTokenizer(SpectralTokenizer):
    """The "1d" kind: the spectral tokenizer's network (N learned queries, causal among themselves) trained to
    reconstruct the image from all N tokens, with no windows and no nested targets (TiTok's objective)."""

    kind = "1d"
    nested = False
    prefix_meaning = ("decoded from tokens 1..k with tokens k+1..N absent (zero vectors): without nested targets "
                      "the decoder is trained on all N tokens only, so only k = N is a trained reconstruction")
    # the shared defaults, not the spectral ones: every image decoded from all N tokens, regressing the image
    sample_prefix_lengths = Tokenizer.sample_prefix_lengths
    prefix_targets = Tokenizer.prefix_targets


TOKENIZERS: dict[str, type[Tokenizer]] = {"spectral": SpectralTokenizer, "raster": RasterTokenizer,
                                          "1d": QueryTokenizer}
assert tuple(TOKENIZERS) == TOKEN_KINDS


def build_tokenizer(config: TokenizerConfig) -> Tokenizer:
    """The tokenizer of the kind `config.tokens` names, freshly initialised."""
    if config.tokens not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind tokens={config.tokens!r}; choose from {list(TOKENIZERS)}")
    return TOKENIZERS[config.tokens](config)
