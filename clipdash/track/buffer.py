"""Per-step values collected on the device and moved to the host in batches.

`clip()` writes its measurements into a staging row on the device with `out=` kernels (named
views, made once); `step()` adds the loss and copies the staging row into the next row of a
preallocated device buffer (one copy kernel). A flush copies the filled rows into pinned host
memory with non_blocking=True and records a CUDA event; the writer thread waits on that event, so
the training thread never waits for the device. The finite and clipped flags are not computed on
the device: they follow from the recorded values (finite: the pre-clip norm is finite; clipped:
the coefficient is below 1) and are derived on the writer thread.
"""

from __future__ import annotations

import math
import queue
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from clipdash.store.schema import DEVICE_FIELDS

# Column order of a device row (declared in the store's step schema); per-parameter norms follow.
ROW_FIELDS = DEVICE_FIELDS
N_ROW_FIELDS = len(ROW_FIELDS)


def derived_flags(pre: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(finite, clipped) from the pre-clip norm and the coefficient, exactly as on the device."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(pre), coef < 1.0


def row_values(values: list[float]) -> dict[str, float]:
    """FIELDS of a row read back from the device, the flags derived as the writer derives them."""
    out = dict(zip(ROW_FIELDS, values, strict=True))
    pre, coef = out["grad_norm_pre"], out["clip_coef"]
    out["finite"] = float(math.isfinite(pre))
    out["clipped"] = float(coef < 1.0)
    return out


@dataclass
class StepBatch:
    """Filled rows of one buffer plus the host-side values of the same steps."""

    rows: Tensor  # [n, N_ROW_FIELDS + n_params] on the host (pinned on CUDA)
    ready: torch.cuda.Event | None
    steps: list[int]
    epochs: list[int]
    wall_times: list[float]
    lrs: list[list[float]]
    max_values: list[float]
    max_norms: list[float]  # host value of a fixed max_norm, NaN where only the device knows it
    release: queue.SimpleQueue = field(repr=False, default_factory=queue.SimpleQueue)
    slot: int = 0

    def columns(self, with_params: bool) -> dict[str, np.ndarray]:
        """The batch as named numpy columns (waits for the device copy, on the writer thread).

        The slot goes back to the buffer whatever happens here: a failing copy must not leave
        the training thread waiting for a free slot.
        """
        try:
            if self.ready is not None:
                self.ready.synchronize()
            data = self.rows.numpy().astype(np.float64, copy=True)
        finally:
            self.release_slot()
        cols = {name: data[:, i] for i, name in enumerate(ROW_FIELDS)}
        self._exact_fixed_norm(cols)
        cols["finite"], cols["clipped"] = derived_flags(cols["grad_norm_pre"], cols["clip_coef"])
        cols["step"] = np.asarray(self.steps, np.int64)
        cols["epoch"] = np.asarray(self.epochs, np.int64)
        cols["wall_time"] = np.asarray(self.wall_times, np.float64)
        cols["lr_groups"] = np.asarray(self.lrs, np.float64).reshape(len(self.steps), -1)
        cols["lr"] = cols["lr_groups"][:, 0]
        cols["max_value"] = np.asarray(self.max_values, np.float64)
        if with_params:
            cols["param_norms"] = data[:, N_ROW_FIELDS:].astype(np.float32)
        return cols

    def release_slot(self) -> None:
        """Give the buffer slot back (once): the batch's rows may then be overwritten."""
        if self.slot >= 0:
            self.release.put(self.slot)
            self.slot = -1

    def _exact_fixed_norm(self, cols: dict[str, np.ndarray]) -> None:
        """Where max_norm is a fixed number, record it as typed and derive coef and post from it
        in float64 (clip_grad_norm_'s formula on the exact pre-clip norm).

        The device works in float32, where 0.3 is 0.30000001 and a clipped post-clip norm can
        land one ulp above max_norm; the record should say post <= max_norm, as it is.
        """
        host = np.asarray(self.max_norms, np.float64)
        pre = cols["grad_norm_pre"]
        fixed = ~np.isnan(host) & np.isfinite(pre)
        if not fixed.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            coef = np.minimum(1.0, host / (pre + 1e-6))
            post = pre * coef
        cols["max_norm"] = np.where(np.isnan(host), cols["max_norm"], host)
        cols["clip_coef"] = np.where(fixed, coef, cols["clip_coef"])
        cols["grad_norm_post"] = np.where(fixed, post, cols["grad_norm_post"])


class StepBuffer:
    """A staging row and a small pool of device/host buffer pairs, recycled once written.

    The staging row's fields are views made once (`loss`, `pre`, `post`, `coef`, `threshold`,
    `per_param`), so the hot path passes them as `out=` without creating tensors.
    """

    def __init__(self, device: torch.device, n_params: int, capacity: int, slots: int = 3) -> None:
        self.device = device
        self.capacity = capacity
        self.n_params = n_params
        width = N_ROW_FIELDS + n_params
        self.is_cuda = device.type == "cuda"
        self.stage = torch.zeros(width, device=device)
        # 0-d views of the staging row by field name (a clipper or a new measurement writes
        # into its field with out=); the loss is 1-element, so a loss of shape () or (1,) fits.
        self.fields = {name: self.stage[i] for i, name in enumerate(ROW_FIELDS)}
        self.loss = self.stage[ROW_FIELDS.index("loss"):][:1]
        self.pre = self.fields["grad_norm_pre"]
        self.post = self.fields["grad_norm_post"]
        self.coef = self.fields["clip_coef"]
        self.threshold = self.fields["max_norm"]
        self.per_param = self.stage[N_ROW_FIELDS:]
        self.device_rows = [torch.zeros(capacity, width, device=device) for _ in range(slots)]
        # One view per row, made once: selecting a row costs as much as the copy into it.
        self._row_views = [list(rows.unbind(0)) for rows in self.device_rows]
        self.host_rows = [
            torch.zeros(capacity, width, pin_memory=True) if self.is_cuda else None
            for _ in range(slots)
        ]
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(1, slots):
            self.free.put(i)
        self.slot = 0
        self._views = self._row_views[0]
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.wall_times: list[float] = []
        self.lrs: list[list[float]] = []
        self.max_values: list[float] = []
        self.max_norms: list[float] = []
        self.started = time.monotonic()

    def clear_measurements(self) -> None:
        """NaN everywhere (the loss is written next): a step recorded without `clip()`."""
        self.stage.fill_(math.nan)

    def commit(self, step: int, epoch: int, lrs: list[float], max_value: float,
               max_norm: float = math.nan) -> None:
        """Copy the staging row into the buffer (one kernel) with the step's host values."""
        self._views[self.n].copy_(self.stage, non_blocking=True)
        self.n += 1
        self.steps.append(step)
        self.epochs.append(epoch)
        self.wall_times.append(time.time())
        self.lrs.append(lrs)
        self.max_values.append(max_value)
        self.max_norms.append(max_norm)

    def last_row(self) -> tuple[Tensor, float, int]:
        """A device copy of the last committed row's step fields, with its LR and step."""
        return self._views[self.n - 1][:N_ROW_FIELDS].clone(), self.lrs[-1][0], self.steps[-1]

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def age(self) -> float:
        return time.monotonic() - self.started

    def take(self) -> StepBatch | None:
        """Hand the filled rows over and switch to a free slot (blocks only if all are in use).

        The slot is not written again until the writer thread has read it and put it back in
        `free`, so on the CPU the batch is a view of the buffer, not a copy.
        """
        if self.n == 0:
            return None
        rows = self.device_rows[self.slot][: self.n]
        host = self.host_rows[self.slot]
        ready = None
        if host is not None:
            host_rows = host[: self.n]
            host_rows.copy_(rows, non_blocking=True)
            rows = host_rows
            ready = torch.cuda.Event()
            ready.record()
        batch = StepBatch(rows, ready, self.steps, self.epochs, self.wall_times, self.lrs,
                          self.max_values, self.max_norms, self.free, self.slot)
        self.slot = self.free.get()
        self._views = self._row_views[self.slot]
        self._reset()
        return batch
