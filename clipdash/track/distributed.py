"""Control under torch.distributed: every rank applies the same command at the same step.

Only rank 0 reads the commands table and writes the record. Every `every` steps (and every
poll while paused) rank 0 broadcasts the commands it has collected plus its stop flag over a CPU
(gloo) group; all ranks apply them at that same step boundary. Gradients are identical on every
rank after DDP's all-reduce, so clipping decisions agree without further communication.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch.distributed as dist

from clipdash.track.steering import Command

# Broadcasting a small pickled list over gloo costs ~0.1 ms; every 10 steps it is invisible.
DEFAULT_SYNC_EVERY = 10
# A paused run waits in this collective; it must outlast any pause a person might leave on.
PAUSE_SAFE_TIMEOUT = datetime.timedelta(days=7)


class ControlSync:
    def __init__(self, every: int = DEFAULT_SYNC_EVERY) -> None:
        self.every = every
        self.rank = dist.get_rank()
        self.is_leader = self.rank == 0
        self.group = dist.new_group(backend="gloo", timeout=PAUSE_SAFE_TIMEOUT)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def exchange(self, commands: list[Command], stop: bool) -> tuple[list[Command], bool]:
        """Rank 0's commands and stop flag, on every rank."""
        payload: list[Any] = [(commands, stop) if self.is_leader else None]
        dist.broadcast_object_list(payload, src=0, group=self.group)
        received_commands, received_stop = payload[0]
        return list(received_commands), bool(received_stop)
