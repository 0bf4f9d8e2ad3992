"""Loading models from checkpoint directories, and the bundled Fashion-MNIST model: the one place a checkpoint
directory becomes a model (tokenizer, generator or classifier), its config checked before anything is built."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, load_into, load_weights, read_meta
from .models.classifier import SmallCNN
from .models.config import validate_config
from .models.generator import SpectralGPT
from .models.kinds import build_tokenizer
from .models.tokenizer import Tokenizer

MODELS = {"tokenizer": build_tokenizer, "generator": SpectralGPT, "classifier": SmallCNN}

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def checked_config(path, kind: str):
    """(config, meta) of checkpoint directory `path`, validated (types, ranges, class names, size against this
    machine's memory) before anything is built from it."""
    meta = read_meta(path)
    if meta["kind"] != kind:
        raise CheckpointError(f"{path} holds a {meta['kind']}, not a {kind}")
    train = meta.get("train", {})
    if not isinstance(train, dict):
        raise CheckpointError(f"{path}/config.json: 'train' must be a JSON object, got {type(train).__name__}")
    try:
        return validate_config(kind, meta["config"], train.get("classes")), meta
    except ValueError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from None


def load_model(path, kind: str, device="cpu"):
    """Build a "tokenizer", "generator" or "classifier" from checkpoint directory `path` (eval mode, fp32), with
    the EMA weights when the checkpoint has them (what sampling and evaluation use)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {list(MODELS)}")
    cfg, meta = checked_config(path, kind)
    try:
        model = MODELS[kind](cfg)
    except ValueError as e:  # a consistency rule of the model's own that the config breaks
        raise CheckpointError(f"{path}/config.json: {e}") from None
    load_into(model, load_weights(path, meta), str(path))
    return model.to(device).eval()


def resolve(name_or_dir) -> Path:
    p = Path(name_or_dir)
    if (p / "tokenizer").is_dir() or (p / "generator").is_dir():
        return p
    bundled = PRETRAINED_DIR / str(name_or_dir)
    if bundled.is_dir():
        return bundled
    names = sorted(d.name for d in PRETRAINED_DIR.iterdir() if d.is_dir()) if PRETRAINED_DIR.is_dir() else []
    raise CheckpointError(f"{name_or_dir!r} is neither a bundled model {names} nor a directory with "
                          "tokenizer/ and generator/ checkpoints (as written by `python -m spectralar.train`)")


def load_pretrained(name_or_dir="fmnist", device="cpu") -> tuple[Tokenizer, SpectralGPT]:
    """(tokenizer, generator) in eval mode, from a bundled name ("fmnist") or a training output directory.
    Both configs are checked, and against each other, before either model is built."""
    root = resolve(name_or_dir)
    t, g = checked_config(root / "tokenizer", "tokenizer")[0], checked_config(root / "generator", "generator")[0]
    if g.codebook_size != t.codebook_size or g.num_tokens != t.num_tokens:
        raise CheckpointError(f"{root}: generator (K={g.codebook_size}, N={g.num_tokens}) does not "
                              f"match tokenizer (K={t.codebook_size}, N={t.num_tokens})")
    return load_model(root / "tokenizer", "tokenizer", device), load_model(root / "generator", "generator", device)


def class_names(root) -> list[str] | None:
    """The generator's class names, as saved by training (checked against num_classes), or None."""
    _, meta = checked_config(Path(root) / "generator", "generator")
    return meta.get("train", {}).get("classes")


def training_info(path) -> dict:
    """The training metadata saved with checkpoint `path` (step count, class names, accuracy, ...)."""
    train = read_meta(path).get("train", {})
    return train if isinstance(train, dict) else {}


def tokenizer_dir(checkpoint) -> Path:
    """A tokenizer checkpoint directory from a bundled name, a training output root, or the directory itself."""
    p = Path(checkpoint)
    if (p / "config.json").is_file() and read_meta(p)["kind"] == "tokenizer":
        return p
    return resolve(checkpoint) / "tokenizer"


def classifier_dir(path, checkpoint) -> Path:
    """The classifier checkpoint directory: `path` when given, else <checkpoint root>/classifier, which must exist."""
    if path is not None:
        return Path(path)
    path = resolve(checkpoint) / "classifier"
    if not path.is_dir():
        raise CheckpointError(f"no classifier at {path}; train one with `python -m spectralar.evaluate "
                              f"train-classifier --data DATA --out {path}` or pass --classifier DIR")
    return path
