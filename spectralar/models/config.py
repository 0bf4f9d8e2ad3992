"""Configuration dataclasses with named presets. Every checkpoint stores its config as JSON.

Two kinds of config per trained network:

- the *model* config (`TokenizerConfig`, `GeneratorConfig`, `ClassifierConfig`): what builds the network and
  loads its checkpoint, and what it computes (its quantizer's own loss and restarts included). Checkpoints keep
  it under "config"; loading a model needs nothing else.
- the *training* config (`TokenizerTraining`, `GeneratorTraining`): what the trainer composes around the network
  (extra loss terms and their weights, the discriminator, schedules, the prefix-length distribution, EMA, weight
  files). Checkpoints keep it under "train" -> "config", for a resume; a shipped model has no use for it.

Each field is declared once, with `param(default, rule, doc)`: its default, the rule a loaded value must satisfy
and what it means live in the field itself (`dataclasses.fields(cls)[i].metadata`). Choices not stated in the
paper (arXiv 2506.10962) are ours and are options here: patch size, widths, code dim, the prefix-length
distribution, dead-code restarts, the token-frequency mapping's exponent.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from spectralar_kernels.windows import MAPPINGS

from .perceptual import MIN_SIZE

__all__ = [
    "GENERATOR_PRESETS", "MODEL_CONFIGS", "TOKENIZER_PRESETS", "TOKEN_KINDS", "TRAINING_CONFIGS", "TRAINING_PRESETS",
    "ClassifierConfig", "GeneratorConfig", "GeneratorTraining", "TokenizerConfig", "TokenizerTraining", "param",
    "preset", "split_config", "to_dict", "training_preset", "validate_config", "validate_training",
]

TOKEN_KINDS = ("spectral", "raster", "1d")

# Rules a loaded value must satisfy (`_problem`): an integer >= 1 / >= 0, 1 or 3 channels (what the loaders
# make), a finite number > 0 / >= 0, a probability in [0, 1), a list of integers, or a tuple of allowed strings.
# A field declared without a rule must hold the type of its default.
POS, NONNEG, RGB, GT0, GE0, PROB, INTS = "pos", "nonneg", "rgb", "gt0", "ge0", "prob", "ints"


def param(default, rule=None, doc: str = ""):
    """A config field, declared once: its default, the rule a loaded value must satisfy, what it means."""
    if rule is None:
        rule = next(r for t, r in ((bool, "bool"), (int, "int"), (float, "num"), (str, "str"), (list, "list"))
                    if isinstance(default, t))
    meta = {"rule": rule, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TokenizerConfig:
    """The nested spectral tokenizer (spectralar/models/tokenizer.py)."""

    image_size: int = param(32, POS, "images are image_size x image_size")
    channels: int = param(1, RGB, "1 (grayscale) or 3 (RGB)")
    patch_size: int = param(4, POS, "side of the encoder's and decoder's patches")
    num_tokens: int = param(16, POS, "N, the spectral tokens per image")
    tokens: str = param("spectral", TOKEN_KINDS, "tokenizer kind: spectral (nested spectral tokens), raster (one "
                        "token per cell of a patch grid, VQGAN/LlamaGen) or 1d (learned queries, no nested targets: "
                        "TiTok)")
    codebook_size: int = param(1024, POS, "K, the codes")
    code_dim: int = param(12, POS, "dimension of a code (cosine lookup)")
    width: int = param(128, POS, "transformer width")
    enc_depth: int = param(3, POS, "encoder blocks")
    dec_depth: int = param(3, POS, "decoder blocks")
    heads: int = param(4, POS, "attention heads")
    mlp_ratio: float = param(4.0, GT0, "MLP hidden width / width")
    mapping: str = param("power", MAPPINGS, "token-frequency mapping (uniform | power | energy | gain)")
    gamma: float = param(2.0, GT0, "exponent of the `power` mapping")
    windows: list[int] = param([], INTS, "w[1..N]; filled from `mapping` when empty")
    commitment: float = param(0.25, GE0, "beta of the quantizer's commitment loss")
    restart_every: int = param(200, NONNEG, "dead-code restart period in optimizer steps (0 = never)")
    restart_buffer: int = param(4096, POS, "recent encoder outputs the quantizer keeps to restart dead codes from")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class TokenizerTraining:
    """How a tokenizer is trained, beyond its own losses (spectralar/training/stages.py)."""

    # "linear" (p(i) ~ i) trains long prefixes more: under the paper's uniform draw only 1/N of the images train
    # the full prefix, which stayed undertrained.
    prefix_dist: str = param("uniform", ("uniform", "linear"), "distribution of the prefix lengths trained")
    recon_loss: str = param("l2", ("l2", "l1"), "reconstruction loss against the sub-image")
    adv_weight: float = param(0.0, GE0, "hinge GAN loss weight (0 = off: no discriminator)")
    adv_start: int = param(0, NONNEG, "step from which the adversarial term is on")
    disc_channels: int = param(64, POS, "base width of the patch discriminator")
    adv_adaptive: bool = param(False, doc="scale the adversarial term by VQGAN's adaptive weight")
    ema_decay: float = param(0.0, PROB, "decay of the EMA of the weights (0 = no EMA)")
    perceptual_weight: float = param(0.0, GE0, "LPIPS-style term on a user-supplied VGG16 (0 = off)")
    perceptual_backbone: str = param("", doc="VGG16 weights file (.safetensors or torch state dict); never downloaded")


@dataclass
class GeneratorConfig:
    """The class-conditional generator over code sequences (spectralar/models/generator.py)."""

    num_tokens: int = param(16, POS, "sequence length N (the tokenizer's)")
    codebook_size: int = param(1024, POS, "K, the head's width (the tokenizer's)")
    num_classes: int = param(10, POS, "classes (plus one null class for guidance)")
    width: int = param(192, POS, "transformer width")
    depth: int = param(4, POS, "blocks")
    heads: int = param(4, POS, "attention heads")
    mlp_ratio: float = param(4.0, GT0, "MLP hidden width / width")
    dropout: float = param(0.0, PROB, "dropout in training mode")
    # A model property, not only a training knob: > 0 means the null class was trained, which guidance needs.
    class_dropout: float = param(0.1, PROB, "probability that a training label is replaced by the null class")
    cond: str = param("token", ("token", "adaln"), "class conditioning: first token | VAR-style adaptive LayerNorm")


@dataclass
class GeneratorTraining:
    """How a generator is trained, beyond its own loss."""

    ema_decay: float = param(0.0, PROB, "decay of the EMA of the weights (0 = no EMA)")


@dataclass
class ClassifierConfig:
    """The small CNN of the offline generation metrics (spectralar/models/classifier.py)."""

    image_size: int = param(32, POS, "images are image_size x image_size (>= 8)")
    channels: int = param(1, RGB, "1 (grayscale) or 3 (RGB)")
    num_classes: int = param(10, POS, "classes")
    width: int = param(16, POS, "channels of the first stage; doubled at each of the three stages")
    feature_dim: int = param(128, POS, "the feature space of CFD")
    dropout: float = param(0.2, PROB, "dropout before the head")


TOKENIZER_PRESETS = {
    "fmnist": TokenizerConfig(),
    "imagenet-b64": TokenizerConfig(image_size=256, channels=3, patch_size=16, num_tokens=64, codebook_size=4096,
                                    code_dim=12, width=768, enc_depth=12, dec_depth=12, heads=12),
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

# The training half of each preset (a preset names a model and the recipe it was meant to be trained with).
TRAINING_PRESETS = {
    "tokenizer": {"fmnist": TokenizerTraining(prefix_dist="linear"),
                  "imagenet-b64": TokenizerTraining(adv_weight=0.1, adv_start=20000),
                  "micro": TokenizerTraining()},
    "generator": {"fmnist": GeneratorTraining(), "d16": GeneratorTraining(), "micro": GeneratorTraining()},
}

MODEL_CONFIGS = {"tokenizer": TokenizerConfig, "generator": GeneratorConfig, "classifier": ClassifierConfig}
TRAINING_CONFIGS = {"tokenizer": TokenizerTraining, "generator": GeneratorTraining}


def preset(kind: str, name: str):
    """A fresh copy of the model config of a named preset: kind "tokenizer" or "generator"."""
    table = {"tokenizer": TOKENIZER_PRESETS, "generator": GENERATOR_PRESETS}[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {sorted(table)}")
    return dataclasses.replace(table[name])


def training_preset(kind: str, name: str):
    """A fresh copy of the training config of a named preset."""
    table = TRAINING_PRESETS[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {sorted(table)}")
    return dataclasses.replace(table[name])


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---- validation of a loaded config.json -----------------------------------------------------------------

def _problem(name, v, rule) -> str | None:
    """What is wrong with value `v` of field `name` under `rule`, or None."""
    if rule == "bool":
        return None if isinstance(v, bool) else f"{name}={v!r} must be true or false"
    if rule == "list":
        return None if isinstance(v, list) else f"{name}={v!r} must be a list"
    if rule == INTS:
        ok = isinstance(v, list) and all(isinstance(w, int) and not isinstance(w, bool) for w in v)
        return None if ok else f"{name}={v!r} must be a list of integers"
    is_int = isinstance(v, int) and not isinstance(v, bool)
    is_num = (is_int or isinstance(v, float)) and math.isfinite(v)
    if rule in (POS, NONNEG, RGB, "int") and not is_int:
        return f"{name}={v!r} must be an integer"
    if rule in (GT0, GE0, PROB, "num") and not is_num:
        return f"{name}={v!r} must be a finite number"
    if rule == "str" and not isinstance(v, str):
        return f"{name}={v!r} must be a string"
    if isinstance(rule, tuple) and v not in rule:
        return f"{name}={v!r} must be one of {list(rule)}"
    low = {POS: 1, NONNEG: 0, GE0: 0}.get(rule)
    if low is not None and v < low:
        return f"{name}={v!r} must be >= {low}"
    if (rule == GT0 and v <= 0) or (rule == PROB and not 0 <= v < 1) or (rule == RGB and v not in (1, 3)):
        return f"{name}={v!r} must be " + {GT0: "> 0", PROB: "in [0, 1)", RGB: "1 or 3 (channels)"}[rule]
    return None


def _checked(cls, d: dict, what: str):
    """`cls` built from dict `d` after each value is checked against its field's rule (a missing key takes its
    default: a checkpoint from before the field existed)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}")
    bad = [e for n, v in d.items() if (e := _problem(n, v, fields[n].metadata["rule"]))]
    if bad:
        raise ValueError(f"{what}: " + "; ".join(bad))
    return cls(**{k: list(v) if isinstance(v, list) else v for k, v in d.items()})


def split_config(kind: str, d) -> tuple[dict, dict]:
    """(model fields, training fields) of a checkpoint's "config" object. Checkpoints written before the training
    knobs left the model configs hold both in that one object; newer ones hold model fields only."""
    if not isinstance(d, dict):
        raise ValueError(f"{kind} config must be a JSON object, got {type(d).__name__}")
    moved = {f.name for f in dataclasses.fields(TRAINING_CONFIGS[kind])} if kind in TRAINING_CONFIGS else set()
    return {k: v for k, v in d.items() if k not in moved}, {k: v for k, v in d.items() if k in moved}


def validate_config(kind: str, d, classes=None):
    """The model config dataclass for a loaded config.json "config" of a "tokenizer", "generator" or "classifier",
    after checking types, ranges and consistency, so a corrupt config fails here, naming the field, and not as a
    traceback. Training fields that older checkpoints keep there are checked too and left out (see
    `validate_training`). `classes`: the class names saved with a generator or classifier checkpoint, if any.
    Whether the weights fit in memory is judged from a meta-device build: spectralar/models/build.py."""
    if kind not in MODEL_CONFIGS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {list(MODEL_CONFIGS)}")
    model, legacy = split_config(kind, d)
    if legacy:
        validate_training(kind, legacy)
    c = _checked(MODEL_CONFIGS[kind], model, f"{kind} config")
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
    if kind == "classifier" and c.image_size < 8:
        raise ValueError(f"classifier config: image_size={c.image_size} must be >= 8 (three 2x poolings)")
    if classes is not None and hasattr(c, "num_classes"):
        if not (isinstance(classes, list) and all(isinstance(n, str) for n in classes)):
            raise ValueError(f"class names must be a list of strings, got {classes!r:.80}")
        if len(classes) != c.num_classes:
            raise ValueError(f"{len(classes)} class names for num_classes={c.num_classes}")
    return c


def validate_training(kind: str, d, image_size: int | None = None):
    """The training config dataclass for dict `d` (a checkpoint's "train" -> "config", or the training fields of an
    older checkpoint's "config"), its values checked like `validate_config`'s. `image_size`: the model's, for the
    rules that depend on it."""
    if not isinstance(d, dict):
        raise ValueError(f"{kind} training config must be a JSON object, got {type(d).__name__}")
    t = _checked(TRAINING_CONFIGS[kind], d, f"{kind} training config")
    if kind == "tokenizer" and t.perceptual_weight > 0:
        if not t.perceptual_backbone:
            raise ValueError(f"tokenizer training config: perceptual_weight={t.perceptual_weight} needs "
                             "perceptual_backbone, a VGG16 weights file (.safetensors, or a torchvision state dict "
                             ".pth); none is downloaded")
        if image_size is not None and image_size < MIN_SIZE:
            raise ValueError(f"tokenizer training config: perceptual_weight > 0 needs image_size >= {MIN_SIZE} "
                             f"(VGG16 pools four times), got {image_size}")
    return t
