"""spectralar: SpectralAR (arXiv 2506.10962) — autoregressive image generation over causal spectral tokens."""

from spectralar_kernels import __version__

from .models.config import GENERATOR_PRESETS, TOKENIZER_PRESETS, GeneratorConfig, TokenizerConfig
from .models.generator import SpectralGPT
from .models.layers import KVCache
from .models.tokenizer import SpectralTokenizer, VectorQuantizer
from .pretrained import load_model, load_pretrained

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
