"""Training CLI for the tokenizer and the generator; one CPU, one GPU, or many through torchrun.

    python -m spectralar.train tokenizer --preset fmnist --mapping gain --out runs/fmnist
    python -m spectralar.train generator --preset fmnist --out runs/fmnist
    torchrun --nproc_per_node=8 -m spectralar.train tokenizer --data /imagenet --preset imagenet-b64 --accum 2 ...

OUT/<stage> is the latest checkpoint (a link switched atomically to the newest OUT/<stage>.STEP directory,
see spectralar/checkpoint.py), OUT/<stage>_log.jsonl the metrics, OUT/<stage>_curves.png the curves and
OUT/<stage>_samples/ the periodic picture grids. The generator stage first encodes the training images with
the tokenizer (once: 60k Fashion-MNIST images take about 2 minutes on an idle 2-core CPU, far longer under
load; cached in OUT/codes_train.safetensors, keyed by the tokenizer, the data and the split) and copies the
tokenizer checkpoint to OUT/tokenizer, so OUT is everything `generate --checkpoint OUT` needs. One run at a
time owns OUT: a second one into the same folder stops with a message naming the first.

Validation uses held-out images only: Fashion-MNIST's test split, ROOT/val beside ROOT/train, or else
--val-size images held out of the training folder (the same ones every run; the log says which).

A folder that already holds a checkpoint of the stage is never overwritten: continue it with --resume (an
error when there is nothing readable to resume, or when --data, --preset, --set or --mapping would change
the run) or replace it with --overwrite (the old checkpoint, log and pictures stay until the new run's first
checkpoint). Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits with 130 / 143;
--resume then continues exactly (the same per-step losses and final weights as an uninterrupted run). A second
Ctrl-C (one process, not under torchrun) aborts at once and keeps the previous checkpoint.

--batch-size is per process and micro-step; one optimizer step sees --batch-size x --accum x processes
samples, and the run matches a one-process, one-micro-step run at that global batch: the random draws per
sample (prefix lengths, class dropout) come from a generator keyed by (seed, step) over the global batch,
shared out like the data. The training itself is the library spectralar.training (`train(TrainOptions(...))`).
"""

from __future__ import annotations

import argparse
import re
import sys

from spectralar_kernels.windows import MAPPINGS

from .checkpoint import CheckpointError
from .cli import Parser, fail, pick_device, set_threads, threads_flag
from .data import DataError
from .distributed import close_distributed
from .models.config import preset
from .training import TrainOptions, parse_overrides, train

PROG = "python -m spectralar.train"
FLAGS = {"overrides": "--set", "stage": "the stage"}


def defaults(stage: str) -> dict:
    """The library's default for every option of `stage` (what the flags show and fall back to)."""
    return {k: v for k, v in vars(TrainOptions(stage=stage, out="")).items() if k not in ("stage", "out")}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    helps = {"tokenizer": "train the tokenizer",
             "generator": "train the generator on a trained tokenizer's codes; it first encodes every training "
                          "image with the tokenizer (once, cached in OUT; minutes for 60k images)"}
    for stage in ("tokenizer", "generator"):
        s = sub.add_parser(stage, help=helps[stage], description=helps[stage] + ".")
        s.add_argument("--preset", help="config preset (fmnist, micro, imagenet-b64 / d16; default %(default)s)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config field, e.g. --set width=192 or --set ema_decay=0.999 (repeatable)")
        s.add_argument("--data", help="'fmnist' (Debian's dataset-fashion-mnist), a folder of its IDX files, or an "
                                      "image folder: ROOT/<class>/<images>, or ROOT/train + ROOT/val")
        s.add_argument("--out", required=True, help="output directory (checkpoints, logs, pictures)")
        s.add_argument("--steps", type=int, help="optimizer steps in total (default %(default)s)")
        s.add_argument("--batch-size", type=int, help="images per micro-step and process (default %(default)s)")
        s.add_argument("--accum", type=int, help="micro-steps (gradient accumulation) per optimizer step "
                                                 "(default %(default)s)")
        s.add_argument("--lr", type=float, help="peak learning rate (AdamW; default %(default)s)")
        s.add_argument("--min-lr-ratio", type=float,
                       help="final lr as a fraction of the peak (cosine; default %(default)s)")
        s.add_argument("--warmup", type=int, help="linear warmup steps (default %(default)s)")
        s.add_argument("--weight-decay", type=float, help="AdamW weight decay (matrices only; default %(default)s)")
        s.add_argument("--clip", type=float, help="gradient-norm clipping (0 = off; default %(default)s)")
        s.add_argument("--seed", type=int, help="seed for init, data order and sampling, in [0, 2**32)")
        s.add_argument("--resume", action="store_true",
                       help="continue exactly from the checkpoint OUT/<stage> (an error if there is none)")
        s.add_argument("--overwrite", action="store_true",
                       help="start afresh even though OUT/<stage> holds a checkpoint (replaced at the first save)")
        s.add_argument("--log-every", type=int, help="steps between metric lines (default %(default)s)")
        s.add_argument("--eval-every", type=int, help="steps between validation / picture grids (default %(default)s)")
        s.add_argument("--ckpt-every", type=int, help="steps between checkpoints (default %(default)s)")
        s.add_argument("--stop-at", type=int,
                       help="checkpoint and exit at this step as an interruption would (resume with --resume)")
        threads_flag(s)
        s.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
        s.add_argument("--num-workers", type=int, help="DataLoader workers (image folders; default %(default)s)")
        s.add_argument("--skip-bad-images", action="store_true",
                       help="skip unreadable images, in training and validation (their count is printed)")
        s.add_argument("--val-size", type=int,
                       help="held-out validation images per evaluation (0 = no validation; default %(default)s)")
        s.add_argument("--save-dtype", choices=["fp32", "fp16"],
                       help="dtype of the final weights (fp16 for shipping; default %(default)s); resumable "
                            "checkpoints stay fp32")
        s.set_defaults(**{**defaults(stage), "device": None})
    sub.choices["generator"].add_argument("--tokenizer", default=None,
                                          help="tokenizer checkpoint directory (default: OUT/tokenizer)")
    sub.choices["tokenizer"].add_argument("--mapping", default=None, choices=list(MAPPINGS),
                                          help="token-frequency mapping (default: the preset's; energy, gain: "
                                               "from the training data; the bundled model used gain)")
    return p


def options(args) -> TrainOptions:
    """The library's options for parsed flags: every flag is the option of its name; --set is parsed against the
    preset's field types and --device checked."""
    given = {name: getattr(args, name) for name in TrainOptions.__dataclass_fields__ if hasattr(args, name)}
    overrides = parse_overrides(preset(args.stage, args.preset), args.set) if args.set else {}
    return TrainOptions(**{**given, "overrides": overrides, "threads": set_threads(PROG, args.threads),
                           "device": pick_device(args.device)})


def as_flags(message: str) -> str:
    """The library names its arguments in backticks (`batch_size`); on the command line they are flags."""
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m[1], "--" + m[1].replace("_", "-"))
                  if m[1] in TrainOptions.__dataclass_fields__ else m[0], message)


def run(args):
    """Train one stage as `python -m spectralar.train` does; returns the trained model (on every rank)."""
    return train(options(args))


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        run(args)
        close_distributed(wait=True)
    except (ValueError, DataError, CheckpointError, FileNotFoundError, FloatingPointError) as e:
        return fail(PROG, as_flags(str(e)))
    except KeyboardInterrupt as e:
        print(f"{PROG}: {as_flags(str(e)) or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
