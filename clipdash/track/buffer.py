"""Per-step values collected on the device and moved to the host in batches.

Each step writes one row of a preallocated device tensor (one copy kernel). A flush copies the
filled rows into pinned host memory with non_blocking=True and records a CUDA event; the writer
thread waits on that event, so the training thread never waits for the device.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# Column order of a buffer row; per-parameter norms follow.
FIELDS = ("loss", "grad_norm_pre", "grad_norm_post", "clip_coef", "max_norm", "finite", "clipped")
N_FIELDS = len(FIELDS)


@dataclass
class StepBatch:
    """Filled rows of one buffer plus the host-side values of the same steps."""

    rows: Tensor  # [n, N_FIELDS + n_params] on the host (pinned on CUDA)
    ready: torch.cuda.Event | None
    steps: list[int]
    epochs: list[int]
    wall_times: list[float]
    lrs: list[list[float]]
    max_values: list[float]
    release: queue.SimpleQueue = field(repr=False, default_factory=queue.SimpleQueue)
    slot: int = 0

    def columns(self, with_params: bool) -> dict[str, np.ndarray]:
        """The batch as named numpy columns (waits for the device copy, on the writer thread)."""
        if self.ready is not None:
            self.ready.synchronize()
        data = self.rows.numpy().astype(np.float64, copy=True)
        self.release.put(self.slot)
        cols = {name: data[:, i] for i, name in enumerate(FIELDS)}
        cols["step"] = np.asarray(self.steps, np.int64)
        cols["epoch"] = np.asarray(self.epochs, np.int64)
        cols["wall_time"] = np.asarray(self.wall_times, np.float64)
        cols["lr_groups"] = np.asarray(self.lrs, np.float64)
        cols["lr"] = cols["lr_groups"][:, 0]
        cols["max_value"] = np.asarray(self.max_values, np.float64)
        cols["clipped"] = cols["clipped"] > 0.5
        cols["finite"] = cols["finite"] > 0.5
        if with_params:
            cols["param_norms"] = data[:, N_FIELDS:].astype(np.float32)
        return cols


class StepBuffer:
    """A small pool of device/host buffer pairs, recycled once the writer has read them."""

    def __init__(self, device: torch.device, n_params: int, capacity: int, slots: int = 3) -> None:
        self.device = device
        self.capacity = capacity
        width = N_FIELDS + n_params
        self.is_cuda = device.type == "cuda"
        self.device_rows = [torch.zeros(capacity, width, device=device) for _ in range(slots)]
        self.host_rows = [
            torch.zeros(capacity, width, pin_memory=self.is_cuda) if self.is_cuda else None
            for _ in range(slots)
        ]
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(1, slots):
            self.free.put(i)
        self.slot = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.wall_times: list[float] = []
        self.lrs: list[list[float]] = []
        self.max_values: list[float] = []
        self.started = time.monotonic()

    def append(self, row: Tensor, step: int, epoch: int, lrs: list[float],
               max_value: float) -> None:
        self.device_rows[self.slot][self.n].copy_(row, non_blocking=True)
        self.n += 1
        self.steps.append(step)
        self.epochs.append(epoch)
        self.wall_times.append(time.time())
        self.lrs.append(lrs)
        self.max_values.append(max_value)

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def age(self) -> float:
        return time.monotonic() - self.started

    def take(self) -> StepBatch | None:
        """Hand the filled rows over and switch to a free slot (blocks only if all are in use)."""
        if self.n == 0:
            return None
        src = self.device_rows[self.slot][: self.n]
        host = self.host_rows[self.slot]
        ready = None
        if host is not None:
            rows = host[: self.n]
            rows.copy_(src, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            rows = src.clone()
        batch = StepBatch(rows, ready, self.steps, self.epochs, self.wall_times, self.lrs,
                          self.max_values, self.free, self.slot)
        self.slot = self.free.get()
        self._reset()
        return batch
