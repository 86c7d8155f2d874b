"""What both callbacks share: one Tracker driven from a framework's hooks.

A callback translates its framework's events into four calls here: `start` (training begins;
the framework's own clipping is handed over to clipdash), `clip` (gradients complete, before
the optimizer step), `end_step` (the optimizer step and the scheduler step are done) and
`finish` / `fail`. Everything that is not the framework's business lives here: choosing the clip
settings, skipping non-finite steps for real, evals, and closing the record when the process
dies without the framework's end hook.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from clipdash.integrations._gate import StepGate
from clipdash.integrations._wrappers import NamedView, unwrap_optimizer, unwrap_scheduler
from clipdash.track.tracker import Tracker

log = logging.getLogger("clipdash")

# Set by the callback from the framework; passing them too would be ambiguous.
RESERVED = ("model", "optimizer", "scheduler", "run_dir", "name", "runs_dir", "max_norm",
            "start_step", "total_steps", "on_rewind")
EXIT_MESSAGE = "the process exited during training, without the framework's end of training"


def check_tracker_options(options: dict[str, Any]) -> None:
    """Fail at construction, not an hour later when training starts, on a misspelt option."""
    accepted = set(inspect.signature(Tracker.__init__).parameters) - {"self", *RESERVED}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"ClipdashCallback got unknown Tracker option(s) {', '.join(unknown)} "
                        f"(accepted: {', '.join(sorted(accepted))})")


@dataclass(frozen=True)
class FrameworkClip:
    """The clipping the framework was configured to do, which clipdash takes over."""

    mode: str  # "norm" | "value" | "none"
    value: float
    setting: str  # how the user wrote it, for the log line: "TrainingArguments(max_grad_norm=1.0)"


def clip_settings(max_norm: float | None, options: dict[str, Any],
                  framework: FrameworkClip) -> dict[str, Any]:
    """Tracker clip keywords: the user's explicit choice, else the framework's own setting."""
    if max_norm is not None:
        return {"clip": options.get("clip", "norm"), "max_norm": float(max_norm)}
    if "clip" in options:
        return {"clip": options["clip"]}
    if framework.mode == "norm":
        return {"clip": "norm", "max_norm": framework.value}
    if framework.mode == "value":
        return {"clip": "value", "max_value": framework.value}
    return {"clip": "none"}


def describe(settings: dict[str, Any], options: dict[str, Any]) -> str:
    mode = settings["clip"]
    if mode == "norm":
        return f"clip by norm, max_norm={settings['max_norm']:g}"
    if mode == "value":
        return f"clip by value, max_value={settings.get('max_value', options.get('max_value')):g}"
    return "no clipping" if mode == "none" else f"clip mode {mode}"


def newest_at_most(saved: Mapping[Any, int], before: int) -> Any | None:
    """The key of `saved` ({checkpoint: steps done}) with the most steps <= `before`; among
    equals the one listed last (the newest save)."""
    best, best_step = None, -1
    for key, step in saved.items():
        if best_step <= step <= before:
            best, best_step = key, step
    return best


class TrackedRun:
    """The Tracker of one `train()` / `fit()` call, and the patches made for it."""

    def __init__(self, name: str | None, runs_dir: str | Path, run_dir: str | Path | None,
                 max_norm: float | None, options: dict[str, Any]) -> None:
        check_tracker_options(options)
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
        self.name = name
        self.runs_dir = runs_dir
        self.run_dir = run_dir
        self.max_norm = max_norm
        self.options = options
        self.tracker: Tracker | None = None
        self.gate: StepGate | None = None
        self._loss: Tensor | float | None = None  # this step's loss, summed over micro-batches
        self._parts = 0
        self.clipped_this_step = False

    # -- start ------------------------------------------------------------------------------

    def start(self, model: nn.Module, optimizer: Any, scheduler: Any, stepped: Any,
              framework: FrameworkClip, *, start_step: int, total_steps: int | None,
              meta: dict[str, Any], leader: bool,
              on_rewind: Callable[[int, int], int | None] | None = None) -> Tracker:
        """Open the record; `stepped` is the object whose `step()` the framework calls, or None
        where the framework already skips non-finite steps (a GradScaler)."""
        settings = clip_settings(self.max_norm, self.options, framework)
        options = {k: v for k, v in self.options.items() if k not in settings}
        self.tracker = Tracker(
            NamedView(model), unwrap_optimizer(optimizer), unwrap_scheduler(scheduler),
            name=self.name, runs_dir=self.runs_dir, run_dir=self.run_dir,
            start_step=start_step, total_steps=total_steps,
            meta={**meta, **options.pop("meta", {})}, on_rewind=on_rewind, **settings,
            **options)
        self.gate = StepGate(stepped) if stepped is not None else None
        if leader:
            self._announce(framework, settings, options)
        atexit.register(self._at_exit)
        return self.tracker

    def _announce(self, framework: FrameworkClip, settings: dict[str, Any],
                  options: dict[str, Any]) -> None:
        assert self.tracker is not None
        what = describe(settings, options)
        if framework.mode != "none":
            log.warning("clipdash: %s is turned off; clipdash clips instead (%s), once, and "
                        "records the true pre-clip norm in %s", framework.setting, what,
                        self.tracker.run_dir)
        else:
            log.info("clipdash: recording in %s (%s)", self.tracker.run_dir, what)
        if self.gate is not None and not self.gate.active:
            log.warning("clipdash: %s re-evaluates its closure; non-finite steps are recorded "
                        "but not skipped", type(self.gate.stepped).__name__)

    # -- every step -------------------------------------------------------------------------

    def clip(self) -> None:
        """Gradients are final: measure, clip, and let the coming optimizer step through or not."""
        assert self.tracker is not None
        allow = self.tracker.clip()
        if self.gate is not None:
            self.gate.allow = allow
        self.clipped_this_step = True

    def add_loss(self, loss: Tensor | float | None) -> None:
        """One micro-batch's loss (the step's loss is their mean, or their sum: see end_step)."""
        if loss is None:
            return
        value = loss.detach() if isinstance(loss, Tensor) else loss
        self._loss = value if self._loss is None else self._loss + value
        self._parts += 1

    def end_step(self, epoch: int, mean: bool) -> bool:
        """Record the step that just ended; True when training must stop."""
        assert self.tracker is not None
        loss: Tensor | float = math.nan if self._loss is None else self._loss
        if mean and self._parts > 1:
            loss = loss / self._parts
        self._loss, self._parts, self.clipped_this_step = None, 0, False
        self.tracker.step(loss, epoch)
        return self.tracker.should_stop

    def log_eval(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None and metrics:
            self.tracker.log_eval(metrics, step=max(step, 0))

    # -- the end ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def finish(self) -> None:
        """The framework ended training normally: finished, or stopped if clipdash stopped it."""
        self._close(None, None)

    def stop(self, message: str) -> None:
        """The framework ended training early, at a step boundary, for a reason of its own."""
        self._close("stopped", message)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self._close("stopped", "interrupted", checkpoint=False)
        else:
            self._close("failed", f"{type(exc).__name__}: {exc}")

    def _at_exit(self) -> None:
        exc = getattr(sys, "last_value", None)  # an uncaught exception is ending the process
        message = f"{type(exc).__name__}: {exc}" if exc is not None else EXIT_MESSAGE
        self._close("failed", message)

    def _close(self, state: str | None, message: str | None, checkpoint: bool = True) -> None:
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return
        atexit.unregister(self._at_exit)
        if self.gate is not None:
            self.gate.remove()
        tracker.close(state, message, checkpoint=checkpoint)
