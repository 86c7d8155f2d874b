"""The readers' side of the store: incremental ("rows after step N") and downsampled queries.

Readers never load a whole run into Python: the dashboard asks for what changed and for series
downsampled to the width of a plot, with min and max per bucket so spikes survive.
"""

from __future__ import annotations

import json
import sqlite3
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdash.store import schema

if TYPE_CHECKING:  # numpy costs 0.1-0.4 s of dashboard start-up: imported where it is used
    import numpy as np
from clipdash.store.layout import DB_NAME

# A running or paused run whose heartbeat is older than this is "lost" (killed, machine gone).
LOST_AFTER_S = 5.0
LIVE_STATES = ("running", "paused")


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
        raise ValueError(f"unknown step column {name!r}")
    return name


class RunReader:
    """Read-only view of one run. Cheap to open; every query is a short read transaction."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not self.path.is_file():
            raise schema.StoreError(f"{self.run_dir}: no {DB_NAME} (not a clipdash run)")
        self.conn = schema.connect(self.path)
        schema.check_version(self.conn, self.path)
        self.conn.row_factory = sqlite3.Row

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
        return {r["key"]: json.loads(r["value"]) for r in self.conn.execute("SELECT * FROM meta")}

    def params(self) -> list[tuple[str, list[int]]]:
        rows = self.conn.execute("SELECT name, shape FROM params ORDER BY idx")
        return [(r["name"], json.loads(r["shape"])) for r in rows]

    def status_row(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM status WHERE id = 1").fetchone()
        return dict(row) if row else None

    def status(self) -> str:
        row = self.status_row()
        return effective_status(row["state"] if row else None, row["heartbeat"] if row else None)

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

    def last_step(self) -> int | None:
        row = self.conn.execute("SELECT MAX(step) FROM steps").fetchone()
        return row[0]

    def step_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0])

    # -- incremental ----------------------------------------------------------------------

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
        """Every step as a dict (lr_groups decoded; param_norms as a float32 array if asked)."""
        extra = ", lr_groups" + (", param_norms" if with_params else "")
        n_params = int(self.conn.execute("SELECT COUNT(*) FROM params").fetchone()[0])
        cols = ", ".join(schema.STEP_COLUMNS) + ", max_value" + extra
        after = -1
        while True:
            rows = self.conn.execute(
                f"SELECT {cols} FROM steps WHERE step > ? ORDER BY step LIMIT ?",
                (after, batch)).fetchall()
            if not rows:
                return
            for r in rows:
                d = dict(r)
                blob = d.pop("lr_groups")
                d["lr_groups"] = array("d", blob).tolist() if blob else [d["lr"]]
                if with_params:
                    d["param_norms"] = schema.param_row(d.pop("param_norms"), n_params)
                yield d
            after = rows[-1]["step"]

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
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(d)
        return out

    # -- downsampled ----------------------------------------------------------------------

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

    def eval_series(self, metric: str) -> tuple[list[int], list[float | None]]:
        rows = self.conn.execute(
            "SELECT step, value FROM evals WHERE metric = ? ORDER BY step", (metric,)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def recent_rate(self, column: str = "clipped", window: int = 100) -> float | None:
        """Mean of `column` over the last `window` steps (the clip rate, by default)."""
        col = _column(column)
        row = self.conn.execute(
            f"SELECT AVG({col}) FROM (SELECT {col} FROM steps ORDER BY step DESC LIMIT ?)",
            (window,)).fetchone()
        return row[0]

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
        rows = self.conn.execute(
            "SELECT step, param_norms FROM steps WHERE step BETWEEN ? AND ? "
            "AND param_norms IS NOT NULL ORDER BY step", (lo, hi)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, n_params), np.float32)
        steps = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        norms = np.stack([schema.param_row(r[1], n_params) for r in rows])
        buckets = (steps - lo) // width
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        with np.errstate(invalid="ignore"):
            reduced = np.fmax.reduceat(norms, starts, axis=0)
        return steps[starts], reduced

    def bucket_stats(self, columns: Sequence[str], width: int, origin: int = 0,
                     after: int | None = None) -> list[tuple[Any, ...]]:
        """Aggregates per aligned bucket of `width` steps counted from `origin`, computed in SQL.

        One row per non-empty bucket, in order: (bucket index, first step, last step, then
        min, max, sum, count of non-NULL values for each column). Aligned buckets let a live
        reader fold later rows into the same buckets (and merge pairs of them) without a rescan.
        """
        aggs = ", ".join(f"MIN({c}), MAX({c}), SUM({c}), COUNT({c})"
                         for c in (_column(c) for c in columns))
        where = "WHERE step >= ?" + (" AND step > ?" if after is not None else "")
        args: tuple[Any, ...] = (origin,) if after is None else (origin, after)
        return [tuple(r) for r in self.conn.execute(
            f"SELECT (step - ?) / ? AS b, MIN(step), MAX(step), {aggs} FROM steps {where} "
            "GROUP BY b ORDER BY b", (origin, max(1, int(width)), *args))]

    def first_step(self) -> int | None:
        return self.conn.execute("SELECT MIN(step) FROM steps").fetchone()[0]

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

    def _bounds(self, start: int | None, end: int | None) -> tuple[int | None, int | None]:
        row = self.conn.execute("SELECT MIN(step), MAX(step) FROM steps").fetchone()
        lo = row[0] if start is None else max(start, row[0] if row[0] is not None else start)
        hi = row[1] if end is None else min(end, row[1] if row[1] is not None else end)
        if lo is None or hi is None or hi < lo:
            return None, None
        return lo, hi
