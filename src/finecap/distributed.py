"""Several training processes (Lightning's DDP): which one is the primary, and gathering
Python objects from all of them.

`finecap train` with `trainer.devices: N, strategy: ddp` runs N processes (per node). Lightning
starts them itself on one machine (it re-runs the same command with `LOCAL_RANK` set), or
torchrun / SLURM do (`RANK` / `SLURM_PROCID` set for each). Every process builds the data,
the model and the trainer; only the primary (global rank 0) takes the run folder's lock and
writes anything of its own (config.yaml, run.json, the exported model) -- Lightning already
writes checkpoints and logs from rank 0 only.

Outside a distributed run (no process group), `world_size()` is 1 and `gather_objects(x)` is
`[x]`, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def is_primary_process() -> bool:
    """Whether this process is global rank 0, as its launcher set it, before any process group
    exists: torchrun sets RANK, SLURM's srun SLURM_PROCID, Lightning's own launcher NODE_RANK
    and LOCAL_RANK (absent in the first process of a machine, which starts the others)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    return node == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def world_size() -> int:
    """Processes in the running process group (1 outside a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's global rank in the running process group (0 outside one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_objects(value: T) -> list[T]:
    """Every process's `value`, in rank order (a collective: all processes must call it)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered
