"""Export a training run for shipping: weights only (no optimizer / RNG state), optionally fp16.

    python -m spectralar.export runs/fmnist shipped/fmnist --dtype fp16

Copies RUN/tokenizer and RUN/generator (and RUN/classifier when present) into DEST, each loadable with
`spectralar.load_pretrained(DEST)`; the training metadata (step, classes, command-line args) is kept, and the
exported generator records the exported tokenizer's hash, so a later swap of either is detected on load.
DEST must lie outside every training run folder and hold none (an export there would replace the checkpoints a
run resumes from); weights fp16 cannot represent (beyond +-65504) stop the export before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, cast_weights, fingerprint, read_meta, run_folder_marks, save_checkpoint
from .cli import USER_ERRORS, Parser, check_output, fail, set_threads, threads_flag
from .pretrained import check_pair, checked_config, load_model
from .progress import bar

__all__ = ["check_destination", "export", "main"]

KINDS = ("tokenizer", "generator", "classifier")


def check_destination(run: Path, dest: Path, depth: int = 2) -> None:
    """Refuse a DEST that is a training run folder, lies inside one, or holds one (looked for `depth` levels
    down, and `run` itself at any depth): an export writes DEST/tokenizer and DEST/generator, which in a run folder
    are the checkpoints training resumes from."""
    run, dest = Path(run).resolve(), Path(dest).resolve()
    for d in (dest, *dest.parents):
        if marks := run_folder_marks(d):
            where = "is" if d == dest else f"lies inside {d}, which is"
            raise ValueError(f"DEST {dest} {where} a training run folder (it holds {', '.join(marks[:3])}); an "
                             "export there would replace the checkpoints training resumes from. Export to a "
                             "folder outside every run")
    if dest in run.parents:
        raise ValueError(f"DEST {dest} holds the training run {run}; export to a folder outside every run")
    level = [dest] if dest.is_dir() else []
    for _ in range(depth):
        level = [p for d in level for p in _subfolders(d)]
        for d in level:
            if marks := run_folder_marks(d):
                raise ValueError(f"DEST {dest} holds the training run folder {d} ({', '.join(marks[:3])}); export "
                                 "to a folder outside every run")


def _subfolders(d: Path) -> list[Path]:
    try:
        return [p for p in sorted(d.iterdir()) if p.is_dir() and not p.is_symlink()]
    except OSError:  # not ours to list
        return []


def export(run: Path, dest: Path, dtype: torch.dtype | None) -> list[Path]:
    """Check the destination, every config of `run` and the tokenizer-generator pair, load every model and cast
    its weights to `dtype` before writing any, so a bad one leaves DEST untouched."""
    run, dest = Path(run), Path(dest)
    check_destination(run, dest)
    kinds = []
    for kind in KINDS:
        if (run / kind).exists():
            checked_config(run / kind, kind)
            kinds.append(kind)
        elif kind != "classifier":
            raise CheckpointError(f"{run / kind} is missing")
    check_pair(run / "tokenizer", run / "generator")
    loaded = []
    for kind in kinds:  # checks, not yet the long part: a refusal stays the only line a command prints
        model = load_model(run / kind, kind)
        cast_weights(model.state_dict(), dtype, str(run / kind))  # refuses values the dtype cannot hold
        loaded.append((kind, model, read_meta(run / kind)))
    written, name = [], "fp16" if dtype == torch.float16 else "fp32"
    for kind, model, meta in bar(loaded, desc="write", unit="model"):
        train = {k: v for k, v in meta.get("train", {}).items() if k != "optimizer"}
        train["exported"] = {"from": str(run.resolve() / kind), "step": meta.get("step", 0), "dtype": name}
        if kind == "generator" and "tokenizer" in kinds:  # the tokenizer it pairs with is now the exported one
            train["tokenizer_sha1"] = fingerprint(dest / "tokenizer")
        written.append(save_checkpoint(dest / kind, kind, model, meta["config"], meta.get("step", 0), train=train,
                                       dtype=dtype))
    return written


def main(argv=None) -> int:
    prog = "python -m spectralar.export"
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("run", help="training output directory (with tokenizer/ and generator/)")
    p.add_argument("dest", help="destination directory, outside every training run folder")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp16", help="dtype of the exported weights")
    threads_flag(p)
    args = p.parse_args(argv)
    try:
        check_output(args.dest, flag="DEST")
        set_threads(prog, args.threads)
        paths = export(Path(args.run), Path(args.dest), torch.float16 if args.dtype == "fp16" else None)
    except USER_ERRORS as e:
        return fail(prog, e)
    for path in paths:
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"wrote {path} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
