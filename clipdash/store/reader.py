"""The readers' side of the store: incremental ("rows after step N") and downsampled queries.

Readers never load a whole run into Python: the dashboard asks for what changed and for series
downsampled to the width of a plot, with min and max per bucket so spikes survive.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clipdash.store import schema

if TYPE_CHECKING:  # numpy costs 0.1-0.4 s of dashboard start-up: imported where it is used
    import numpy as np
from clipdash.store.layout import DB_NAME

# A running or paused run whose heartbeat is older than this is "lost" (killed, machine gone).
LOST_AFTER_S = 5.0
LIVE_STATES = ("running", "paused")
AGGS = ("min", "max", "sum", "count")
REQUIRED_TABLES = frozenset({"meta", "params", "steps", "status", "events", "evals"})
# Aggregates for plots keep finite values only (SQLite keeps inf; NaN is already NULL): one inf
# in a bucket must not hide the largest finite value or turn a mean into inf.
FLOAT_MAX = sys.float_info.max
# What a damaged file raises on the way out of sqlite and json (a store is untrusted input).
DAMAGE = (sqlite3.DatabaseError, ValueError, TypeError, KeyError, OSError)



class UnknownColumn(ValueError):
    """A caller asked for a step column that does not exist (a bug, not a damaged store)."""


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """Turn what a damaged store raises into one StoreError naming the file."""

    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (schema.StoreError, UnknownColumn):
            raise
        except DAMAGE as exc:
            raise self.damaged(exc) from exc

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class RunSummary:
    """One line of `clipdash ls` and of the dashboard's run list."""

    name: str
    path: str
    status: str
    step: int | None
    total_steps: int | None
    loss: float | None
    grad_norm_pre: float | None
    max_norm: float | None
    lr: float | None
    started: float | None
    heartbeat: float | None
    message: str | None
    alerts: int = 0
    """Spike alerts recorded (events of kind `alert`)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Series:
    """A column downsampled into buckets: first/last step of each, and min/max/mean/last value."""

    step_lo: list[int]
    step_hi: list[int]
    vmin: list[float | None]
    vmax: list[float | None]
    vmean: list[float | None]

    def __len__(self) -> int:
        return len(self.step_lo)


def effective_status(state: str | None, heartbeat: float | None, now: float | None = None) -> str:
    if state is None:
        return "unknown"
    now = time.time() if now is None else now
    if state in LIVE_STATES and (heartbeat is None or now - heartbeat > LOST_AFTER_S):
        return "lost"
    return state


def _column(name: str) -> str:
    if name not in schema.STEP_COLUMNS and name != "max_value":
        raise UnknownColumn(f"unknown step column {name!r}")
    return name


def _read_only_conn(path: Path, immutable: bool) -> sqlite3.Connection:
    """A connection that writes nothing: `mode=ro` reads the WAL through an existing -shm file;
    `immutable=1` reads a directory where not even that can be created (no locks, no WAL)."""
    flag = "immutable=1" if immutable else "mode=ro"
    uri = f"{path.resolve().as_uri()}?{flag}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=schema.BUSY_TIMEOUT_MS / 1000)
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails here, not later
    return conn


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


class RunReader:
    """Read-only view of one run. Cheap to open; every query is a short read transaction.

    A run directory (or database) that cannot be written, e.g. on a read-only mount or a copy
    owned by someone else, opens read-only (`read_only` is then True). Anything a damaged store
    raises comes out as a `StoreError` whose one line names the file.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not self.path.is_file():
            raise schema.StoreError(f"{self.run_dir}: no {DB_NAME} (not a clipdash run)")
        self.read_only = not _writable(self.path)
        try:
            self.conn = self._connect()
        except (sqlite3.OperationalError, OSError) as exc:  # permissions, a vanished file
            raise schema.StoreError(f"{self.path}: cannot open ({exc})") from exc
        except sqlite3.Error as exc:  # not SQLite at all
            raise schema.StoreError(f"{self.path}: not a clipdash store ({exc})") from exc
        try:
            schema.check_version(self.conn, self.path)
            self._check_tables()
        except BaseException:
            self.conn.close()
            raise
        self.conn.row_factory = sqlite3.Row

    def _connect(self) -> sqlite3.Connection:
        if not self.read_only:
            try:
                conn = schema.connect(self.path)
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:  # e.g. the -shm file cannot be created
                conn.close()
                self.read_only = True
        try:
            return _read_only_conn(self.path, immutable=False)
        except sqlite3.OperationalError:
            return _read_only_conn(self.path, immutable=True)

    def _check_tables(self) -> None:
        try:
            names = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise schema.StoreError(f"{self.path}: not a clipdash store ({exc})") from exc
        missing = sorted(REQUIRED_TABLES - names)
        if missing:
            raise schema.StoreError(f"{self.path}: damaged store (no table "
                                    f"{', '.join(missing)})")

    def damaged(self, exc: BaseException) -> schema.StoreError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return schema.StoreError(f"{self.path}: damaged store ({detail})")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.run_dir.name

    # -- run-level ------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        out = {}
        for key, value in self._rows("SELECT key, value FROM meta"):
            try:
                out[key] = json.loads(value)
            except (ValueError, TypeError) as exc:
                raise schema.StoreError(f"{self.path}: damaged store (meta {key!r} is not "
                                        f"JSON: {exc})") from exc
        return out

    def params(self) -> list[tuple[str, list[int]]]:
        out = []
        for name, shape in self._rows("SELECT name, shape FROM params ORDER BY idx"):
            try:
                dims = json.loads(shape)
            except (ValueError, TypeError) as exc:
                raise schema.StoreError(f"{self.path}: damaged store (shape of parameter "
                                        f"{name!r} is not JSON: {exc})") from exc
            out.append((str(name), dims))
        return out

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except DAMAGE as exc:
            raise self.damaged(exc) from exc

    @_guarded
    def status_row(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM status WHERE id = 1").fetchone()
        return dict(row) if row else None

    def status(self) -> str:
        row = self.status_row()
        return effective_status(row["state"] if row else None, row["heartbeat"] if row else None)

    @_guarded
    def summary(self) -> RunSummary:
        st = self.status_row() or {}
        last = self.conn.execute(
            "SELECT step, loss, grad_norm_pre, max_norm, lr FROM steps "
            "ORDER BY step DESC LIMIT 1").fetchone()
        return RunSummary(
            name=self.name,
            path=str(self.run_dir),
            status=effective_status(st.get("state"), st.get("heartbeat")),
            step=last["step"] if last else None,
            total_steps=st.get("total_steps"),
            loss=last["loss"] if last else None,
            grad_norm_pre=last["grad_norm_pre"] if last else None,
            max_norm=last["max_norm"] if last else None,
            lr=last["lr"] if last else None,
            started=st.get("started"),
            heartbeat=st.get("heartbeat"),
            message=st.get("message"),
            alerts=self.conn.execute(
                "SELECT COUNT(*) FROM events WHERE kind = 'alert'").fetchone()[0],
        )

    @_guarded
    def last_step(self) -> int | None:
        row = self.conn.execute("SELECT MAX(step) FROM steps").fetchone()
        return row[0]

    @_guarded
    def step_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0])

    # -- incremental ----------------------------------------------------------------------

    @_guarded
    def steps_after(self, after: int = -1, columns: Sequence[str] = schema.STEP_COLUMNS,
                    limit: int | None = None) -> dict[str, list[Any]]:
        """Columns of the steps with step > `after`, in step order."""
        cols = ", ".join(_column(c) for c in columns)
        sql = f"SELECT {cols} FROM steps WHERE step > ? ORDER BY step"
        args: tuple[Any, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        rows = self.conn.execute(sql, args).fetchall()
        return {c: [r[i] for r in rows] for i, c in enumerate(columns)}

    def iter_steps(self, with_params: bool = False, batch: int = 2048) -> Iterator[dict[str, Any]]:
        """Every step as a dict (lr_groups decoded; param_norms as a float32 array if asked).

        A row's norms may be narrower than the parameter set (parameters that appeared later read
        as NaN); a blob that is not whole float32s or is wider than the parameter set (a
        hand-edited or damaged store) is a StoreError naming the step, never a shifted row."""
        extra = ", lr_groups" + (", param_norms" if with_params else "")
        n_params = len(self.params()) if with_params else 0
        cols = ", ".join(schema.STEP_COLUMNS) + ", max_value" + extra
        after = -1
        while True:
            rows = self._rows(f"SELECT {cols} FROM steps WHERE step > ? ORDER BY step LIMIT ?",
                              (after, batch))
            if not rows:
                return
            for r in rows:
                d = dict(r)
                blob = d.pop("lr_groups")
                if blob and len(blob) % 8:
                    raise self._bad_blob("lr_groups", d["step"], len(blob), "a multiple of 8")
                d["lr_groups"] = array("d", blob).tolist() if blob else [d["lr"]]
                if with_params:
                    pn = d.pop("param_norms")
                    if pn and (len(pn) % 4 or len(pn) > 4 * n_params):
                        raise self._bad_blob("param_norms", d["step"], len(pn),
                                             f"at most {4 * n_params} ({n_params} parameters)")
                    d["param_norms"] = schema.param_row(pn, n_params)
                yield d
            after = rows[-1]["step"]

    def _bad_blob(self, column: str, step: int, size: int, want: str) -> schema.StoreError:
        return schema.StoreError(f"{self.path}: damaged store ({column} of step {step} is "
                                 f"{size} bytes, expected {want})")

    @_guarded
    def evals_after(self, after: int = -1) -> list[tuple[int, str, float | None]]:
        rows = self.conn.execute(
            "SELECT step, metric, value FROM evals WHERE step > ? ORDER BY step, metric", (after,))
        return [(r[0], r[1], r[2]) for r in rows]

    def events_after(self, after_id: int = 0) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM events WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            try:
                d["data"] = json.loads(d["data"]) if d["data"] else None
            except ValueError:  # a damaged note on an event: keep the event, drop the note
                d["data"] = None
            out.append(d)
        return out

    # -- downsampled ----------------------------------------------------------------------

    @_guarded
    def series(self, column: str, points: int, start: int | None = None,
               end: int | None = None) -> Series:
        """`column` over steps [start, end] in at most `points` buckets, computed in SQL."""
        col = _column(column)
        lo, hi = self._bounds(start, end)
        if lo is None or hi is None:
            return Series([], [], [], [], [])
        width = max(1, -(-(hi - lo + 1) // max(1, points)))  # ceil division
        rows = self.conn.execute(
            f"SELECT MIN(step), MAX(step), MIN({col}), MAX({col}), AVG({col}) FROM steps "
            f"WHERE step BETWEEN ? AND ? GROUP BY (step - ?) / ? ORDER BY 1",
            (lo, hi, lo, width)).fetchall()
        return Series([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                      [r[3] for r in rows], [r[4] for r in rows])

    @_guarded
    def eval_series(self, metric: str) -> tuple[list[int], list[float | None]]:
        rows = self.conn.execute(
            "SELECT step, value FROM evals WHERE metric = ? ORDER BY step", (metric,)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    @_guarded
    def recent_rate(self, column: str = "clipped", window: int = 100) -> float | None:
        """Mean of `column` over the last `window` steps (the clip rate, by default)."""
        col = _column(column)
        row = self.conn.execute(
            f"SELECT AVG({col}) FROM (SELECT {col} FROM steps ORDER BY step DESC LIMIT ?)",
            (window,)).fetchone()
        return row[0]

    @_guarded
    def param_norms(self, start: int | None = None, end: int | None = None,
                    points: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """(steps, norms[steps, params]) with the max of each bucket of steps, so spikes stay.

        Only the blobs of the requested window are read; a bucket's rows are reduced in numpy.
        """
        import numpy as np

        lo, hi = self._bounds(start, end)
        n_params = int(self.conn.execute("SELECT COUNT(*) FROM params").fetchone()[0])
        if lo is None or hi is None or n_params == 0:
            return np.zeros(0, np.int64), np.zeros((0, n_params), np.float32)
        width = max(1, -(-(hi - lo + 1) // max(1, points)))
        # Rows narrower than the parameter set (parameters added later) are padded with NaN;
        # blobs that cannot be a row (a damaged store) are left out rather than misread.
        rows = self.conn.execute(
            "SELECT step, param_norms FROM steps WHERE step BETWEEN ? AND ? "
            "AND length(param_norms) % 4 = 0 AND length(param_norms) BETWEEN 4 AND ? "
            "ORDER BY step", (lo, hi, 4 * n_params)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, n_params), np.float32)
        steps = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        norms = np.stack([schema.param_row(r[1], n_params) for r in rows])
        buckets = (steps - lo) // width
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        with np.errstate(invalid="ignore"):
            reduced = np.fmax.reduceat(norms, starts, axis=0)
        return steps[starts], reduced

    @_guarded
    def bucket_stats(self, columns: Sequence[str], width: int, origin: int = 0,
                     after: int | None = None,
                     only: Mapping[str, Collection[str]] | None = None) -> list[tuple[Any, ...]]:
        """Aggregates per aligned bucket of `width` steps counted from `origin`, computed in SQL.

        One row per non-empty bucket, in order: (bucket index, first step, last step, then
        min, max, sum, count of the finite values of each column). Aligned buckets let a live
        reader fold later rows into the same buckets (and merge pairs of them) without a rescan.
        `only` names, per column, the aggregates wanted (the others are None): a sparkline of
        means and one of maxima cost half the scan.
        """
        cols = [_column(c) for c in columns]

        def aggs(expr: Callable[[str], str]) -> str:
            return ", ".join(f"{fn}({expr(c)})" if only is None or fn.lower() in only.get(c, AGGS)
                             else "NULL" for c in cols for fn in ("MIN", "MAX", "SUM", "COUNT"))

        plain = aggs(lambda c: c)
        finite = aggs(lambda c: f"(CASE WHEN abs({c}) <= :fmax THEN {c} END)")
        width = max(1, int(width))
        row = self.conn.execute("SELECT MIN(step), MAX(step) FROM steps WHERE step >= ?",
                                (origin if after is None else max(origin, after + 1),)).fetchone()
        if row[0] is None:
            return []
        out = []
        # One range scan per bucket, not GROUP BY (which sorts every row): the rowid order
        # is the bucket order. Plain aggregates first; the finite-only ones (which cost twice
        # as much) only for a bucket that holds an inf.
        for b in range((row[0] - origin) // width, (row[1] - origin) // width + 1):
            args = {"lo": max(row[0], origin + b * width), "hi": origin + (b + 1) * width - 1,
                    "fmax": FLOAT_MAX}
            sql = "SELECT MIN(step), MAX(step), {} FROM steps WHERE step BETWEEN :lo AND :hi"
            got = self.conn.execute(sql.format(plain), args).fetchone()
            if got[0] is None:
                continue
            if any(v is not None and not -FLOAT_MAX <= v <= FLOAT_MAX for v in got[2:]):
                got = self.conn.execute(sql.format(finite), args).fetchone()
            out.append((b, *got))
        return out

    @_guarded
    def first_step(self) -> int | None:
        return self.conn.execute("SELECT MIN(step) FROM steps").fetchone()[0]

    @_guarded
    def step_rate(self, window: int = 100) -> float | None:
        """Steps per second of wall time over the last `window` steps (None if unknown)."""
        rows = self.conn.execute(
            "SELECT step, wall_time FROM steps WHERE step = (SELECT MAX(step) FROM steps) "
            "UNION ALL SELECT * FROM (SELECT step, wall_time FROM steps WHERE step <= "
            "(SELECT MAX(step) FROM steps) - ? ORDER BY step DESC LIMIT 1)",
            (max(1, window),)).fetchall()
        if len(rows) < 2:
            rows = self.conn.execute(
                "SELECT * FROM (SELECT step, wall_time FROM steps ORDER BY step DESC LIMIT 1) "
                "UNION ALL SELECT * FROM (SELECT step, wall_time FROM steps "
                "ORDER BY step LIMIT 1)").fetchall()
        if len(rows) < 2:
            return None
        (s1, t1), (s0, t0) = rows[0], rows[1]
        if s1 <= s0 or t1 <= t0:
            return None
        return (s1 - s0) / (t1 - t0)

    @_guarded
    def latest(self, clip_window: int = 100, rate_window: int = 100) -> dict[str, Any] | None:
        """The last step's values, the clip rate over the last `clip_window` steps and the
        steps/s over the last `rate_window` steps, in one query (the dashboard's live row).
        None when no step is recorded yet."""
        row = self.conn.execute(
            "WITH l AS (SELECT step, loss, grad_norm_pre, max_norm, lr, wall_time, max_value "
            "FROM steps "
            "ORDER BY step DESC LIMIT 1), "
            "b AS (SELECT step, wall_time FROM steps WHERE step <= (SELECT step FROM l) - :rw "
            "UNION ALL SELECT * FROM (SELECT step, wall_time FROM steps ORDER BY step LIMIT 1) "
            "ORDER BY step DESC LIMIT 1) "
            "SELECT l.step, l.loss, l.grad_norm_pre, l.max_norm, l.lr, l.wall_time, l.max_value, "
            "b.step, "
            "b.wall_time, (SELECT AVG(clipped) FROM (SELECT clipped FROM steps "
            "ORDER BY step DESC LIMIT :cw)), "
            "(SELECT COUNT(*) FROM events WHERE kind = 'alert') FROM l, b",
            {"rw": max(1, rate_window), "cw": max(1, clip_window)}).fetchone()
        if row is None:
            return None
        step, loss, grad, max_norm, lr, t1, max_value, s0, t0, clip_rate, alerts = tuple(row)
        rate = (step - s0) / (t1 - t0) if step > s0 and t1 > t0 else None
        return {"step": step, "loss": loss, "grad_norm": grad, "max_norm": max_norm, "lr": lr,
                "max_value": max_value, "clip_rate": clip_rate, "rate": rate, "alerts": alerts}

    def _bounds(self, start: int | None, end: int | None) -> tuple[int | None, int | None]:
        row = self.conn.execute("SELECT MIN(step), MAX(step) FROM steps").fetchone()
        lo = row[0] if start is None else max(start, row[0] if row[0] is not None else start)
        hi = row[1] if end is None else min(end, row[1] if row[1] is not None else end)
        if lo is None or hi is None or hi < lo:
            return None, None
        return lo, hi
