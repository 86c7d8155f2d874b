"""Really skipping an optimizer step that a framework will take anyway.

Inside a framework, `Tracker.clip()` returning False changes nothing: the Trainer calls
`optimizer.step()` regardless, so the parameters and the optimizer state (Adam's moments, its
step count) move on a step whose gradients were non-finite. `StepGate` replaces the `step`
method of the object the framework steps, for the life of the run, and lets a step through only
when the last `clip()` allowed it.

Lightning passes `step` a closure that runs forward, backward and then the hooks that decide
(`on_before_optimizer_step`); the gate runs that closure itself, so the decision is known before
the real step is called, and hands the real step a closure that returns the same result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

# Optimizers that call their closure more than once per step cannot be given a cached result.
RE_EVALUATING = (torch.optim.LBFGS,)


class StepGate:
    def __init__(self, stepped: Any) -> None:
        self.stepped = stepped
        self.allow = True  # set by the adapter from each clip()
        self.skipped = 0
        self._had_own_step = "step" in vars(stepped)
        self._original: Callable[..., Any] = stepped.step
        if isinstance(stepped, RE_EVALUATING):
            self.active = False  # steps are not skipped; the adapter says so once
            return
        self.active = True

        @functools.wraps(self._original)
        def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
            return self._step(closure, **kwargs)

        # LR schedulers check for their own marker on `optimizer.step` (and warn without it);
        # functools.wraps carried it over when the original had it.
        stepped.step = step

    def _step(self, closure: Callable[[], Any] | None, **kwargs: Any) -> Any:
        if closure is None:
            return self._original(**kwargs) if self._let_through() else None
        result = closure()  # forward, backward and the hook that calls clip()
        if not self._let_through():
            return result
        return self._original(closure=lambda: result, **kwargs)

    def _let_through(self) -> bool:
        allow, self.allow = self.allow, True
        if not allow:
            self.skipped += 1
        return allow

    def remove(self) -> None:
        """Give the optimizer its own `step` back."""
        if not self.active:
            return
        self.active = False
        if self._had_own_step:
            self.stepped.step = self._original
        else:
            vars(self.stepped).pop("step", None)
