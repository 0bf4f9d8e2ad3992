"""The networks and their configs: nn.Modules that hold parameters and call the kernels. Models import nothing
from training, evaluation or the command lines."""

from .classifier import SmallCNN
from .config import (
    GENERATOR_PRESETS,
    TOKENIZER_PRESETS,
    ClassifierConfig,
    GeneratorConfig,
    TokenizerConfig,
)
from .generator import SpectralGPT
from .layers import KVCache
from .tokenizer import SpectralTokenizer, VectorQuantizer

__all__ = [
    "GENERATOR_PRESETS",
    "TOKENIZER_PRESETS",
    "ClassifierConfig",
    "GeneratorConfig",
    "KVCache",
    "SmallCNN",
    "SpectralGPT",
    "SpectralTokenizer",
    "TokenizerConfig",
    "VectorQuantizer",
]
