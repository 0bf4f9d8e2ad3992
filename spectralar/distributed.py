"""Joining and leaving the torchrun process group: one home for the sampling, evaluation and training code."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world) from torchrun's environment, joining the process group when there is more than one process
    (NCCL on CUDA, Gloo on the CPU); (0, 1) outside torchrun. A CUDA device becomes the current one, which NCCL's
    object collectives use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def close_distributed(wait: bool = False) -> None:
    """Leave the process group. `wait` (the normal end of a run, every rank here): meet the others first, so no
    rank tears down its connections while a peer still talks to it.

    DistributedDataParallel wrappers are reference cycles that keep the process group alive; collected only at
    interpreter exit, they let Gloo's worker threads be destroyed unjoined (std::terminate, SIGABRT, seen now
    and then under load). So collect them first: the group is then really destroyed here."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
