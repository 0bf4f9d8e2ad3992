"""Training as a library: `train(TrainOptions(stage=..., out=...))` runs one stage on one CPU, one GPU, or many
processes under torchrun.

    options     TrainOptions (checked before any work, per-stage defaults) and `--set KEY=VALUE` overrides
    stages      one setup per stage (tokenizer, generator) returning the `Stage` record the trainer runs
    loop        the Trainer, which knows no stage: micro-steps, log, validation, checkpoints, signals
    resume      starting a run: refusals, and loading a checked checkpoint for an exact continuation
    codes       the generator's data: images encoded once, cached by tokenizer, data and split
    validation  held-out images, a log row and a picture grid per evaluation
    runtime     process-level machinery: the run folder's lock, log and pictures paired with checkpoints,
                signals, replica checks
    schedule    the learning-rate schedule
"""

from .loop import Interrupted, Trainer, train
from .options import STAGE_DEFAULTS, TrainOptions, parse_overrides
from .runtime import RunLock, RunLocked, lock_holder
from .stages import Stage, setup_generator, setup_tokenizer

__all__ = ["STAGE_DEFAULTS", "Interrupted", "RunLock", "RunLocked", "Stage", "TrainOptions", "Trainer",
           "lock_holder", "parse_overrides", "setup_generator", "setup_tokenizer", "train"]
