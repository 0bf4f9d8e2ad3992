"""A run folder as training writes it (tokenizer/ and generator/ checkpoints), with untrained micro models built
directly: what the evaluation and sampling tests need, without a training run."""

import dataclasses
from pathlib import Path

import torch

from spectralar.checkpoint import save_checkpoint
from spectralar.data import FMNIST_CLASSES
from spectralar.models.config import preset, to_dict
from spectralar.models.generator import SpectralGPT
from spectralar.models.tokenizer import SpectralTokenizer


def micro_run(root, seed=0, classes=FMNIST_CLASSES) -> Path:
    """ROOT with a micro tokenizer and a micro generator for `classes` (Fashion-MNIST's ten by default)."""
    root = Path(root)
    torch.manual_seed(seed)
    tok = SpectralTokenizer(preset("tokenizer", "micro"))
    t = tok.config
    gen = SpectralGPT(dataclasses.replace(preset("generator", "micro"), num_tokens=t.num_tokens,
                                          codebook_size=t.codebook_size, num_classes=len(classes)))
    for kind, model in (("tokenizer", tok), ("generator", gen)):
        save_checkpoint(root / kind, kind, model, to_dict(model.config), step=1, train={"classes": list(classes)})
    return root
