"""Configuration dataclasses with named presets. Every checkpoint stores its config as JSON.

Choices not stated in the paper (arXiv 2506.10962) are ours and are options here: patch size, widths,
code dim, the prefix-length distribution, dead-code restarts, the token-frequency mapping's exponent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TokenizerConfig:
    image_size: int = 32
    channels: int = 1
    patch_size: int = 4
    num_tokens: int = 16  # N spectral tokens
    codebook_size: int = 1024  # K
    code_dim: int = 12
    width: int = 128
    enc_depth: int = 3
    dec_depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    mapping: str = "power"  # token-frequency mapping: uniform | power | energy
    gamma: float = 2.0  # exponent of the `power` mapping
    windows: list[int] = field(default_factory=list)  # w[1..N]; filled from `mapping` when empty
    commitment: float = 0.25  # beta of the commitment loss
    restart_every: int = 200  # dead-code restart period in steps (0 = never)
    restart_buffer: int = 4096  # recent encoder outputs kept to restart dead codes from
    # Prefix-length distribution in training: "uniform" (paper default) or "linear" (p(i) ~ i), which
    # trains long prefixes more (under uniform sampling only 1/16 of the images train the full prefix,
    # which stayed undertrained).
    prefix_dist: str = "uniform"
    recon_loss: str = "l2"  # l2 | l1
    adv_weight: float = 0.0  # hinge GAN loss weight (0 = off)
    adv_start: int = 0  # step after which the adversarial term is on

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class GeneratorConfig:
    num_tokens: int = 16  # sequence length N (the tokenizer's)
    codebook_size: int = 1024  # K: the head's width
    num_classes: int = 10
    width: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    class_dropout: float = 0.1  # probability of replacing the label by the null class (for CFG)


TOKENIZER_PRESETS = {
    "fmnist": TokenizerConfig(prefix_dist="linear"),
    "imagenet-b64": TokenizerConfig(
        image_size=256, channels=3, patch_size=16, num_tokens=64, codebook_size=4096, code_dim=12,
        width=768, enc_depth=12, dec_depth=12, heads=12, adv_weight=0.1, adv_start=20000,
    ),
    # tiny configs for tests and smoke runs (Fashion-MNIST-shaped input)
    "micro": TokenizerConfig(image_size=32, patch_size=8, num_tokens=4, codebook_size=32, code_dim=4, width=32,
                             enc_depth=1, dec_depth=1, heads=2, restart_every=5, restart_buffer=64),
}

GENERATOR_PRESETS = {
    "fmnist": GeneratorConfig(),
    "d16": GeneratorConfig(num_tokens=64, codebook_size=4096, num_classes=1000, width=1024, depth=16, heads=16),
    "micro": GeneratorConfig(num_tokens=4, codebook_size=32, num_classes=3, width=32, depth=1, heads=2),
}


def preset(kind: str, name: str):
    """A fresh copy of a named preset: kind "tokenizer" or "generator"."""
    table = {"tokenizer": TOKENIZER_PRESETS, "generator": GENERATOR_PRESETS}[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {sorted(table)}")
    return dataclasses.replace(table[name])


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Build `cls` from a dict, rejecting unknown keys (a checkpoint from another version says so)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    return cls(**d)
