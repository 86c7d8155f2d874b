"""Changing the learning rate of a run whose scheduler would otherwise undo the change.

Chainable schedulers (StepLR, ExponentialLR, ...) read `group["lr"]` and multiply it, so scaling
the group is enough. Closed-form ones (LambdaLR, CyclicLR, OneCycleLR, CosineAnnealingLR's
bases) recompute the LR from stored base values every step: those are scaled by the same factor,
so the whole schedule is scaled and the change survives the next `scheduler.step()`.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHEDULER_LIST_ATTRS = ("base_lrs", "max_lrs", "min_lrs", "_last_lr")
SCHEDULER_SCALAR_ATTRS = ("eta_min",)


def _scale_scheduler(scheduler: Any, factor: float, seen: set[int]) -> None:
    if scheduler is None or id(scheduler) in seen:
        return
    seen.add(id(scheduler))
    for attr in SCHEDULER_LIST_ATTRS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list):
            setattr(scheduler, attr, [v * factor for v in values])
    for attr in SCHEDULER_SCALAR_ATTRS:
        value = getattr(scheduler, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(scheduler, attr, value * factor)
    for child in getattr(scheduler, "_schedulers", None) or ():
        _scale_scheduler(child, factor, seen)


def scale_lr(optimizer: Optimizer, scheduler: Any, factor: float) -> None:
    """Multiply every param group's LR, and the scheduler's notion of it, by `factor`."""
    for group in optimizer.param_groups:
        for key in GROUP_KEYS:
            if key in group and isinstance(group[key], int | float):
                group[key] = group[key] * factor
    _scale_scheduler(scheduler, factor, set())


def current_lrs(optimizer: Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]
