"""Configuration dataclasses with named presets. Every checkpoint stores its config as JSON.

Choices not stated in the paper (arXiv 2506.10962) are ours and are options here: patch size, widths,
code dim, the prefix-length distribution, dead-code restarts, the token-frequency mapping's exponent.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from spectralar_kernels.windows import MAPPINGS

from .perceptual import MIN_SIZE

TOKEN_KINDS = ("spectral", "raster", "1d")


@dataclass
class TokenizerConfig:
    image_size: int = 32
    channels: int = 1
    patch_size: int = 4
    num_tokens: int = 16  # N spectral tokens
    # tokenizer kind (models/kinds.py): "spectral" (nested spectral tokens), "raster" (one token per cell of a
    # patch grid, VQGAN / LlamaGen) or "1d" (learned queries like spectral, no nested targets: TiTok)
    tokens: str = "spectral"
    codebook_size: int = 1024  # K
    code_dim: int = 12
    width: int = 128
    enc_depth: int = 3
    dec_depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    mapping: str = "power"  # token-frequency mapping: uniform | power | energy | gain
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
    disc_channels: int = 64  # base width of the patch discriminator (spectralar/models/discriminator.py)
    adv_adaptive: bool = False  # scale the adversarial term by VQGAN's adaptive weight (last-layer gradient norms)
    ema_decay: float = 0.0  # decay of the EMA of the weights (0 = no EMA)
    perceptual_weight: float = 0.0  # LPIPS-style term on a user-supplied VGG16 (0 = off; models/perceptual.py)
    perceptual_backbone: str = ""  # its weights: a .safetensors or torch state-dict file; never downloaded

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
    cond: str = "token"  # class conditioning: "token" (first token) | "adaln" (VAR-style adaptive LayerNorm)
    ema_decay: float = 0.0  # decay of the EMA of the weights (0 = no EMA)



@dataclass
class ClassifierConfig:
    """The small CNN of the offline generation metrics (spectralar/models/classifier.py)."""

    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    width: int = 16  # channels of the first stage; doubled at each of the three stages
    feature_dim: int = 128  # the feature space of CFD
    dropout: float = 0.2


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
    "d16": GeneratorConfig(num_tokens=64, codebook_size=4096, num_classes=1000, width=1024, depth=16, heads=16,
                           cond="adaln"),
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


# ---- validation of a loaded config.json -----------------------------------------------------------------

# Rules per field: "pos" (integer >= 1), "nonneg" (integer >= 0), "rgb" (1 or 3 channels, what the loaders make),
# "gt0" / "ge0" (finite number > 0 / >= 0), "prob" (finite number in [0, 1)), a tuple of allowed strings, "str".
# A field without a rule here must hold the type of its default (`_rule_of`).
_RULES = {
    "tokenizer": {"image_size": "pos", "channels": "rgb", "patch_size": "pos", "num_tokens": "pos",
                  "codebook_size": "pos", "code_dim": "pos", "width": "pos", "enc_depth": "pos", "dec_depth": "pos",
                  "heads": "pos", "mlp_ratio": "gt0", "mapping": MAPPINGS, "gamma": "gt0", "windows": "windows",
                  "commitment": "ge0", "restart_every": "nonneg", "restart_buffer": "pos",
                  "prefix_dist": ("uniform", "linear"), "recon_loss": ("l2", "l1"), "adv_weight": "ge0",
                  "adv_start": "nonneg", "disc_channels": "pos", "ema_decay": "prob", "perceptual_weight": "ge0",
                  "perceptual_backbone": "str", "tokens": TOKEN_KINDS},
    "generator": {"num_tokens": "pos", "codebook_size": "pos", "num_classes": "pos", "width": "pos", "depth": "pos",
                  "heads": "pos", "mlp_ratio": "gt0", "dropout": "prob", "class_dropout": "prob", "ema_decay": "prob",
                  "cond": ("token", "adaln")},
    "classifier": {"image_size": "pos", "channels": "rgb", "num_classes": "pos", "width": "pos", "feature_dim": "pos",
                   "dropout": "prob"},
}


def _rule_of(f: dataclasses.Field):
    """A field without an explicit rule must hold the type of its default (bool, int, number, str or list)."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    for t, rule in ((bool, "bool"), (int, "int"), (float, "num"), (str, "str"), (list, "list")):
        if isinstance(default, t):
            return rule
    return None


def _check_field(name, v, rule) -> str | None:
    """What is wrong with value `v` of field `name` under `rule`, or None."""
    if rule == "bool":
        return None if isinstance(v, bool) else f"{name}={v!r} must be true or false"
    if rule == "list":
        return None if isinstance(v, list) else f"{name}={v!r} must be a list"
    is_int = isinstance(v, int) and not isinstance(v, bool)
    is_num = (is_int or isinstance(v, float)) and math.isfinite(v)
    if rule in ("pos", "nonneg", "rgb", "int") and not is_int:
        return f"{name}={v!r} must be an integer"
    if rule in ("gt0", "ge0", "prob", "num") and not is_num:
        return f"{name}={v!r} must be a finite number"
    if rule == "str" and not isinstance(v, str):
        return f"{name}={v!r} must be a string"
    if isinstance(rule, tuple) and v not in rule:
        return f"{name}={v!r} must be one of {list(rule)}"
    if rule == "windows" and not (isinstance(v, list) and all(isinstance(w, int) and not isinstance(w, bool)
                                                              for w in v)):
        return f"{name}={v!r} must be a list of integers"
    low = {"pos": 1, "nonneg": 0, "ge0": 0}.get(rule)
    if low is not None and v < low:
        return f"{name}={v!r} must be >= {low}"
    if (rule == "gt0" and v <= 0) or (rule == "prob" and not 0 <= v < 1) or (rule == "rgb" and v not in (1, 3)):
        return f"{name}={v!r} must be " + {"gt0": "> 0", "prob": "in [0, 1)", "rgb": "1 or 3 (channels)"}[rule]
    return None


def _block_params(width: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    return 4 * width * width + 4 * width + 2 * width * hidden + hidden + width + 4 * width  # attn, mlp, two LNs


def min_weights(kind: str, c) -> int:
    """Parameters and buffers of the model a config builds, from the config alone, so that a size is judged before
    anything is allocated. Exact for the plain pre-LN blocks; variants (e.g. adaptive LayerNorm) only add weights,
    so this is a lower bound for them."""
    if kind == "tokenizer":
        P, N, W, pd = (c.image_size // c.patch_size) ** 2, c.num_tokens, c.width, c.channels * c.patch_size ** 2
        enc = pd * W + W + N * W + (P + N) * W + c.enc_depth * _block_params(W, c.mlp_ratio) + 2 * W
        enc += W * c.code_dim + c.code_dim
        quant = c.codebook_size * c.code_dim + c.codebook_size + c.restart_buffer * c.code_dim + 2
        dec = c.code_dim * W + W + N * W + P * W + (N + P) * W + c.dec_depth * _block_params(W, c.mlp_ratio)
        return enc + quant + dec + 2 * W + W * pd + pd
    if kind == "generator":
        W = c.width
        return (c.codebook_size * W + (c.num_classes + 1) * W + c.num_tokens * W
                + c.depth * _block_params(W, c.mlp_ratio) + 2 * W + W * c.codebook_size)
    w = c.width  # classifier: three conv stages (3x3, no bias; batch norm: 2 parameters and 2 buffers a channel)
    convs = 9 * (c.channels * w + w * 2 * w + 2 * w * 4 * w) + 4 * 7 * w + 3
    return convs + 64 * w * c.feature_dim + c.feature_dim + c.feature_dim * c.num_classes + c.num_classes


def memory_bytes() -> int:
    """Physical memory of this machine (the bound on a model built in fp32 on the CPU before it moves)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def validate_config(kind: str, d, classes=None, max_bytes: int | None = None):
    """The config dataclass for a loaded config.json dict of a "tokenizer", "generator" or "classifier",
    after checking types, ranges and consistency, and that its fp32 weights fit in this machine's memory, so a
    corrupt or absurd config fails here, naming the field, and not as a traceback or a 480 GB allocation.
    `classes`: the class names saved with a generator or classifier checkpoint, if any (one per class)."""
    cls = {"tokenizer": TokenizerConfig, "generator": GeneratorConfig, "classifier": ClassifierConfig}[kind]
    if not isinstance(d, dict):
        raise ValueError(f"{kind} config must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:  # a missing key takes its default (a checkpoint from before the field existed)
        raise ValueError(f"{kind} config: unknown keys {unknown}")
    rules = {n: _RULES[kind].get(n) or _rule_of(f) for n, f in fields.items()}
    bad = [e for n, v in d.items() if (e := _check_field(n, v, rules[n]))]
    if bad:
        raise ValueError(f"{kind} config: " + "; ".join(bad))
    c = cls(**{k: list(v) if isinstance(v, list) else v for k, v in d.items()})
    if kind in ("tokenizer", "generator") and c.width % c.heads:
        raise ValueError(f"{kind} config: width={c.width} is not divisible by heads={c.heads}")
    if kind == "tokenizer":
        if c.image_size % c.patch_size:
            raise ValueError(f"tokenizer config: image_size={c.image_size} is not divisible by "
                             f"patch_size={c.patch_size}")
        if c.tokens == "spectral" and c.num_tokens > c.image_size:
            raise ValueError(f"tokenizer config: num_tokens={c.num_tokens} exceeds image_size={c.image_size} "
                             "(each token needs at least one frequency ring)")
        if c.tokens != "spectral" and c.windows:
            raise ValueError(f"tokenizer config: windows={c.windows} apply to tokens='spectral' only, not "
                             f"tokens={c.tokens!r}")
        side, grid = math.isqrt(c.num_tokens), c.image_size // c.patch_size
        if c.tokens == "raster" and (side * side != c.num_tokens or grid % side):
            raise ValueError(f"tokenizer config: tokens='raster' needs num_tokens a square whose side divides the "
                             f"{grid}x{grid} patch grid (image_size / patch_size), got num_tokens={c.num_tokens}")
        w = c.windows
        if w and (len(w) != c.num_tokens or w[-1] != c.image_size or w[0] < 1
                  or any(a >= b for a, b in zip(w, w[1:]))):
            raise ValueError(f"tokenizer config: windows={w} must be {c.num_tokens} (num_tokens) increasing "
                             f"integers from >= 1 up to image_size={c.image_size}")
        if c.perceptual_weight > 0 and not c.perceptual_backbone:
            raise ValueError(f"tokenizer config: perceptual_weight={c.perceptual_weight} needs perceptual_backbone, "
                             "a VGG16 weights file (.safetensors, or a torchvision state dict .pth); none is "
                             "downloaded")
        if c.perceptual_weight > 0 and c.image_size < MIN_SIZE:
            raise ValueError(f"tokenizer config: perceptual_weight > 0 needs image_size >= {MIN_SIZE} (VGG16 pools "
                             f"four times), got {c.image_size}")
    if kind == "classifier" and c.image_size < 8:
        raise ValueError(f"classifier config: image_size={c.image_size} must be >= 8 (three 2x poolings)")
    if classes is not None and hasattr(c, "num_classes"):
        if not (isinstance(classes, list) and all(isinstance(n, str) for n in classes)):
            raise ValueError(f"class names must be a list of strings, got {classes!r:.80}")
        if len(classes) != c.num_classes:
            raise ValueError(f"{len(classes)} class names for num_classes={c.num_classes}")
    limit = memory_bytes() if max_bytes is None else max_bytes
    n = min_weights(kind, c)
    if 4 * n > limit:
        raise ValueError(f"{kind} config: {n:.3g} weights ({4 * n / 2**30:.3g} GiB in fp32) do "
                         f"not fit in this machine's {limit / 2**30:.3g} GiB of memory; is a size field "
                         f"(width={c.width}) corrupt?")
    return c
