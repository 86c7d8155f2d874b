"""Applying commands from the commands table at a step boundary (the trainer's side of control).

Validation happens again here because only the trainer knows the clip mode and the current LR.
Each command ends applied or rejected, with the step from which it takes effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from clipdash.track.clippers import Clipper
from clipdash.track.lr import current_lrs, scale_lr


@dataclass(frozen=True)
class Command:
    """A row of the commands table (id > 0), or a caught signal (id 0, source "signal")."""

    id: int
    source: str
    action: str
    key: str | None
    value: str | None


@dataclass
class Outcome:
    applied: bool
    message: str
    event: dict[str, Any] | None = None  # recorded as a control event when applied


class Steering:
    """Run-control state: paused / stop requested, and the settable values."""

    def __init__(self, clipper: Clipper, optimizer: Optimizer | list[Optimizer],
                 scheduler: Any) -> None:
        self.clipper = clipper
        self.optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
        self.schedulers = scheduler if isinstance(scheduler, list) else [scheduler]
        self.paused = False
        self.stop_requested = False

    def settable(self) -> tuple[str, ...]:
        return (*self.clipper.settable, "lr")

    def apply(self, cmd: Command, step: int) -> Outcome:
        """`step` is the first step the command affects."""
        if cmd.action == "pause":
            if self.paused:
                return Outcome(True, f"already paused before step {step}")
            self.paused = True
            return Outcome(True, f"paused before step {step}", {"action": "pause"})
        if cmd.action == "resume":
            if not self.paused:
                return Outcome(True, "not paused: nothing to resume")
            self.paused = False
            return Outcome(True, f"resumed at step {step}", {"action": "resume"})
        if cmd.action == "stop":
            self.stop_requested = True
            self.paused = False
            return Outcome(True, f"stopping before step {step}", {"action": "stop"})
        if cmd.action == "set":
            return self._set(cmd.key or "", cmd.value, step)
        return Outcome(False, f"unknown action {cmd.action!r}")

    def _set(self, key: str, text: str | None, step: int) -> Outcome:
        if key not in self.settable():
            mode = self.clipper.mode
            return Outcome(False, f"{key} cannot be set on this run (clip mode {mode}; "
                                  f"settable: {', '.join(self.settable())})")
        try:
            value = float(text if text is not None else "")
        except ValueError:
            return Outcome(False, f"{key}: {text!r} is not a number")
        if not math.isfinite(value) or value <= 0:
            # lr = 0 too: a schedule scaled by zero can never be scaled back (pause instead).
            return Outcome(False, f"{key}: must be a finite number > 0, got {text}")
        if key == "lr":
            old = current_lrs(self.optimizers[0])[0]
            if not old > 0 or not math.isfinite(old):
                return Outcome(False, f"lr: the current LR is {old:g}, so the schedule cannot "
                                      "be scaled")
            # Every group of every optimizer keeps its ratio to group 0 (one factor for all).
            for opt in self.optimizers:
                scale_lr(opt, None, value / old)
            for sched in self.schedulers:
                scale_lr(None, sched, value / old)
        else:
            try:  # clippers check their own ranges (an adaptive percentile must be <= 100)
                old = self.clipper.set(key, value)
            except (ValueError, KeyError) as exc:
                return Outcome(False, f"{key}: {exc}")
        data = {"action": "set", "key": key, "old": old, "new": value}
        return Outcome(True, f"{key} {old:g} -> {value:g} from step {step}", data)
