"""The writer thread: everything slow (SQLite, TensorBoard, polling for commands) happens here.

The training thread only enqueues. Items are processed in order, so an eval or event enqueued
after a batch of steps lands after them. The thread also beats the heartbeat (so a paused run is
not "lost") and polls the commands table, handing new commands to the trainer through a deque
that the trainer checks at step boundaries for the cost of a truth test.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipdash.store.writer import RunWriter
from clipdash.track.buffer import StepBatch
from clipdash.track.tensorboard import TensorBoardSink

HEARTBEAT_S = 1.0
COMMAND_POLL_S = 0.1


@dataclass(frozen=True)
class Command:
    id: int
    source: str
    action: str
    key: str | None
    value: str | None


class WriterThread(threading.Thread):
    def __init__(self, store: RunWriter | None, tensorboard: TensorBoardSink | None,
                 with_params: bool = True) -> None:
        super().__init__(name="clipdash-writer", daemon=True)
        self.store = store
        self.tensorboard = tensorboard
        self.with_params = with_params
        self.items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.inbox: collections.deque[Command] = collections.deque()
        self.error: BaseException | None = None
        self._seen_commands: set[int] = set()
        self._last_beat = 0.0
        self._last_poll = 0.0

    # -- called from the training thread ---------------------------------------------------

    def put(self, kind: str, payload: Any = None) -> None:
        self.items.put((kind, payload))

    def barrier(self, timeout: float | None = None) -> None:
        """Return once everything enqueued so far is written (and flushed to TensorBoard)."""
        done = threading.Event()
        self.put("barrier", done)
        done.wait(timeout)

    def close(self) -> None:
        self.put("close")
        self.join()

    # -- the thread ------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                kind, payload = self.items.get(timeout=COMMAND_POLL_S)
            except queue.Empty:
                kind, payload = "idle", None
            if kind == "close":
                self._guard(self._flush)
                return
            self._guard(self._handle, kind, payload)
            now = time.monotonic()
            if now - self._last_poll >= COMMAND_POLL_S:
                self._last_poll = now
                self._guard(self._poll_commands)
            if now - self._last_beat >= HEARTBEAT_S and self.store is not None:
                self._last_beat = now
                self._guard(self.store.heartbeat)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "steps":
            self._write_steps(payload)
        elif kind == "eval":
            step, metrics = payload
            if self.store:
                self.store.add_eval(step, metrics)
            if self.tensorboard:
                self.tensorboard.write_eval(step, metrics)
        elif kind == "event":
            step, event_kind, message, data = payload
            if self.store:
                self.store.add_event(step, event_kind, message, data)
            if self.tensorboard:
                self.tensorboard.write_event(step, event_kind, message)
        elif kind == "call":  # a store/TensorBoard operation that must keep its place in line
            payload(self.store, self.tensorboard)
        elif kind == "resolve":
            if self.store:
                self.store.resolve_command(*payload)
        elif kind == "barrier":
            self._flush()
            payload.set()

    def _write_steps(self, batch: StepBatch) -> None:
        cols = batch.columns(self.with_params)
        if self.store:
            self.store.append_steps(cols)
        if self.tensorboard:
            self.tensorboard.write_steps(cols)

    def _flush(self) -> None:
        if self.tensorboard:
            self.tensorboard.flush()

    def _poll_commands(self) -> None:
        if self.store is None:
            return
        for row in self.store.pending_commands():
            if row[0] not in self._seen_commands:
                self._seen_commands.add(row[0])
                self.inbox.append(Command(*row))

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        """A failing write must not kill the thread (the trainer would block on a barrier)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported once, training goes on
            if self.error is None:
                self.error = exc
                print(f"clipdash: recording failed: {exc!r}", file=sys.stderr)
            if isinstance(args[-1] if args else None, threading.Event):
                args[-1].set()
