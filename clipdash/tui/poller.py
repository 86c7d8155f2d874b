"""The dashboard's one background reader: a thread owned by the App that tails every run.

Cost model. A finished run (finished, failed, stopped) is read once and then costs nothing per
update: it is only stat'ed every SETTLED_STAT_S in case it is resumed. A live run is stat'ed every
POLL_S (two stats: database and WAL, any commit changes one) and re-read only when that changed,
and then only the rows after the last one seen. With no live run and no run view open the thread
sleeps SETTLED_STAT_S between passes. New run directories are found by watching the mtimes of the
runs directory and its sweep folders, not by listing everything.

Results go to the widgets that subscribed (feed.Hub) as whole, immutable snapshots.
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

from textual.message_pump import MessagePump

from clipdash.store.schema import StoreError
from clipdash.tui.detail_data import DetailWatch
from clipdash.tui.feed import COMPARE, PROBLEMS, RUNS, Hub, detail_topic
from clipdash.tui.messages import CompareUpdated, DetailUpdated, ReaderProblem, RunRow, RunsUpdated
from clipdash.tui.runwatch import SETTLED_STAT_S, CompareWatch, Discovery, RunWatch
from clipdash.tui.sparkcache import SparkCache

POLL_S = 0.04  # live runs: write -> screen lag is this plus one frame
DISCOVER_S = 1.0
PUBLISH_EVERY_S = 0.05  # during a long pass (the first one), rows are shown this often
DETAIL_EVERY_S = 0.5
SPARK_BUDGET_S = 0.15  # whole-run sparkline scans per pass, so that live updates keep flowing
READ_ERRORS = (sqlite3.Error, StoreError, OSError)
Clock = Callable[[], float]


class Poller(threading.Thread):
    """The reader: started by the App on mount, `stop()` and `join()` on unmount.

    `clock` (wall time, for "lost" heartbeats) and `mono` (monotonic, for pacing) can be frozen
    in tests."""

    def __init__(self, runs_dir: str | Path, interval: float = POLL_S, *,
                 clock: Clock = time.time, mono: Clock = time.monotonic,
                 cache: SparkCache | None = None) -> None:
        super().__init__(name="clipdash-watch-reader", daemon=True)
        self.hub = Hub()
        self.cache = cache
        self.runs_dir = Path(runs_dir)
        self.interval = interval
        self.clock, self.mono = clock, mono
        self.discovery = Discovery(self.runs_dir)
        self.watches: dict[str, RunWatch] = {}
        self.rows: dict[str, RunRow] = {}
        self.details: dict[str, DetailWatch] = {}  # path -> watch (one per open run view)
        self.detail_caps: dict[MessagePump, tuple[str, int]] = {}
        self.compare: CompareWatch | None = None
        self._requests: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._discovered = -1e9
        self._reported: set[str] = set()
        self.visible: frozenset[str] | None = None  # None: every run
        self._live: list[RunWatch] = []  # polled every pass (the rest every SETTLED_STAT_S)
        self._settled_due = -1e9
        self._spark_todo = True  # some visible run may still lack its sparklines
        self.ticks = 0

    # -- called from the UI thread --------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def set_visible(self, paths: Sequence[str] | None) -> None:
        """The runs whose rows are on screen (None: all): only they get sparklines loaded."""
        self._request("visible", None if paths is None else frozenset(paths))

    def watch_runs(self, target: MessagePump) -> None:
        self.hub.subscribe(target, RUNS)

    def watch_detail(self, target: MessagePump, path: str, cap: int) -> None:
        self.hub.subscribe(target, detail_topic(path))
        self._request("detail", target, path, cap)

    def watch_compare(self, target: MessagePump, paths: Sequence[str], columns: Sequence[str],
                      cap: int) -> None:
        self.hub.subscribe(target, COMPARE)
        self.show_compare(paths, columns, cap)

    def show_compare(self, paths: Sequence[str] | None, columns: Sequence[str] = (),
                     cap: int = 0) -> None:
        self._request("compare", tuple(paths) if paths else None, tuple(columns), cap)

    def unwatch(self, target: MessagePump) -> None:
        self.hub.unsubscribe(target)
        self._request("detail", target, None, 0)

    def _request(self, *req: Any) -> None:
        self._requests.put(req)
        self._wake.set()

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                backlog = self.tick()
                self._wake.wait(0.0 if backlog else self._pause())
                self._wake.clear()
        finally:
            for w in self.watches.values():
                w.close()
            for d in self.details.values():
                d.close()
            if self.compare is not None:
                self.compare.close()
            if self.cache is not None:
                self.cache.close()

    def _pause(self) -> float:
        """Short while anything live is watched; long when only finished runs are."""
        busy = self.details or self.compare or self._live
        return self.interval if busy else min(SETTLED_STAT_S, DISCOVER_S)

    def tick(self) -> bool:
        """One pass; True when work is left over (sparklines not yet loaded)."""
        self.ticks += 1
        self._handle_requests()
        mono, now = self.mono(), self.clock()
        changed = False
        if mono - self._discovered >= DISCOVER_S:
            self._discovered = mono
            changed = self._discover()
        posted = self.mono()
        settled_pass = mono >= self._settled_due or changed
        if settled_pass:  # every run; in between, only the live ones
            self._settled_due = mono + SETTLED_STAT_S
        for w in self.watches.values() if settled_pass else self._live:
            if w.due(mono):
                changed |= self._refresh(w, partial(w.poll, mono), now)
            if changed and self.mono() - posted > PUBLISH_EVERY_S:
                # Hundreds of runs read for the first time: show the first ones already.
                self.hub.publish(RUNS, partial(RunsUpdated, dict(self.rows)))
                changed, posted = False, self.mono()
        if settled_pass:
            self._live = [w for w in self.watches.values() if w.live]
            self._spark_todo = True  # a run read for the first time may now need them
        backlog, loaded = self._load_sparks(now) if self._spark_todo else (False, False)
        if changed or loaded:
            self.hub.publish(RUNS, partial(RunsUpdated, dict(self.rows)))
        self._guard("detail", self._detail_tick)
        self._guard("compare", self._compare_tick)
        return backlog

    def _refresh(self, w: RunWatch, action: Callable[[], bool], now: float) -> bool:
        """Run `action` on a watch; True when its row changed."""
        try:
            if not action():
                return False
        except READ_ERRORS as exc:
            w.close()
            w.failures += 1
            w.error = str(exc)
            if w.failures >= 3 and w.name not in self._reported:
                self._reported.add(w.name)
                self.hub.publish(PROBLEMS, partial(ReaderProblem, f"{w.name}: {exc}"), keep=False)
        row = w.make_row(now)
        if row == w.row:
            return False
        w.row = self.rows[str(w.path)] = row
        return True

    def _load_sparks(self, now: float) -> tuple[bool, bool]:
        """(work left, some row changed): whole-run sparklines of the rows on screen."""
        deadline = self.mono() + SPARK_BUDGET_S
        loaded = False
        for w in self.watches.values():
            if w.spark.ready or w.failures or w.state is None:
                continue
            if self.visible is not None and str(w.path) not in self.visible:
                continue  # sparklines are read for the rows on screen only
            if self.mono() > deadline or self._stopping.is_set():
                return True, loaded
            loaded |= self._refresh(w, w.load_spark, now)
        self._spark_todo = False
        return False, loaded

    def _discover(self) -> bool:
        paths = self.discovery.scan()
        if paths is None:
            return False
        found = {str(p): p for p in paths}
        changed = False
        self._spark_todo = True
        for key, p in found.items():
            if key not in self.watches:
                self.watches[key] = RunWatch(p, p.relative_to(self.runs_dir).as_posix(),
                                             self.cache)
                changed = True
        for key in [k for k in self.watches if k not in found]:
            self.watches.pop(key).close()
            self.rows.pop(key, None)
            changed = True
        return changed

    def _handle_requests(self) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            if req[0] == "visible":
                self.visible = req[1]
                self._spark_todo = True
            elif req[0] == "detail":
                self._set_detail(req[1], req[2], req[3])
            elif req[0] == "compare":
                if self.compare is not None:
                    self.compare.close()
                self.compare = CompareWatch(req[1], req[2], req[3]) if req[1] else None

    def _set_detail(self, target: MessagePump, path: str | None, cap: int) -> None:
        """Keep one DetailWatch per (path, widest cap) among the run views that want it."""
        if path is None:
            self.detail_caps.pop(target, None)
        else:
            self.detail_caps[target] = (path, cap)
        wanted: dict[str, int] = {}
        for p, c in self.detail_caps.values():
            wanted[p] = max(c, wanted.get(p, 0))
        for p in list(self.details):
            if p not in wanted or self.details[p].cap != max(16, wanted[p]):
                self.details.pop(p).close()
                self.hub.forget(detail_topic(p))
        for p, c in wanted.items():
            if p not in self.details:
                self.details[p] = DetailWatch(Path(p), c)

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except READ_ERRORS as exc:
            key = f"{what}:{exc}"
            if key not in self._reported:
                self._reported.add(key)
                self.hub.publish(PROBLEMS, partial(ReaderProblem, f"{what} view: {exc}"),
                                 keep=False)

    def _detail_tick(self) -> None:
        mono = self.mono()
        for path, watch in self.details.items():
            if mono < watch.next_at:
                continue
            if (snap := watch.tick()) is not None:
                # Redrawing four plots of a whole run costs ~15-30 ms: a live run view is
                # redrawn twice a second (its headline numbers follow every update).
                watch.next_at = mono + DETAIL_EVERY_S
                self.hub.publish(detail_topic(path), partial(DetailUpdated, snap))

    def _compare_tick(self) -> None:
        if self.compare is not None and (bands := self.compare.tick()) is not None:
            self.hub.publish(COMPARE, partial(CompareUpdated, bands))
