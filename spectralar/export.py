"""Export a training run for shipping: weights only (no optimizer / RNG state), optionally fp16.

    python -m spectralar.export runs/fmnist spectralar/pretrained/fmnist --dtype fp16

Copies RUN/tokenizer and RUN/generator (and RUN/classifier when present) into DEST, each loadable with
`spectralar.load_pretrained(DEST)`; the training metadata (step, classes, command-line args) is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_meta, save_checkpoint
from .cli import Parser, check_output, fail
from .pretrained import checked_config, load_model


def export(run: Path, dest: Path, dtype: torch.dtype | None) -> list[Path]:
    """Check every config of `run`, then load every model, before writing any, so a bad one leaves DEST untouched."""
    kinds = []
    for kind in ("tokenizer", "generator", "classifier"):
        if (run / kind).exists():
            checked_config(run / kind, kind)
            kinds.append(kind)
        elif kind != "classifier":
            raise CheckpointError(f"{run / kind} is missing")
    loaded = [(load_model(run / kind, kind), read_meta(run / kind)) for kind in kinds]
    written = []
    for model, meta in loaded:
        train = {k: v for k, v in meta.get("train", {}).items() if k != "optimizer"}
        kind = meta["kind"]
        written.append(save_checkpoint(dest / kind, kind, model, meta["config"], meta.get("step", 0), train=train,
                                       dtype=dtype))
    return written


def main(argv=None) -> int:
    prog = "python -m spectralar.export"
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("run", help="training output directory (with tokenizer/ and generator/)")
    p.add_argument("dest", help="destination directory")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp16", help="dtype of the exported weights")
    args = p.parse_args(argv)
    try:
        check_output(args.dest, flag="DEST")
        paths = export(Path(args.run), Path(args.dest), torch.float16 if args.dtype == "fp16" else None)
    except (CheckpointError, ValueError) as e:
        return fail(prog, e)
    for path in paths:
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"wrote {path} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
