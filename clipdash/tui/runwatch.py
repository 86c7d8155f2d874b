"""What the reader thread keeps per run: a run of the list (RunWatch), the runs of the compare
view (CompareWatch), and the discovery of run directories (Discovery). No threads, no UI."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipdash.store.layout import DB_NAME
from clipdash.store.reader import LIVE_STATES, RunReader, effective_status
from clipdash.tui.buckets import Band, Num
from clipdash.tui.columns import SPARK_AGGREGATES, SPARK_COLUMNS
from clipdash.tui.messages import RunRow
from clipdash.tui.sparkcache import SparkCache
from clipdash.tui.tail import Sig, Tail, db_path, file_sig

SETTLED_STAT_S = 2.0  # finished runs are stat'ed this often (they may be resumed)
RECHECK_S = 2.0  # a live run is re-read now and then even if its files look unchanged
SPARK_BUCKETS = 24
CLIP_WINDOW = 100
RATE_WINDOW = 100
LIST_CACHE_KIB = 256  # SQLite page cache per run-list connection: 100 runs stay small


def open_reader(path: Path, cache_kib: int = LIST_CACHE_KIB) -> RunReader:
    reader = RunReader(path)
    reader.conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return reader


class RunWatch:
    """What the reader thread knows about one run of the list."""

    def __init__(self, path: Path, name: str, cache: SparkCache | None = None) -> None:
        self.path = path
        self.cache = cache
        self.name = name
        self.db = db_path(path)
        self.reader: RunReader | None = None
        self.sig: Sig | None = None
        self.checked = -1e9
        self.stated = -1e9
        self.status: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.spark = Tail(SPARK_COLUMNS, SPARK_BUCKETS, SPARK_AGGREGATES)
        self.spark_vals: tuple[tuple[Num, ...], tuple[Num, ...]] = ((), ())
        self.row: RunRow | None = None
        self.failures = 0
        self.error: str | None = None
        self.read_only = False

    @property
    def state(self) -> str | None:
        return self.status.get("state")

    @property
    def live(self) -> bool:
        """Read every pass: running, paused, or not read yet (a store that failed to read is
        retried at the finished runs' pace)."""
        return self.state in LIVE_STATES or (self.state is None and not self.failures)

    def open(self) -> RunReader:
        if self.reader is None:
            self.reader = open_reader(self.path)
            self.read_only = self.reader.read_only
        return self.reader

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def due(self, mono: float) -> bool:
        return self.live or mono - self.stated >= SETTLED_STAT_S

    def poll(self, mono: float) -> bool:
        """Read what changed; False when nothing did (so the row needs no rebuilding)."""
        self.stated = mono
        sig = file_sig(self.db)
        if sig == self.sig and not (self.live and mono - self.checked > RECHECK_S):
            return self.live  # a live run's status turns "lost" with time alone
        reader = self.open()
        self.status = reader.status_row() or {}
        self.values = reader.latest(CLIP_WINDOW, RATE_WINDOW) or {}
        self.sig, self.checked = sig, mono  # only once read: a failed read is retried
        if self.spark.ready and self.spark.refresh(reader):
            self._take_spark()
        elif not self.spark.ready and self._cached_spark():
            self._take_spark()  # a finished run seen before: its sparklines at first paint
        self.failures, self.error = 0, None
        self._close_if_done()
        return True

    def load_spark(self) -> bool:
        """Whole-run buckets: from the cache for a finished run whose file is unchanged,
        else one scan (kept in the cache when the run is finished)."""
        if not self._cached_spark():
            self.spark.refresh(self.open())
            db_sig = self._settled_sig()
            if self.cache is not None and db_sig is not None:
                self.cache.put(self.db, db_sig, SPARK_COLUMNS, SPARK_BUCKETS,
                               *self.spark.saved())
        self._take_spark()
        self._close_if_done()
        return True

    def _cached_spark(self) -> bool:
        db_sig = self._settled_sig()
        if self.cache is None or db_sig is None:
            return False
        hit = self.cache.get(self.db, db_sig, SPARK_COLUMNS, SPARK_BUCKETS)
        if hit is not None:
            self.spark.restore(*hit)
        return hit is not None

    def _settled_sig(self) -> tuple[int, int] | None:
        """(mtime, size) of the database of a finished run whose WAL holds nothing: then the
        database file alone says whether anything changed."""
        if self.live or self.sig is None or self.sig[0] is None:
            return None
        wal = self.sig[1]
        return self.sig[0] if wal is None or wal[1] == 0 else None

    def _take_spark(self) -> None:
        self.spark_vals = (self.spark.buckets.band("loss").ymean,
                           self.spark.buckets.band("grad_norm_pre").ymax)

    def _close_if_done(self) -> None:
        """A finished run changes no more: give back its connection (and re-stat after closing,
        since the last connection's close checkpoints the WAL)."""
        if not self.live and self.spark.ready:
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
            started=st.get("started"), read_only=self.read_only,
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


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Discovery:
    """Run directories under the runs directory (its children, and the children of sweep
    folders), rescanned only when the mtime of the runs directory or of a folder that is not
    (yet) a run changed: creating a run directory, or its database inside it, changes one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stamps: dict[Path, int | None] = {}
        self.runs: list[Path] = []

    def scan(self) -> list[Path] | None:
        """The run directories, or None when nothing can have changed since the last scan."""
        if self.stamps and all(_mtime(p) == m for p, m in self.stamps.items()):
            return None
        stamps: dict[Path, int | None] = {self.root: _mtime(self.root)}
        runs: list[Path] = []
        for child in _subdirs(self.root):
            if os.path.isfile(child / DB_NAME):
                runs.append(child)
                continue
            stamps[child] = _mtime(child)
            for grandchild in _subdirs(child):
                if os.path.isfile(grandchild / DB_NAME):
                    runs.append(grandchild)
                else:
                    stamps[grandchild] = _mtime(grandchild)  # a run being created
        self.stamps, self.runs = stamps, runs
        return runs


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []
