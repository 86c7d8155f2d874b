"""The `[distributed]` config section: how `clipdash run` trains on several ranks.

    [distributed]
    strategy = "fsdp2"     # "ddp" (default): DistributedDataParallel; "fsdp2": fully_shard
    backend = "gloo"       # default: nccl on CUDA, gloo on the CPU

Both only matter under torchrun with more than one rank (`--nproc-per-node N`, or
`torchrun ... -m clipdash run ...`). What the keys alone can rule out is refused at load time;
what depends on the device `auto` resolves to is refused once it is known (`check_backend_device`),
still before the run directory exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipdash.engine.builtins import Spec, fmt
from clipdash.engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from clipdash.engine.config import Table

STRATEGIES = ("ddp", "fsdp2")
BACKENDS = ("gloo", "nccl")


@dataclass
class DistributedConfig:
    strategy: str = "ddp"
    """ddp (DistributedDataParallel) | fsdp2 (fully_shard per block and on the root)."""
    backend: str | None = None
    """gloo | nccl; absent: nccl on CUDA, gloo on the CPU."""

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "backend": self.backend}


def parse(t: Table, device: str) -> DistributedConfig:
    strategy = t.get("strategy", Spec("ddp", "str", choices=STRATEGIES))
    backend = t.get("backend", Spec(None, "str", choices=BACKENDS))
    t.finish([*DistributedConfig.__dataclass_fields__])
    if backend == "nccl" and device == "cpu":
        raise t.error("backend", 'nccl needs CUDA, and device is "cpu" (use backend = "gloo")')
    if strategy == "fsdp2" and backend == "gloo" and device.startswith("cuda"):
        raise t.error("backend", 'fsdp2 on CUDA needs backend = "nccl"')
    return DistributedConfig(strategy, backend)


def check_backend_device(cfg: DistributedConfig, device: torch.device, source: str) -> None:
    """The combinations that depend on the resolved device (device = "auto")."""
    if cfg.backend == "nccl" and device.type != "cuda":
        raise ConfigError(source, "distributed.backend",
                          f"nccl needs CUDA, and the run's device is {fmt(str(device))}")
    if cfg.strategy == "fsdp2" and cfg.backend == "gloo" and device.type == "cuda":
        raise ConfigError(source, "distributed.backend",
                          'fsdp2 on CUDA needs backend = "nccl"')
