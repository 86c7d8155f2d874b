"""Mini-batches whose order depends only on (seed, epoch), so a resumed run sees the same data.

In-memory tensor datasets are sliced directly (a DataLoader costs more than a small model's
step); other datasets go through a DataLoader with a per-epoch seeded sampler.

Under torch.distributed each rank takes every `world`-th sample of the epoch's order (all ranks
get the same number of batches, or DDP would wait forever for the rank that ran out).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class Batches:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int,
                 tensors: tuple[Tensor, Tensor] | None = None, shuffle: bool = True,
                 rank: int = 0, world: int = 1) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.tensors = tensors
        self.shuffle = shuffle
        self.rank = rank
        self.world = world
        self.total = len(tensors[0]) if tensors is not None else len(dataset)  # type: ignore[arg-type]
        self.size = self.total // world if world > 1 else self.total  # this rank's share

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            order = torch.arange(self.total)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.total, generator=gen)
        if self.world > 1:
            order = order[: self.size * self.world][self.rank::self.world]
        return order

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of `epoch`, from batch index `start` on."""
        order = self.order(epoch)
        if self.tensors is not None:
            x, y = self.tensors
            for i in range(start, len(self)):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield x[idx], y[idx]
            return
        indices = order[start * self.batch_size:].tolist()
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices)
        yield from loader
