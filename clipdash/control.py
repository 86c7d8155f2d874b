"""Steer a running run from Python: one path for `clipdash ctl`, the dashboard and scripts.

    from clipdash import control
    control.set_value("runs/exp", "max_norm", 0.5)   # waits for the trainer's acknowledgement
    control.pause("exp")                              # a run name inside ./runs works too

Commands are validated here before they are queued (the value, and the keys the run declared
settable), validated again by the trainer, applied at a step boundary, and acknowledged with
the step they took effect from. A run that is not running or paused (finished, stopped, failed,
lost) is refused at once: nothing is queued for it.

Errors: ControlError (str() is one line) for a bad command, a refused run or a rejection;
ControlTimeout, its subclass, when no acknowledgement came in time (the command stays queued).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from clipdash.store import schema
from clipdash.store.commands import (
    CommandResult,
    is_live,
    live_state,
    process_gone,
    result,
    run_info,
    submit,
)
from clipdash.store.layout import DB_NAME, DEFAULT_RUNS_DIR, RunNotFound, resolve_run
from clipdash.store.schema import StoreError

ACTIONS = ("pause", "resume", "stop", "rewind")
SOURCES = ("cli", "dashboard", "api")
DEFAULT_TIMEOUT_S = 15.0
POLL_S = 0.02


class ControlError(Exception):
    """A command that cannot be sent, or that the trainer rejected; str() is one line."""


class ControlTimeout(ControlError):
    """No acknowledgement within the timeout; the command stays queued."""


def parse_setting(key: str, text: str | float) -> float:
    """The number a `set KEY=VALUE` carries, or ControlError saying why it is not acceptable.

    Which keys a run accepts is the run's to say (its meta's `settable`, checked by `send`).
    """
    if isinstance(text, bool):
        raise ControlError(f"{key}: {text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ControlError(f"{key}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ControlError(f"{key}: must be a finite number, got {text!r}")
    if value <= 0:
        # lr = 0 too: the LR is changed by scaling the schedule, and zero cannot be scaled back.
        hint = " (to stop updates, pause the run)" if key == "lr" else ""
        raise ControlError(f"{key}: must be > 0, got {text!r}{hint}")
    return value


def send(run: str | Path, action: str, key: str | None = None, value: str | float | None = None,
         *, source: str = "api", wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
         runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Queue a command and (by default) wait for the trainer to apply or reject it.

    `action` is pause, resume, stop, set (with `key` and `value`) or rewind (`key`: the step
    the restored checkpoint may be at most, default the latest alert's; `value`: batches to
    skip, default the run's `rewind_skip`). Returns the trainer's
    CommandResult (state "applied", the step it took effect from, the trainer's message), or
    with `wait=False` a "pending" one. Raises ControlError for a bad command, a run that is not
    running or paused, or a rejection; ControlTimeout after `timeout` seconds without an answer.
    """
    try:
        run_dir = resolve_run(run, runs_dir)
    except RunNotFound as exc:
        raise ControlError(str(exc)) from None
    if source not in SOURCES:
        raise ControlError(f"unknown source {source!r} ({', '.join(SOURCES)})")
    text: str | None = None
    if action == "set":
        if key is None or value is None:
            raise ControlError("set needs KEY=VALUE, e.g. set max_norm=0.5")
        text = repr(parse_setting(key, value))
    elif action == "rewind":
        key, text = (None if v is None else str(_count(name, v))
                     for name, v in (("--to", key), ("--skip", value)))
    elif action not in ACTIONS:
        raise ControlError(f"unknown action {action!r} (pause, resume, stop, rewind, "
                           "set KEY=VALUE)")
    elif key is not None or value is not None:
        raise ControlError(f"{action} takes no value")
    try:
        info = run_info(run_dir)
        state = live_state(run_dir)
    except StoreError as exc:
        raise ControlError(str(exc)) from None
    if not is_live(state):
        raise ControlError(f"run {run_dir.name} is {state}: it takes no commands")
    if process_gone(run_dir):
        # Killed within the last few seconds: the heartbeat is not stale yet, but nobody is there.
        raise ControlError(f"run {run_dir.name} is lost (its trainer process is gone): "
                           "it takes no commands")
    if action == "set":
        _check_settable(run_dir, info, key or "")
    if action == "rewind" and info.get("rewind") is False:
        raise ControlError(f"run {run_dir.name} cannot rewind: its training loop gave the "
                           "Tracker no on_rewind (clipdash run and the integrations can)")
    command_id = submit(run_dir, action, key, text, source)
    if not wait:
        return CommandResult(command_id, "pending", None, None)
    return wait_for(run_dir, command_id, timeout)


def _count(name: str, value: str | float) -> int:
    """A step or batch count: an integer >= 0."""
    try:
        number = int(str(value))
    except ValueError:
        raise ControlError(f"{name}: {value!r} is not an integer") from None
    if number < 0:
        raise ControlError(f"{name}: must be >= 0, got {value!r}")
    return number


def _check_settable(run_dir: Path, info: dict[str, object], key: str) -> None:
    """The run declares what it accepts: `settable` now, `settings` in any clip mode."""
    settable = info.get("settable")
    if not isinstance(settable, list) or key in settable:
        return  # a run that declares nothing: the trainer validates (and rejects) it
    known = info.get("settings")
    if isinstance(known, list) and key not in known:
        raise ControlError(f"unknown setting {key!r} (settable on run {run_dir.name}: "
                           f"{', '.join(map(str, settable))})")
    raise ControlError(f"{key} cannot be set on run {run_dir.name} (clip mode "
                       f"{info.get('clip_mode', '?')}; settable: {', '.join(map(str, settable))})")


def wait_for(run_dir: str | Path, command_id: int,
             timeout: float = DEFAULT_TIMEOUT_S) -> CommandResult:
    """Wait for the trainer to resolve command `command_id`; see `send` for what it raises."""
    run_dir = Path(run_dir)
    deadline = time.monotonic() + timeout
    conn = schema.connect(run_dir / DB_NAME)
    try:
        while True:
            res = result(run_dir, command_id, conn)
            if res.state == "applied":
                return res
            if res.state == "rejected":
                raise ControlError(f"rejected by {run_dir.name}: {res.message}")
            state = live_state(run_dir, conn)
            if not is_live(state):
                raise ControlError(f"run {run_dir.name} became {state} before acknowledging "
                                   f"command {command_id}")
            if time.monotonic() > deadline:
                gone = process_gone(run_dir, conn)
                why = " (its trainer process is gone)" if gone else ""
                raise ControlTimeout(
                    f"no acknowledgement from {run_dir.name} within {timeout:g} s{why}; "
                    f"command {command_id} stays queued")
            time.sleep(POLL_S)
    finally:
        conn.close()


def pause(run: str | Path, *, source: str = "api", wait: bool = True,
          timeout: float = DEFAULT_TIMEOUT_S,
          runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Pause at the next step boundary (the trainer flushes and checkpoints first)."""
    return send(run, "pause", source=source, wait=wait, timeout=timeout, runs_dir=runs_dir)


def resume(run: str | Path, *, source: str = "api", wait: bool = True,
           timeout: float = DEFAULT_TIMEOUT_S,
           runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    return send(run, "resume", source=source, wait=wait, timeout=timeout, runs_dir=runs_dir)


def stop(run: str | Path, *, source: str = "api", wait: bool = True,
         timeout: float = DEFAULT_TIMEOUT_S,
         runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Finish the current step, checkpoint, and end the run with status "stopped"."""
    return send(run, "stop", source=source, wait=wait, timeout=timeout, runs_dir=runs_dir)


def set_value(run: str | Path, key: str, value: str | float, *, source: str = "api",
              wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
              runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Set max_norm, lr, max_value (or an adaptive mode's threshold) from the next step."""
    return send(run, "set", key, value, source=source, wait=wait, timeout=timeout,
                runs_dir=runs_dir)


def rewind(run: str | Path, to: int | None = None, skip: int | None = None, *,
           source: str = "api", wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
           runs_dir: str | Path = DEFAULT_RUNS_DIR) -> CommandResult:
    """Restore the newest checkpoint at or before step `to` (default: before the latest alert)
    in the running process, skip `skip` batches, continue; the record is replaced from there."""
    return send(run, "rewind", None if to is None else str(to), skip, source=source, wait=wait,
                timeout=timeout, runs_dir=runs_dir)
