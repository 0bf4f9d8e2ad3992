"""The networks and their configs: nn.Modules that hold parameters and call the kernels. Models import nothing
from training, evaluation or the command lines."""

from .classifier import SmallCNN
from .config import (
    GENERATOR_PRESETS,
    TOKEN_KINDS,
    TOKENIZER_PRESETS,
    ClassifierConfig,
    GeneratorConfig,
    TokenizerConfig,
)
from .generator import SpectralGPT
from .kinds import TOKENIZERS, QueryTokenizer, build_tokenizer
from .layers import KVCache
from .raster import RasterTokenizer
from .tokenizer import SpectralTokenizer, Tokenizer, VectorQuantizer

__all__ = [
    "GENERATOR_PRESETS",
    "TOKENIZERS",
    "TOKENIZER_PRESETS",
    "TOKEN_KINDS",
    "ClassifierConfig",
    "GeneratorConfig",
    "KVCache",
    "QueryTokenizer",
    "RasterTokenizer",
    "SmallCNN",
    "SpectralGPT",
    "SpectralTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "VectorQuantizer",
    "build_tokenizer",
]
