"""The dashboard's one background reader: a thread owned by the App that tails every run.

Each tick (every POLL_S, or at once when the UI asks for something) it stats each run's database
and WAL and reads only the runs whose files changed, and from those only the rows after the last
one it saw. The run list gets whole-run sparklines from aligned buckets (one SQL scan per run,
then a few new rows per tick); the detail and compare views get the same for the columns they
plot, at the width they plot them. Results go to the UI as immutable snapshots in messages.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from textual.message import Message

from clipdash.store.layout import find_runs
from clipdash.store.reader import LIVE_STATES, RunReader, effective_status
from clipdash.store.schema import StoreError
from clipdash.tui.buckets import Band
from clipdash.tui.detail_data import DetailWatch
from clipdash.tui.messages import (
    CompareUpdated,
    DetailUpdated,
    ReaderProblem,
    RunRow,
    RunsUpdated,
)
from clipdash.tui.tail import Sig, Tail, db_path, file_sig

POLL_S = 0.25
DISCOVER_S = 1.0
RECHECK_S = 2.0  # re-read a live run now and then even if its files look unchanged
FINAL_STAT_S = 2.0  # a finished run is only stat'ed this often (it may be resumed)
INIT_BUDGET_S = 0.08  # whole-run sparkline scans per tick, so that live updates keep flowing
POST_EVERY_S = 0.05
SPARK_BUCKETS = 24
CLIP_WINDOW = 100
RATE_WINDOW = 100
LIST_CACHE_KIB = 256  # SQLite page cache per run-list connection: 100 runs stay small
READ_ERRORS = (sqlite3.Error, StoreError, OSError)


def open_reader(path: Path, cache_kib: int = LIST_CACHE_KIB) -> RunReader:
    reader = RunReader(path)
    reader.conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return reader


class RunWatch:
    """What the reader thread knows about one run of the list."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.db = db_path(path)
        self.reader: RunReader | None = None
        self.sig: Sig | None = None
        self.checked = 0.0
        self.stated = -1e9
        self.status: dict[str, Any] = {}
        self.last_step: int | None = -2  # -2: never read
        self.values: dict[str, Any] = {}
        self.spark = Tail(("loss", "grad_norm_pre"), SPARK_BUCKETS)
        self.spark_vals: tuple[tuple[float | None, ...], tuple[float | None, ...]] = ((), ())
        self.row: RunRow | None = None
        self.failures = 0
        self.error: str | None = None

    @property
    def state(self) -> str | None:
        return self.status.get("state")

    def open(self) -> RunReader:
        if self.reader is None:
            self.reader = open_reader(self.path)
        return self.reader

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def poll(self, mono: float) -> bool:
        """Read what changed; False when nothing can have (so the row needs no rebuilding)."""
        live = self.state in LIVE_STATES or self.state is None
        if not live and mono - self.stated < FINAL_STAT_S:
            return False
        self.stated = mono
        sig = file_sig(self.db)
        if sig == self.sig and not (live and mono - self.checked > RECHECK_S):
            return live  # a live run's status turns "lost" with time alone
        self.sig, self.checked = sig, mono
        reader = self.open()
        self.status = reader.status_row() or {}
        last = self.status.get("last_step")
        if last != self.last_step or not self.values:
            s = reader.summary()
            self.values = {"step": s.step, "loss": s.loss, "grad_norm": s.grad_norm_pre,
                           "max_norm": s.max_norm, "lr": s.lr, "alerts": s.alerts,
                           "clip_rate": reader.recent_rate("clipped", CLIP_WINDOW),
                           "rate": reader.step_rate(RATE_WINDOW)}
            self.last_step = last
            if self.spark.ready and self.spark.refresh(reader):
                self._take_spark()
        self.failures, self.error = 0, None
        self._close_if_done()
        return True

    def load_spark(self) -> None:
        reader = self.open()
        self.spark.refresh(reader)
        self._take_spark()
        self._close_if_done()

    def _take_spark(self) -> None:
        self.spark_vals = (self.spark.buckets.band("loss").ymean,
                           self.spark.buckets.band("grad_norm_pre").ymax)

    def _close_if_done(self) -> None:
        """A finished run changes no more: give back its connection (and re-stat after closing,
        since the last connection's close checkpoints the WAL)."""
        if self.state is not None and self.state not in LIVE_STATES and self.spark.ready:
            self.close()
            self.sig = file_sig(self.db)

    def make_row(self, now: float) -> RunRow:
        st = self.status
        if self.state is None:
            status = "error" if self.failures >= 3 else "unknown"
        else:
            status = effective_status(self.state, st.get("heartbeat"), now)
        v = self.values
        return RunRow(
            path=str(self.path), name=self.name, status=status, step=v.get("step"),
            total=st.get("total_steps"), rate=v.get("rate") if status == "running" else None,
            loss=v.get("loss"), grad_norm=v.get("grad_norm"), clip_rate=v.get("clip_rate"),
            max_norm=v.get("max_norm"), lr=v.get("lr"), loss_spark=self.spark_vals[0],
            norm_spark=self.spark_vals[1], message=self.error or st.get("message"),
            alerts=v.get("alerts") or 0)


class CompareWatch:
    """Several runs' buckets of the same columns, for the compare view."""

    def __init__(self, paths: Sequence[str], columns: Sequence[str], cap: int) -> None:
        self.columns = tuple(columns)
        self.tails = {p: Tail(self.columns, cap) for p in paths}
        self.readers: dict[str, RunReader] = {}
        self.sigs: dict[str, Sig] = {}

    def tick(self) -> dict[str, dict[str, Band]] | None:
        changed = False
        for path, tail in self.tails.items():
            sig = file_sig(db_path(Path(path)))
            if sig == self.sigs.get(path) and tail.ready:
                continue
            self.sigs[path] = sig
            if path not in self.readers:
                self.readers[path] = open_reader(Path(path), 2048)
            changed |= tail.refresh(self.readers[path])
        if not changed:
            return None
        return {p: {c: t.buckets.band(c) for c in self.columns} for p, t in self.tails.items()}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


class Poller(threading.Thread):
    """Started by the App on mount; `stop()` and `join()` on unmount."""

    def __init__(self, post: Callable[[Message], Any], runs_dir: str | Path,
                 interval: float = POLL_S) -> None:
        super().__init__(name="clipdash-watch-reader", daemon=True)
        self.post = post
        self.runs_dir = Path(runs_dir)
        self.interval = interval
        self.watches: dict[str, RunWatch] = {}
        self.detail: DetailWatch | None = None
        self.compare: CompareWatch | None = None
        self._requests: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._discovered = -1e9
        self._reported: set[str] = set()
        self.visible: frozenset[str] | None = None  # None: every run
        self.ticks = 0

    # -- called from the UI thread --------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def set_visible(self, paths: Sequence[str] | None) -> None:
        """The runs whose rows are on screen (None: all): only they get sparklines loaded."""
        self._requests.put(("visible", None if paths is None else frozenset(paths)))
        self._wake.set()

    def show_detail(self, path: str | None, cap: int = 0) -> None:
        self._requests.put(("detail", path, cap))
        self._wake.set()

    def show_compare(self, paths: Sequence[str] | None, columns: Sequence[str] = (),
                     cap: int = 0) -> None:
        self._requests.put(("compare", tuple(paths) if paths else None, tuple(columns), cap))
        self._wake.set()

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                busy = self.tick()
                self._wake.wait(0.0 if busy else self.interval)
                self._wake.clear()
        finally:
            for w in self.watches.values():
                w.close()
            if self.detail is not None:
                self.detail.close()
            if self.compare is not None:
                self.compare.close()

    def tick(self) -> bool:
        """One pass; True when work is left over (sparklines not yet loaded)."""
        self.ticks += 1
        self._handle_requests()
        mono, now = time.monotonic(), time.time()
        removed: tuple[str, ...] = ()
        if mono - self._discovered >= DISCOVER_S:
            self._discovered = mono
            removed = self._discover()
        changed: list[RunRow] = []
        posted = time.monotonic()
        for w in self.watches.values():
            if row := self._refresh(w, partial(w.poll, mono), now):
                changed.append(row)
            if changed and time.monotonic() - posted > POST_EVERY_S:
                # Hundreds of runs read for the first time: show the first ones already.
                self.post(RunsUpdated(tuple(changed), removed))
                changed, removed, posted = [], (), time.monotonic()
        if changed or removed:
            self.post(RunsUpdated(tuple(changed), removed))
        backlog = self._load_sparks(now)
        self._guard("detail", self._detail_tick)
        self._guard("compare", self._compare_tick)
        return backlog

    def _refresh(self, w: RunWatch, action: Callable[[], bool | None],
                 now: float) -> RunRow | None:
        """Run `action` on a watch; the row it yields if that changed."""
        try:
            if action() is False:
                return None
        except READ_ERRORS as exc:
            w.close()
            w.failures += 1
            w.error = f"{w.name}: {exc}"
            if w.failures >= 3 and w.name not in self._reported:
                self._reported.add(w.name)
                self.post(ReaderProblem(w.error))
        row = w.make_row(now)
        if row == w.row:
            return None
        w.row = row
        return row

    def _load_sparks(self, now: float) -> bool:
        deadline = time.monotonic() + INIT_BUDGET_S
        changed = []
        backlog = False
        for w in self.watches.values():
            if w.spark.ready or w.failures or w.state is None:
                continue
            if self.visible is not None and str(w.path) not in self.visible:
                continue  # sparklines are read for the rows on screen only
            if time.monotonic() > deadline or self._stopping.is_set():
                backlog = True
                break
            if row := self._refresh(w, w.load_spark, now):
                changed.append(row)
        if changed:
            self.post(RunsUpdated(tuple(changed)))
        return backlog

    def _discover(self) -> tuple[str, ...]:
        try:
            paths = find_runs(self.runs_dir)
        except OSError:
            return ()
        found = {str(p): p for p in paths}
        for key, p in found.items():
            if key not in self.watches:
                self.watches[key] = RunWatch(p, p.relative_to(self.runs_dir).as_posix())
        gone = tuple(k for k in self.watches if k not in found)
        for key in gone:
            self.watches.pop(key).close()
        return gone

    def _handle_requests(self) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            if req[0] == "visible":
                self.visible = req[1]
            elif req[0] == "detail":
                if self.detail is not None:
                    self.detail.close()
                self.detail = DetailWatch(Path(req[1]), req[2]) if req[1] else None
            elif req[0] == "compare":
                if self.compare is not None:
                    self.compare.close()
                self.compare = CompareWatch(req[1], req[2], req[3]) if req[1] else None

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except READ_ERRORS as exc:
            key = f"{what}:{exc}"
            if key not in self._reported:
                self._reported.add(key)
                self.post(ReaderProblem(f"{what} view: {exc}"))

    def _detail_tick(self) -> None:
        if self.detail is not None and (snap := self.detail.tick()) is not None:
            self.post(DetailUpdated(snap))

    def _compare_tick(self) -> None:
        if self.compare is not None and (bands := self.compare.tick()) is not None:
            self.post(CompareUpdated(bands))
