"""Run control: commands, pause, signals and the distributed exchange, at step boundaries.

It talks to the rest of the Tracker through `Host`, a narrow interface (flush, event,
checkpoint, set_state, resolve), and tells observers (a progress display) what it did:

    tracker.control.state                  # "running" | "paused" | "stopping"
    tracker.control.last_message           # "max_norm 1 -> 0.5 from step 120 (cli)" or None
    tracker.on_control(fn)                 # fn(state, message) after every applied command
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from clipdash.track import distributed
from clipdash.track.steering import Command, Outcome, Steering

PAUSE_POLL_S = 0.05
Observer = Callable[[str, str | None], None]


class Host(Protocol):
    def flush(self, wait: bool = True) -> None: ...
    def flush_due(self) -> bool: ...
    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None: ...
    def checkpoint(self, reason: str) -> None: ...
    def set_state(self, state: str) -> None: ...
    def resolve(self, command: Command, applied: bool, message: str) -> None: ...
    def rewind(self, command: Command, step: int) -> Outcome: ...


class RunControl:
    """Applies commands from `inbox` (filled by the recorder) or from rank 0's exchange."""

    def __init__(self, steering: Steering, inbox: collections.deque[Command], host: Host,
                 sync: distributed.ControlSync | None) -> None:
        self.steering = steering
        self.inbox = inbox
        self.host = host
        self.sync = sync
        self.last_message: str | None = None
        self._observers: list[Observer] = []
        self._pause_ready = False
        self._signal_pending: str | None = None  # caught, not yet exchanged (distributed)
        self._signal_handlers: dict[int, Any] = {}

    @property
    def state(self) -> str:
        if self.steering.stop_requested:
            return "stopping"
        return "paused" if self.steering.paused else "running"

    def on_control(self, fn: Observer) -> None:
        self._observers.append(fn)

    # -- at a step boundary ---------------------------------------------------------------

    def boundary(self, step: int) -> None:
        """Called by Tracker.step after the step is recorded; `step` is the next step."""
        if self.sync is not None:
            if self.sync.due(step):
                self._exchange(step)
        elif self.inbox:
            self.apply(step)
        if self.steering.paused:
            self._wait_while_paused(step)

    def apply(self, step: int, commands: list[Command] | None = None) -> None:
        """Apply `commands` (default: everything in the inbox) from `step` on."""
        queue = collections.deque(commands) if commands is not None else self.inbox
        while queue:
            cmd = queue.popleft()
            if cmd.source == "alert" and cmd.key is not None and int(cmd.key) >= step:
                continue  # an alert of a step a rewind took out of the record
            was_paused = self.steering.paused
            outcome = (self.host.rewind(cmd, step) if cmd.action == "rewind"
                       else self.steering.apply(cmd, step))
            if outcome.event is not None:
                data = dict(outcome.event, source=cmd.source, command=cmd.id)
                self.last_message = f"{outcome.message} ({_origin(cmd)})"
                kind = "rewind" if outcome.event.get("action") == "rewind" else "control"
                self.host.event(kind, self.last_message, data)
            if self.steering.paused and not was_paused:
                self._enter_pause()  # acknowledged once flushed, checkpointed and marked paused
            elif self.steering.paused and outcome.event is not None:
                self.host.checkpoint("pause")  # a change made while paused is on disk at once
            elif was_paused and not self.steering.paused and not self.steering.stop_requested:
                self.host.set_state("running")
            if cmd.id > 0:
                self.host.resolve(cmd, outcome.applied, outcome.message)
            if outcome.event is not None:
                for fn in self._observers:
                    fn(self.state, self.last_message)

    def drop_alerts_from(self, step: int) -> None:
        """Forget queued alert actions of steps at or after `step` (a rewind removed them)."""
        for _ in range(len(self.inbox)):  # the writer may append meanwhile: rotate, not rebuild
            cmd = self.inbox.popleft()
            if not (cmd.source == "alert" and cmd.key is not None and int(cmd.key) >= step):
                self.inbox.append(cmd)

    def _exchange(self, step: int) -> None:
        """Distributed: apply rank 0's new commands (and its caught signal) on every rank."""
        assert self.sync is not None
        mine: list[Command] = []
        if self.sync.rank == 0:
            while self.inbox:
                mine.append(self.inbox.popleft())
        signal_name, self._signal_pending = self._signal_pending, None
        commands, stop, flush = self.sync.exchange(mine, signal_name is not None,
                                                   self.host.flush_due())
        if flush:  # every rank hands its steps over here: the loss mean is a collective
            self.host.flush(wait=False)
        if stop:  # rank 0 caught SIGTERM / SIGINT (torchrun forwards them to every rank)
            commands.append(Command(0, "signal", "stop", None, signal_name or "signal"))
        if commands:
            self.apply(step, commands)

    def _enter_pause(self) -> None:
        self.host.flush()
        self.host.checkpoint("pause")
        self.host.set_state("paused")
        self._pause_ready = True

    def _wait_while_paused(self, step: int) -> None:
        """Block at this step boundary, applying commands, until resumed or stopped.

        The writer thread keeps beating the heartbeat meanwhile, so the run reads "paused".
        """
        if not self._pause_ready:
            self._enter_pause()
        while self.steering.paused:
            time.sleep(PAUSE_POLL_S)
            if self.sync is not None:
                self._exchange(step)  # every rank polls in lockstep; they all leave together
            elif self.inbox:
                self.apply(step)
        self._pause_ready = False

    # -- signals --------------------------------------------------------------------------

    def handle_signals(self) -> None:
        """SIGINT and SIGTERM finish the current step and stop cleanly; a second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.sync is not None:
                # Every rank must stop at the same step: the stop waits for the next exchange.
                # (torchrun forwards the signal it gets, so a second one is not an abort here.)
                self._signal_pending = signal.Signals(signum).name
                return
            if signum == signal.SIGINT and self.steering.stop_requested:
                raise KeyboardInterrupt
            self.steering.stop_requested = True
            self.steering.paused = False
            # Recorded as a control event at the step boundary (a deque append is signal-safe).
            self.inbox.append(Command(0, "signal", "stop", None, signal.Signals(signum).name))

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._signal_handlers[sig] = signal.signal(sig, on_signal)

    def restore_signals(self) -> None:
        for sig, handler in self._signal_handlers.items():
            signal.signal(sig, handler)
        self._signal_handlers.clear()

    def close(self, step: int) -> None:
        """Record a signal that came after the last boundary; drop the other queued commands
        (the recorder rejects them in the store)."""
        late = [c for c in self.inbox if c.source == "signal"]
        self.inbox.clear()
        if late:
            self.apply(step, late)


def _origin(cmd: Command) -> str:
    """Who asked, as the event message says it: cli, dashboard, SIGTERM, alert at step 41."""
    if cmd.source == "signal" and cmd.value:
        return cmd.value
    if cmd.source == "alert":
        return f"alert at step {cmd.key}"
    return cmd.source
