"""spectralar: SpectralAR (arXiv 2506.10962) — autoregressive image generation over causal spectral tokens."""

from spectralar_kernels import __version__

from .config import GENERATOR_PRESETS, TOKENIZER_PRESETS, GeneratorConfig, TokenizerConfig
from .generator import SpectralGPT
from .layers import KVCache
from .pretrained import load_model, load_pretrained
from .tokenizer import SpectralTokenizer, VectorQuantizer

__all__ = [
    "__version__",
    "GENERATOR_PRESETS",
    "TOKENIZER_PRESETS",
    "GeneratorConfig",
    "KVCache",
    "SpectralGPT",
    "SpectralTokenizer",
    "TokenizerConfig",
    "VectorQuantizer",
    "load_model",
    "load_pretrained",
]
