"""`clipdash run` under torch.distributed (torchrun): process group, ranks, agreement.

The Tracker's side (only rank 0 records; commands applied at the same step on every rank) is in
`clipdash.track.distributed`. This is the engine's: join the group torchrun describes, this
rank's device, the DDP wrapper, and every rank taking rank 0's decisions (the run's name).
Data sharding is in `Batches` (each rank takes every world-th sample of the epoch's order, as
torch's DistributedSampler does; `batch_size` is per rank).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def launched() -> bool:
    """True in a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_leader() -> bool:
    return rank() == 0


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device, backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes (once); this rank's device. No-op alone.

    `backend` None: nccl on CUDA, gloo on the CPU.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend=backend or default_backend(device))
    return device


def wrap(model: nn.Module, device: torch.device, strategy: str = "ddp") -> nn.Module:
    """The module the loop calls forward on, with more than one rank: the model wrapped in
    DistributedDataParallel ("ddp"), or the model itself sharded in place ("fsdp2")."""
    if not active():
        return model
    if strategy == "fsdp2":
        from clipdash.engine import fsdp

        return fsdp.shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (collective); `value` itself outside a process group."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
