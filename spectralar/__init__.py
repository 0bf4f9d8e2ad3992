"""spectralar: SpectralAR (arXiv 2506.10962) — autoregressive image generation over causal spectral tokens."""

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # `python -m spectralar.X` is starting (runpy sets argv[0] to the file later)
    from ._cli_start import hold_interrupts, quiet_interrupts

    quiet_interrupts()
    _held = hold_interrupts()  # a Ctrl-C during the imports below arrives after them, in one piece
else:
    _held = None

from spectralar_kernels import __version__

from .models.config import GENERATOR_PRESETS, TOKENIZER_PRESETS, GeneratorConfig, TokenizerConfig
from .models.generator import SpectralGPT
from .models.layers import KVCache
from .models.tokenizer import SpectralTokenizer, VectorQuantizer
from .pretrained import load_model, load_pretrained

if _held is not None:
    _held.release()

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
