"""Training as a library: `train(TrainOptions(stage=..., out=...))` runs one stage on one CPU, one GPU, or many
processes under torchrun.

    options   TrainOptions (checked before any work) and `--set KEY=VALUE` overrides
    stages    one setup per stage (tokenizer, generator) returning the `Stage` record the loop runs
    loop      the loop itself, which knows no stage; checkpoints, resume, validation
    runtime   process-level machinery: the output folder, signals, replica checks, log trimming
    schedule  the learning-rate schedule
"""

from .loop import train
from .options import TrainOptions, parse_overrides
from .stages import Stage, setup_generator, setup_tokenizer

__all__ = ["Stage", "TrainOptions", "parse_overrides", "setup_generator", "setup_tokenizer", "train"]
