"""Training runs as the experiments need them: one stage trained, finished or skipped, resumable in pieces, with the
wall time it took kept beside the checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..checkpoint import read_meta
from ..training import TrainOptions, train

__all__ = ["stage_seconds", "train_stage"]

TIMES = "times.json"  # per run folder: {stage: seconds of training, summed over the invocations that trained it}


def stage_seconds(out) -> dict:
    """{stage: training seconds} recorded in run folder `out` (empty when none)."""
    path = Path(out) / TIMES
    return json.loads(path.read_text()) if path.is_file() else {}


def train_stage(stage: str, out, steps: int, *, config: dict | None = None, ckpt_every: int | None = None,
                **options) -> float:
    """Train one stage into run folder `out` with spectralar.training: start it, finish it from its last checkpoint,
    or skip it when it has `steps` already. Returns the seconds spent in this call (0.0 when skipped).

    `options` are TrainOptions fields; `config` the ones that set the model config (overrides, mapping), given to a
    fresh run only (a resumed run keeps its checkpoint's). `ckpt_every` (default: only at the end) bounds what an
    interruption loses; the seconds of every call are added up in OUT/times.json.
    """
    out = Path(out)
    ckpt = out / stage
    done = read_meta(ckpt)["step"] if ckpt.is_dir() else None
    if done is not None and done >= steps:
        return 0.0
    t = time.time()
    try:
        train(TrainOptions(stage=stage, out=out, steps=steps, eval_every=steps, ckpt_every=ckpt_every or steps,
                           log_every=max(1, min(50, steps)), resume=done is not None,
                           **options, **((config or {}) if done is None else {})))
    finally:  # an interrupted call's time counts too: the run resumes from its last checkpoint
        spent = round(time.time() - t, 1)
        if out.is_dir():
            times = stage_seconds(out)
            times[stage] = round(times.get(stage, 0.0) + spent, 1)
            tmp = out / f".{TIMES}.tmp"
            tmp.write_text(json.dumps(times) + "\n")
            tmp.rename(out / TIMES)
    return spent
