"""Loading models from checkpoint directories, and the bundled Fashion-MNIST model."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_into, load_weights, read_meta
from .config import GeneratorConfig, TokenizerConfig, from_dict
from .generator import SpectralGPT
from .tokenizer import SpectralTokenizer

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def load_model(path, kind: str, device="cpu"):
    """Build a tokenizer or generator from checkpoint directory `path` (eval mode, fp32)."""
    meta = read_meta(path)
    if meta["kind"] != kind:
        raise CheckpointError(f"{path} holds a {meta['kind']}, not a {kind}")
    classes = {"tokenizer": (SpectralTokenizer, TokenizerConfig), "generator": (SpectralGPT, GeneratorConfig)}
    cls, cfg_cls = classes[kind]
    try:
        cfg = from_dict(cfg_cls, meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: bad {kind} config ({e})") from None
    model = cls(cfg)
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


def load_pretrained(name_or_dir="fmnist", device="cpu") -> tuple[SpectralTokenizer, SpectralGPT]:
    """(tokenizer, generator) in eval mode, from a bundled name ("fmnist") or a training output directory."""
    root = resolve(name_or_dir)
    tok = load_model(root / "tokenizer", "tokenizer", device)
    gen = load_model(root / "generator", "generator", device)
    if gen.config.codebook_size != tok.config.codebook_size or gen.config.num_tokens != tok.config.num_tokens:
        raise CheckpointError(f"{root}: generator (K={gen.config.codebook_size}, N={gen.config.num_tokens}) does not "
                              f"match tokenizer (K={tok.config.codebook_size}, N={tok.config.num_tokens})")
    return tok, gen


@torch.no_grad()
def class_names(root) -> list[str] | None:
    meta = read_meta(Path(root) / "generator")
    return meta.get("train", {}).get("classes")
