"""Training CLI for the tokenizer and the generator; one CPU, one GPU, or many through torchrun.

    python -m spectralar.train tokenizer --preset fmnist --mapping gain --out runs/fmnist
    python -m spectralar.train generator --preset fmnist --out runs/fmnist
    torchrun --nproc_per_node=8 -m spectralar.train tokenizer --data /imagenet --preset imagenet-b64 --accum 2 ...

OUT/<stage> is the latest checkpoint (a link switched atomically to the newest OUT/<stage>.STEP directory,
see spectralar/checkpoint.py), OUT/<stage>_log.jsonl the metrics, OUT/<stage>_curves.png the curves and
OUT/<stage>_samples/ the periodic picture grids. The generator stage encodes the dataset once with the
tokenizer (cached in OUT/codes_<split>.safetensors) and copies the tokenizer checkpoint to OUT/tokenizer,
so OUT is everything `generate --checkpoint OUT` needs.

A folder that already holds a checkpoint of the stage is never overwritten: continue it with --resume (an
error when there is nothing readable to resume) or replace it with --overwrite. Ctrl-C (SIGINT) or SIGTERM
finishes the current step, writes a checkpoint and exits with 130 / 143; --resume then continues exactly
(the same per-step losses and final weights as an uninterrupted run). A second Ctrl-C (one process, not
under torchrun) aborts at once and keeps the previous checkpoint.

--batch-size is per process and micro-step; one optimizer step sees --batch-size x --accum x processes
samples, and the run matches a one-process, one-micro-step run at that global batch: the random draws per
sample (prefix lengths, class dropout) come from a generator keyed by (seed, step) over the global batch,
shared out like the data. The training itself is the library spectralar.training (`train(TrainOptions(...))`).
"""

from __future__ import annotations

import argparse
import sys

from spectralar_kernels.windows import MAPPINGS

from .checkpoint import CheckpointError
from .cli import Parser, fail, pick_device, set_threads, threads_flag
from .data import DataError
from .distributed import close_distributed
from .models.config import preset
from .training import TrainOptions, parse_overrides, train

PROG = "python -m spectralar.train"


# Per-stage defaults: the flags that trained the bundled Fashion-MNIST model (docs/training.md).
STAGE_DEFAULTS = {
    "tokenizer": {"steps": 14000, "batch_size": 64, "warmup": 200, "eval_every": 1000, "ckpt_every": 500,
                  "val_size": 500},
    "generator": {"steps": 2000, "batch_size": 256, "warmup": 100, "eval_every": 500, "ckpt_every": 250,
                  "val_size": 2000},
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for stage in ("tokenizer", "generator"):
        s = sub.add_parser(stage, help=f"train the {stage}")
        s.add_argument("--preset", default="fmnist", help="config preset (fmnist, micro, imagenet-b64 / d16)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config field, e.g. --set width=192 or --set ema_decay=0.999 (repeatable)")
        s.add_argument("--data", default="fmnist",
                       help="'fmnist' (Debian's dataset-fashion-mnist), a folder of its IDX files, or an image folder")
        s.add_argument("--out", required=True, help="output directory (checkpoints, logs, pictures)")
        s.add_argument("--steps", type=int, help="optimizer steps in total (default %(default)s)")
        s.add_argument("--batch-size", type=int, help="images per micro-step and process (default %(default)s)")
        s.add_argument("--accum", type=int, default=1,
                       help="micro-steps (gradient accumulation) per optimizer step")
        s.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
        s.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of the peak (cosine)")
        s.add_argument("--warmup", type=int, help="linear warmup steps (default %(default)s)")
        s.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (matrices only)")
        s.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0 = off)")
        s.add_argument("--seed", type=int, default=0, help="seed for init, data order and sampling")
        s.add_argument("--resume", action="store_true",
                       help="continue exactly from the checkpoint OUT/<stage> (an error if there is none)")
        s.add_argument("--overwrite", action="store_true",
                       help="start afresh even though OUT/<stage> holds a checkpoint (replaced at the first save)")
        s.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
        s.add_argument("--eval-every", type=int,
                       help="steps between validation / picture grids (default %(default)s)")
        s.add_argument("--ckpt-every", type=int, help="steps between checkpoints (default %(default)s)")
        s.add_argument("--stop-at", type=int, default=None,
                       help="checkpoint and exit at this step as an interruption would (resume with --resume)")
        threads_flag(s)
        s.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
        s.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (image folders)")
        s.add_argument("--skip-bad-images", action="store_true",
                       help="skip unreadable images (counted in the log) instead of stopping")
        s.add_argument("--val-size", type=int,
                       help="validation images (test split) per evaluation (0 = no validation; default %(default)s)")
        s.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp32",
                       help="dtype of the final weights (fp16 for shipping); resumable checkpoints stay fp32")
        s.set_defaults(**STAGE_DEFAULTS[stage])
    sub.choices["generator"].add_argument("--tokenizer", default=None,
                                          help="tokenizer checkpoint directory (default: OUT/tokenizer)")
    sub.choices["tokenizer"].add_argument("--mapping", default=None, choices=list(MAPPINGS),
                                          help="token-frequency mapping (default: the preset's; energy, gain: "
                                               "from the training data; the bundled model used gain)")
    return p


def options(args) -> TrainOptions:
    """The library's options for parsed flags: --set parsed against the preset's field types, the device checked."""
    overrides = parse_overrides(preset(args.stage, args.preset), args.set) if args.set else {}
    return TrainOptions(
        stage=args.stage, out=args.out, data=args.data, preset=args.preset, overrides=overrides,
        mapping=getattr(args, "mapping", None), tokenizer=getattr(args, "tokenizer", None), steps=args.steps,
        batch_size=args.batch_size, accum=args.accum, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
        warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, seed=args.seed, resume=args.resume,
        overwrite=args.overwrite, log_every=args.log_every, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
        stop_at=args.stop_at, threads=set_threads(PROG, args.threads), device=pick_device(args.device),
        num_workers=args.num_workers, skip_bad_images=args.skip_bad_images, val_size=args.val_size,
        save_dtype=args.save_dtype)


def run(args):
    """Train one stage as `python -m spectralar.train` does; returns the trained model (on every rank)."""
    return train(options(args))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
        close_distributed(wait=True)
    except (ValueError, DataError, CheckpointError, FileNotFoundError, FloatingPointError) as e:
        return fail(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: aborted by a second Ctrl-C; the last checkpoint written is intact", file=sys.stderr)
        return 130
    finally:
        close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
