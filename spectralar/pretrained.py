"""Loading models from checkpoint directories, and the bundled Fashion-MNIST model: the one place a checkpoint
directory becomes a model (tokenizer, generator or classifier), its config checked before anything is built."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, fingerprint, load_into, load_weights, read_meta, run_folder_marks
from .models.build import check_fits
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
        cfg = validate_config(kind, meta["config"], train.get("classes"))
        check_fits(kind, cfg)
        return cfg, meta
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
    Both configs are checked, and against each other (sizes, and the tokenizer the generator was trained on:
    `check_pair`), before either model is built."""
    root = resolve(name_or_dir)
    (t, tmeta), (g, gmeta) = checked_config(root / "tokenizer", "tokenizer"), checked_config(root / "generator",
                                                                                             "generator")
    if g.codebook_size != t.codebook_size or g.num_tokens != t.num_tokens:
        raise CheckpointError(f"{root}: generator (K={g.codebook_size}, N={g.num_tokens}) does not "
                              f"match tokenizer (K={t.codebook_size}, N={t.num_tokens})")
    check_pair(root / "tokenizer", root / "generator", tmeta, gmeta)
    return load_model(root / "tokenizer", "tokenizer", device), load_model(root / "generator", "generator", device)


def check_pair(tok_dir, gen_dir, tok_meta: dict | None = None, gen_meta: dict | None = None) -> None:
    """Refuse a generator next to a tokenizer other than the one it was trained on (its codes would decode to
    garbage): the sha1 of the tokenizer's weights that training recorded (`tokenizer_sha1`) must be the sha1 of
    `tok_dir`'s. Nothing to check when no hash was recorded (older runs), nor for a pair exported before exports
    kept the hash up to date (weights only, outside a run folder, no `exported` record): those cannot be told."""
    tok_dir, gen_dir = Path(tok_dir), Path(gen_dir)
    tok_meta, gen_meta = tok_meta or read_meta(tok_dir), gen_meta or read_meta(gen_dir)
    want = gen_meta.get("train", {}).get("tokenizer_sha1")
    if not want:
        return
    have = fingerprint(tok_dir)
    if have == want:
        return
    tt, gt = tok_meta.get("train", {}), gen_meta.get("train", {})
    if (not any("optimizer" in m or "exported" in m for m in (tt, gt)) and not run_folder_marks(tok_dir.parent)
            and not run_folder_marks(gen_dir.parent)):
        return  # an older export: it cast the tokenizer (new hash) but kept the trained one's
    raise CheckpointError(f"{gen_dir} was trained on a tokenizer whose weights have sha1 {want[:12]}, but {tok_dir} "
                          f"holds another (sha1 {have[:12]}: retrained or replaced since), so its samples would be "
                          f"garbage. Put back the tokenizer it was trained on, or train the generator again on this "
                          f"one (python -m spectralar.train generator --out {gen_dir.parent} --overwrite)")


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
