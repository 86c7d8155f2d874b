"""The recorder: the run directory, its lock, the store's setup and resume, and the writer thread.

The training thread only enqueues typed items (`items.py`); the writer thread writes
them, in order, to the sinks (the store, TensorBoard: `Sink`), beats the heartbeat and polls the
commands table into `inbox`, a deque the trainer checks at step boundaries for the cost of a
truth test.

Nothing fails silently: the first failing write stops the recording of steps (no step is
recorded past a gap), marks the run failed with the reason where the store can still be
written, and is raised to the training thread as `RecordError` at its next `step()`,
`flush()` or `close()`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipdash.store.layout import DB_NAME, is_run_dir
from clipdash.store.lock import RunLock, acquire
from clipdash.store.writer import RunWriter
from clipdash.track.alerts import METRICS, Alert, AlertOptions, SpikeWatch
from clipdash.track.items import (
    Barrier,
    Close,
    Eval,
    Event,
    Item,
    ParamsAdded,
    RejectPending,
    Resolve,
    Rewind,
    State,
    Steps,
)
from clipdash.track.steering import Command

HEARTBEAT_S = 1.0
COMMAND_POLL_S = 0.1
BARRIER_POLL_S = 0.1
MAX_COALESCED = 64  # queued batches of steps written as one (a writer that fell behind)


class RecordError(RuntimeError):
    """Recording a run failed (disk full, read-only directory, ...); str() is one line."""


class RunExists(RuntimeError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


class Sink(Protocol):
    """Where records go. The store also carries the run's status and commands (`Recorder`)."""

    def write_steps(self, cols: dict[str, Any]) -> None: ...
    def write_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    def write_event(self, step: int | None, kind: str, message: str) -> None: ...
    def set_param_names(self, names: list[str]) -> None: ...
    def purge(self, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class StoreSink:
    """The run's SQLite store as a sink."""

    def __init__(self, store: RunWriter) -> None:
        self.store = store

    def write_steps(self, cols: dict[str, Any]) -> None:
        self.store.append_steps(cols)

    def write_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.store.add_eval(step, metrics)

    def write_event(self, step: int | None, kind: str, message: str,
                    data: dict[str, Any] | None = None) -> None:
        self.store.add_event(step, kind, message, data)

    def set_param_names(self, names: list[str]) -> None:
        pass  # the params table is written by the recorder, with shapes and first steps

    def purge(self, step: int) -> None:
        """A rewind: forget the steps from `step` on; the alert and rewind events stay."""
        self.store.truncate_after(step - 1, keep=("resume", "alert", "rewind"))

    def flush(self) -> None:
        pass  # every write is its own transaction

    def close(self) -> None:
        self.store.close()


def _cause(exc: BaseException) -> str:
    """One line: the OS's words for an OSError ("No space left on device"), else str()."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class Setup:
    """What the Tracker tells the recorder when it starts."""

    run_dir: Path
    record: bool
    resume: bool
    overwrite: bool
    start_step: int
    total_steps: int | None
    meta: dict[str, Any]
    tensorboard: bool
    per_param_scalars: bool
    record_params: bool
    nonfinite_events: bool = False  # the writer reports non-finite streaks (device skip)
    alerts: AlertOptions | None = None  # the writer checks every step for spikes (alerts.py)


class Recorder(threading.Thread):
    """Owns the run directory while the run lives; see the module docstring."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(name="clipdash-writer", daemon=True)
        self.setup = setup
        self.run_dir = setup.run_dir
        self.items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.inbox: collections.deque[Command] = collections.deque()
        self.error: RecordError | None = None
        self.reported = False  # the error was raised to the training thread
        self.store: RunWriter | None = None
        self.sinks: list[Sink] = []
        self.lock: RunLock | None = None
        self.prior_names: list[str] = []
        self.resumed = False
        self._last_finite = True
        self._prior_first: dict[str, int] = {}
        self._kept_events: list[tuple[int, str, str]] = []
        self._seen_commands: set[int] = set()
        self._last_beat = 0.0
        self._last_poll = 0.0
        self.watch = SpikeWatch(setup.alerts) if setup.alerts and setup.record else None
        self.last_alert: int | None = None  # the step of the latest alert
        self._checked = threading.Condition()
        if setup.record:
            self._open_store()

    # -- setup (training thread, before the thread starts) ---------------------------------

    def _open_store(self) -> None:
        s = self.setup
        try:
            s.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = acquire(s.run_dir)  # RunLocked names the holder
        except OSError as exc:  # a read-only or full filesystem, a file where a folder goes
            raise RecordError(f"clipdash: cannot record in {s.run_dir}: {_cause(exc)}") from exc
        try:
            exists = is_run_dir(s.run_dir)
            if exists and s.overwrite:
                self._remove_record()
                exists = False
            elif exists and not s.resume:
                raise RunExists(
                    f"{s.run_dir} already holds a run: pass resume=True (or the checkpoint's "
                    "start_step) to continue it, or overwrite=True to replace it")
            self.store = RunWriter(s.run_dir, resume=exists)
            self.resumed = exists
            if exists:
                # What a crash left after start_step is replaced, not duplicated.
                self.store.truncate_after(s.start_step - 1)
                self.store.reject_pending(
                    f"expired: the run restarted at step {s.start_step}")
                # TensorBoard's purge marker drops everything at >= start_step from older
                # files, including the events recorded at start_step before the checkpoint.
                self._kept_events = self.store.events_at(s.start_step)
                prior = self.store.params()
                self.prior_names = [name for name, _ in prior]
                # A parameter that appeared before the resume point keeps its first step.
                self._prior_first = {name: first for name, first in prior
                                     if first is not None and first < s.start_step}
        except (OSError, sqlite3.Error) as exc:
            self._abandon()
            raise RecordError(f"clipdash: cannot record in {s.run_dir}: {_cause(exc)}") from exc
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.lock is not None:
            self.lock.release()

    def _remove_record(self) -> None:
        for path in self.run_dir.iterdir():
            if path.name.startswith((DB_NAME, "events.out.tfevents.")) and path.is_file():
                path.unlink()

    def begin(self, names: list[str], shapes: list[tuple[int, ...]],
              first_steps: list[int | None], meta: dict[str, Any]) -> None:
        """Write the run's parameters, meta and status, open TensorBoard, start the thread."""
        s = self.setup
        try:
            if self.store is not None:
                self.store.set_params([])
                for i, (name, shape, first) in enumerate(
                        zip(names, shapes, first_steps, strict=True)):
                    self.store.add_params([(name, shape)],
                                          self._prior_first.get(name, first), i)
                self.store.set_meta(**meta, **s.meta)
                self.store.start(s.total_steps)
                self.sinks.append(StoreSink(self.store))
                if s.tensorboard:
                    from clipdash.track.tensorboard import TensorBoardSink  # noqa: PLC0415

                    board = TensorBoardSink(s.run_dir, names, s.per_param_scalars,
                                            purge_from=s.start_step if self.resumed else None)
                    for step, kind, message in self._kept_events:
                        board.write_event(step, kind, message)
                    self.sinks.append(board)
        except BaseException:
            self._close_sinks()
            raise
        self.start()

    # -- the training thread's side --------------------------------------------------------

    def put(self, item: Item) -> None:
        self.items.put(item)

    def check(self) -> None:
        """Raise the recording error (once the writer hit one)."""
        if self.error is not None:
            self.reported = True
            raise self.error

    def barrier(self) -> None:
        """Return once everything enqueued so far is written (never hangs: the thread may end)."""
        item = Barrier()
        self.put(item)
        while not item.done.wait(BARRIER_POLL_S):
            if not self.is_alive():
                self._fail(RuntimeError("the writer thread ended"))
                return

    def finish(self) -> None:
        """Write what is queued, close the sinks, release the lock."""
        if self.is_alive():
            self.put(Close())
            self.join()
        self._close_sinks()
        if self.lock is not None:
            self.lock.release()

    def abort(self) -> None:
        """Setup failed: release everything, and leave no half-made record of a new run."""
        self.finish()
        if self.setup.record and not self.resumed:
            for suffix in ("", "-wal", "-shm"):
                path = self.run_dir / (DB_NAME + suffix)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- the thread ------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                item: Item | None = self.items.get(timeout=COMMAND_POLL_S)
            except queue.Empty:
                item = None
            if isinstance(item, Steps):
                batches, item = self._take_steps(item)
                self._guard(self._write_steps, batches)
            if isinstance(item, Close):
                self._guard(self._flush)
                return
            if item is not None:
                self._guard(self._handle, item)
                if isinstance(item, Barrier):
                    item.done.set()
            now = time.monotonic()
            if now - self._last_poll >= COMMAND_POLL_S:
                self._last_poll = now
                self._guard(self._poll_commands)
            if now - self._last_beat >= HEARTBEAT_S and self.store is not None:
                self._last_beat = now
                self._guard(self.store.heartbeat)

    def _take_steps(self, first: Steps) -> tuple[list[Steps], Item | None]:
        """`first` and the batches of steps queued right behind it (one write for all: with a
        steering alert action every step is its own batch); the next other item, if taken."""
        batches = [first]
        if self.watch is None or not self.watch.options.steers:
            return batches, None  # batches are already large: one write each, as handed over
        while len(batches) < MAX_COALESCED:
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                return batches, None
            if not isinstance(item, Steps):
                return batches, item
            batches.append(item)
        return batches, None

    def _write_steps(self, batches: list[Steps]) -> None:
        try:
            if self.error is not None:  # nothing is recorded past a gap
                return
            parts = [b.batch.columns(self.setup.record_params) for b in batches]
        finally:
            for b in batches:  # the training thread may be waiting for a free slot
                b.batch.release_slot()
        cols = parts[0] if len(parts) == 1 else {
            key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        # Checked before the (slower) sink writes: a steering action waits for the verdict.
        alerts = self.watch.check(cols) if self.watch is not None else []
        self._queue_actions(alerts)
        for sink in self.sinks:
            sink.write_steps(cols)
        if self.setup.nonfinite_events:
            self._nonfinite_events(cols)
        for alert in alerts:
            self._handle(Event(alert.step, "alert", alert.message, alert.data))

    def _handle(self, item: Item) -> None:
        if isinstance(item, Steps):
            self._write_steps([item])
            return
        if self.error is not None:
            return  # the run is marked failed: later records would describe a broken run
        if isinstance(item, Eval):
            for sink in self.sinks:
                sink.write_eval(item.step, item.metrics)
        elif isinstance(item, Event):
            for sink in self.sinks:
                if isinstance(sink, StoreSink):
                    sink.write_event(item.step, item.kind, item.message, item.data)
                else:
                    sink.write_event(item.step, item.kind, item.message)
        elif isinstance(item, Barrier):
            self._flush()
        elif self.store is None:
            return
        elif isinstance(item, State):
            self.store.set_state(item.state, item.message)
        elif isinstance(item, Resolve):
            self.store.resolve_command(item.command_id, item.applied, item.step, item.message)
        elif isinstance(item, ParamsAdded):
            start = len(item.names) - len(item.shapes)
            self.store.add_params(list(zip(item.names[start:], item.shapes, strict=True)),
                                  item.first_step, start)
            self.store.set_meta(n_groups=item.n_groups)
            for sink in self.sinks:
                sink.set_param_names(item.names)
        elif isinstance(item, RejectPending):
            self.store.reject_pending(item.message)
        elif isinstance(item, Rewind):
            self._rewind(item.step)

    # -- alerts and rewinds -----------------------------------------------------------------

    def _queue_actions(self, alerts: list[Alert]) -> None:
        """One command per alerted step when the action steers the run (the training thread
        applies it at its next boundary, like a `clipdash ctl` command); wake its wait."""
        if self.watch is None:
            return
        options = self.watch.options
        steps: list[int] = []
        for alert in alerts:
            self.last_alert = alert.step
            if options.steers and alert.step not in steps:
                steps.append(alert.step)
                self.inbox.append(Command(0, "alert", options.action, str(alert.step),
                                          str(options.rewind_skip)))
        with self._checked:
            self._checked.notify_all()

    def wait_checked(self, step: int) -> None:
        """Return once step `step` was checked for alerts (or the writer cannot check it)."""
        watch = self.watch
        if watch is None:
            return
        with self._checked:
            while watch.checked < step and self.error is None and self.is_alive():
                self._checked.wait(BARRIER_POLL_S)

    def _rewind(self, step: int) -> None:
        """The run continues from the state after `step` steps: what was recorded from `step`
        on is replaced (the alerts and rewind events stay), in the store and in TensorBoard."""
        assert self.store is not None
        for sink in self.sinks:
            sink.purge(step)
        if self.watch is not None:
            metrics = [metric for metric, _ in METRICS]
            self.watch.reset(self.store.history(metrics, step, self.watch.options.window), step)

    def _nonfinite_events(self, cols: dict[str, Any]) -> None:
        """One event per streak of non-finite steps, from the record (the device skipped them:
        the training thread never learnt which steps they were)."""
        for step, finite in zip(cols["step"].tolist(), cols["finite"].tolist(), strict=True):
            if not finite and self._last_finite:
                self._handle(Event(step, "nonfinite", f"non-finite gradient norm at step "
                                   f"{step}: step skipped on the device, and every step until "
                                   "the gradients are finite again"))
            self._last_finite = bool(finite)

    def _flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def _poll_commands(self) -> None:
        if self.store is None or self.error is not None:
            return
        for row in self.store.pending_commands():
            if row[0] not in self._seen_commands:
                self._seen_commands.add(row[0])
                self.inbox.append(Command(*row))

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the training thread by check()
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is not None:
            return
        reason = _cause(exc)
        self.error = RecordError(f"clipdash: recording {self.run_dir} failed: {reason}")
        print(str(self.error), file=sys.stderr)
        if self.store is not None:  # mark it failed where the store can still be written
            with contextlib.suppress(Exception):
                self.store.set_state("failed", f"recording failed: {reason}")

    def _close_sinks(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except (OSError, sqlite3.Error) as exc:
                self._fail(exc)
        if self.store is not None and not sinks:
            with contextlib.suppress(sqlite3.Error):
                self.store.close()


def describe_start(run_dir: Path) -> str:
    """The line a Tracker prints on start: where it records and how to watch it."""
    runs = run_dir.parent if str(run_dir.parent) not in ("", ".") else Path(".")
    where = os.path.relpath(run_dir) if not run_dir.is_absolute() else str(run_dir)
    return f"clipdash: recording to {where} (watch it: clipdash watch {runs})"
