"""`[distributed] strategy = "fsdp2"`: shard the model with `fully_shard`, checkpoint the shards.

The model is sharded per block and then on the root, as FSDP2 expects: a block is each
parameter-holding member of an `nn.Sequential` or `nn.ModuleList` (the layers of the built-in
MLP, the encoder layers of the Transformer), so one block's parameters are gathered at a time.
Its parameters become DTensors; the Tracker measures and clips their local shards (see
`clipdash.track.norms.ShardedNorms`).

A checkpoint of a sharded model is a `torch.distributed.checkpoint` (DCP) folder next to the
plain checkpoint file (`step-N.dcp/` beside `step-N.pt`): every rank writes its own shards of
the model and optimizer there, then rank 0 writes `step-N.pt` (the step, data position,
scheduler, tracker state) naming the folder. The `.pt` file is written last, so a checkpoint
is never found half written. DCP reshards on load, so a resume may use another world size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

SHARDS_SUFFIX = ".dcp"


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units sharded before the root: members of containers that hold parameters."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(module, nn.Sequential | nn.ModuleList) and any(
                    True for _ in child.parameters()):
                found.append(child)  # a block: not descended into
            else:
                visit(child)

    visit(model)
    return found


def shard(model: nn.Module) -> nn.Module:
    """`fully_shard` every block, then the root (in place); the model, now an FSDPModule."""
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415 - only fsdp2 runs need it

    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    return isinstance(model, FSDPModule)


def shards_path(checkpoint_file: Path) -> Path:
    return checkpoint_file.with_suffix(SHARDS_SUFFIX)


def save_shards(checkpoint_file: Path, model: nn.Module, optimizer: Optimizer) -> str:
    """Every rank: write this rank's shards; returns the folder's name (for the .pt file)."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415

    folder = shards_path(checkpoint_file)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))
    return folder.name


def load_shards(checkpoint_file: Path, name: Any, model: nn.Module,
                optimizer: Optimizer) -> None:
    """Every rank: read the shards the checkpoint names (resharded to this world size)."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
        get_state_dict,
        set_state_dict,
    )

    if not isinstance(name, str) or Path(name).name != name or not name.endswith(SHARDS_SUFFIX):
        raise ValueError(f"shards entry {name!r} is not a folder name beside the checkpoint")
    folder = checkpoint_file.parent / name
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.load({"model": model_state, "optimizer": optim_state},  # in place, into these dicts
             checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def remove_stale(folder: Path, kept: list[Path]) -> None:
    """Drop shard folders whose checkpoint file is gone (rotated out, or never finished)."""
    keep = {shards_path(p).name for p in kept}
    for shards in folder.glob(f"step-*{SHARDS_SUFFIX}"):
        if shards.name not in keep and shards.is_dir() and not shards.is_symlink():
            shutil.rmtree(shards, ignore_errors=True)
