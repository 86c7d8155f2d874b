"""Steer a running run from Python: one path for `clipdash ctl`, the dashboard and scripts.

    from clipdash import control
    control.set_value("runs/exp", "max_norm", 0.5)   # waits for the trainer's acknowledgement
    control.pause("exp")                              # a run name inside ./runs works too

Commands are validated here before they are queued, validated again by the trainer (which knows
the clip mode), applied at a step boundary, and acknowledged with the step they took effect from.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from clipdash.store.commands import CommandResult, is_live, live_state, result, submit
from clipdash.store.layout import DEFAULT_RUNS_DIR, RunNotFound, resolve_run

ACTIONS = ("pause", "resume", "stop")
SETTABLE = ("max_norm", "lr", "max_value")
DEFAULT_TIMEOUT_S = 15.0


class ControlError(Exception):
    """A command that cannot be sent, or that the trainer rejected; str() is one line."""


def parse_setting(key: str, text: str | float) -> float:
    """The number a `set KEY=VALUE` carries, or ControlError saying why it is not acceptable."""
    if key not in SETTABLE:
        raise ControlError(f"unknown setting {key!r} (settable: {', '.join(SETTABLE)})")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ControlError(f"{key}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ControlError(f"{key}: must be a finite number, got {text!r}")
    if key == "lr" and value < 0:
        raise ControlError(f"lr: must be >= 0, got {text!r}")
    if key != "lr" and value <= 0:
        raise ControlError(f"{key}: must be > 0, got {text!r}")
    return value


def send(run: str | Path, action: str, key: str | None = None, value: str | float | None = None,
         *, source: str = "api", wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
         runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Queue a command and (by default) wait for the trainer to apply or reject it.

    Raises ControlError for a bad command, a run that is not running or paused, a rejection,
    or no acknowledgement within `timeout` seconds.
    """
    try:
        run_dir = resolve_run(run, runs_dir)
    except RunNotFound as exc:
        raise ControlError(str(exc)) from None
    text: str | None = None
    if action == "set":
        if key is None or value is None:
            raise ControlError("set needs KEY=VALUE, e.g. set max_norm=0.5")
        text = repr(parse_setting(key, value))
    elif action not in ACTIONS:
        raise ControlError(f"unknown action {action!r} (pause, resume, stop, set KEY=VALUE)")
    state = live_state(run_dir)
    if not is_live(state):
        raise ControlError(f"run {run_dir.name} is {state}: it takes no commands")
    command_id = submit(run_dir, action, key, text, source)
    if not wait:
        return CommandResult(command_id, "pending", None, None)
    return wait_for(run_dir, command_id, timeout)


def wait_for(run_dir: Path, command_id: int, timeout: float = DEFAULT_TIMEOUT_S) -> CommandResult:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        res = result(run_dir, command_id)
        if res.state == "applied":
            return res
        if res.state == "rejected":
            raise ControlError(f"rejected by the trainer: {res.message}")
        state = live_state(run_dir)
        if not is_live(state):
            raise ControlError(f"run {run_dir.name} became {state} before acknowledging")
        if time.monotonic() > deadline:
            raise ControlError(f"no acknowledgement from {run_dir.name} within {timeout:g} s "
                               f"(command {command_id} stays queued)")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def pause(run: str | Path, **kw: object) -> CommandResult:
    return send(run, "pause", **kw)  # type: ignore[arg-type]


def resume(run: str | Path, **kw: object) -> CommandResult:
    return send(run, "resume", **kw)  # type: ignore[arg-type]


def stop(run: str | Path, **kw: object) -> CommandResult:
    return send(run, "stop", **kw)  # type: ignore[arg-type]


def set_value(run: str | Path, key: str, value: str | float, **kw: object) -> CommandResult:
    return send(run, "set", key, value, **kw)  # type: ignore[arg-type]
