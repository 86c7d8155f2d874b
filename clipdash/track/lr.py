"""Changing the learning rate of a run whose scheduler would otherwise undo the change.

`scale_lr` multiplies the whole schedule by one factor, so "set lr=X" means: the LR in effect
now becomes X, and every later LR is what the schedule would have given, times X / (LR now).

Chainable schedulers (StepLR, ExponentialLR, MultiplicativeLR, ...) read `group["lr"]` and
multiply it, so scaling the group is enough for them. Others recompute the LR from stored base
values every step (or at a SequentialLR milestone), so those are scaled by the same factor:

- `group["initial_lr"]` and `scheduler.base_lrs`: LambdaLR, StepLR's closed form, CosineAnnealing*,
  LinearLR, PolynomialLR, and CyclicLR's lower bound;
- `group["max_lr"]`, `group["min_lr"]`: OneCycleLR keeps its phases' end points in the groups;
- `scheduler.max_lrs`: CyclicLR's upper bound;
- `scheduler.eta_min`: CosineAnnealingLR / CosineAnnealingWarmRestarts' floor;
- `scheduler.min_lrs`, `default_min_lr`: ReduceLROnPlateau's floor, which would otherwise pull a
  lowered LR back up at its next reduction;
- `_last_lr`, so `get_last_lr()` agrees with the groups.

SequentialLR and ChainedScheduler are walked into (`_schedulers`). Every value lives in the
optimizer's or the scheduler's state_dict, so a checkpoint keeps the change.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer

GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHEDULER_LIST_ATTRS = ("base_lrs", "max_lrs", "min_lrs", "_last_lr")
SCHEDULER_SCALAR_ATTRS = ("eta_min", "default_min_lr")


def _scaled(value: Any, factor: float) -> Any:
    """`value * factor` for a number or a tensor; anything else (None, a string) unchanged."""
    if isinstance(value, Tensor):
        return value * factor
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value * factor
    return value


def _scale_scheduler(scheduler: Any, factor: float, seen: set[int]) -> None:
    if scheduler is None or id(scheduler) in seen:
        return
    seen.add(id(scheduler))
    for attr in SCHEDULER_LIST_ATTRS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list | tuple):
            setattr(scheduler, attr, [_scaled(v, factor) for v in values])
    for attr in SCHEDULER_SCALAR_ATTRS:
        if hasattr(scheduler, attr):
            setattr(scheduler, attr, _scaled(getattr(scheduler, attr), factor))
    for child in getattr(scheduler, "_schedulers", None) or ():
        _scale_scheduler(child, factor, seen)


def scale_lr(optimizer: Optimizer | None, scheduler: Any, factor: float) -> None:
    """Multiply every param group's LR, and the scheduler's notion of it, by `factor`."""
    for group in optimizer.param_groups if optimizer is not None else ():
        for key in GROUP_KEYS:
            value = group.get(key)
            if isinstance(value, Tensor):
                value.mul_(factor)  # in place: a tensor LR may be captured (capturable / fused)
            elif value is not None:
                group[key] = _scaled(value, factor)
    _scale_scheduler(scheduler, factor, set())


def current_lrs(optimizer: Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]
