"""What a step with a non-finite gradient norm does: skip, stop, or continue.

Skipping is done on the device where the optimizers allow it: fused Adam, AdamW, Adagrad and
fused SGD without momentum honour `found_inf` (as under GradScaler) and skip the whole update,
state included. Then nothing is read back on the host. Otherwise the one documented host read
(the pre-clip norm) decides, and the gradients of a skipped step are zeroed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

# Fused SGD with momentum is left out: a skipped first step leaves its momentum buffer
# uninitialised memory.
_SKIPS_ON_DEVICE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.SGD)
EventFn = Callable[[str, str], None]


def skips_on_device(optimizers: Sequence[Optimizer]) -> bool:
    """True when every optimizer skips a non-finite step on the device (no host read)."""
    for opt in optimizers:
        if type(opt) not in _SKIPS_ON_DEVICE or not opt.param_groups:
            return False
        for group in opt.param_groups:
            if not group.get("fused") or (isinstance(opt, torch.optim.SGD)
                                          and group.get("momentum", 0) != 0):
                return False
    return True


class NonfiniteGuard:
    """Applies the `nonfinite` policy after the norms are measured; counts non-finite steps."""

    def __init__(self, policy: str, optimizers: Sequence[Optimizer], device: torch.device,
                 event: EventFn) -> None:
        self.policy = policy
        self.optimizers = optimizers
        self.event = event
        self.on_device = policy == "skip" and skips_on_device(optimizers)
        self.stop_requested = False
        self._found_inf = torch.zeros((), device=device)
        self._device_count = torch.zeros((), device=device)
        self._host_count = 0
        self._last_finite = True

    def after_measure(self, pre: Tensor, grads: list[Tensor], step: int) -> bool:
        """False when the optimizer step must be skipped by the caller."""
        if self.on_device:
            torch.logical_not(torch.isfinite(pre), out=self._found_inf)
            self._device_count.add_(self._found_inf)
            for opt in self.optimizers:
                opt.found_inf = self._found_inf  # type: ignore[attr-defined]
            return True
        if self.policy == "continue":
            return True
        # The one host read on the hot path (documented in DESIGN.md): on CUDA it waits for the
        # norm; reading the value is cheaper than an isfinite kernel plus the same wait.
        finite = math.isfinite(pre.item())
        if not finite:
            self._host_count += 1
            if grads:
                torch._foreach_zero_(grads)
            if self.policy == "stop":
                self.stop_requested = True
                self.event("nonfinite", f"non-finite gradient norm at step {step}: stopping")
            elif self._last_finite:  # one event per streak; every step's `finite` is recorded
                self.event("nonfinite", f"non-finite gradient norm at step {step}: step "
                           "skipped, and every step until the gradients are finite again")
        self._last_finite = finite
        return finite

    def recheck(self) -> None:
        """The optimizers' groups changed: a group that cannot skip by itself ends the device
        skip (the host read takes over)."""
        if self.on_device and not skips_on_device(self.optimizers):
            self._host_count = self.count
            self._device_count.zero_()
            self.on_device = False
            self.release()

    @property
    def count(self) -> int:
        """Non-finite steps so far (with the device skip: one read of a device counter)."""
        if not self.on_device:
            return self._host_count
        return self._host_count + int(self._device_count.item())

    def release(self) -> None:
        """Hand the optimizers back without our found_inf (they must not keep skipping)."""
        for opt in self.optimizers:
            opt.__dict__.pop("found_inf", None)
