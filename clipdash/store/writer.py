"""The trainer's side of the store: one connection, owned by the tracker's writer thread.

Every method is one short BEGIN IMMEDIATE transaction, so readers and `clipdash ctl` wait at most
milliseconds for the lock.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipdash.store import schema
from clipdash.store.commands import reject_pending
from clipdash.store.layout import DB_NAME
from clipdash.store.schema import STEP_FIELDS, STEP_INSERT, Field


def _nullable(values: np.ndarray) -> list[float | None]:
    """NaN becomes None explicitly, so the column's meaning does not hang on SQLite's coercion.

    Most columns of most batches hold no NaN: one vectorised test spares the per-value check."""
    if not np.isnan(values).any():
        return values.tolist()
    return [None if v != v else v for v in values.tolist()]


def _sql_values(values: np.ndarray | list[Any] | None, field: Field, n: int) -> list[Any]:
    """One column of a batch as SQLite values (blobs: a 2-D array's rows, encoded)."""
    if values is None:
        return [None] * n
    if field.source == "blob":
        if not isinstance(values, np.ndarray):
            return list(values)  # already bytes / None per row
        rows = values.reshape(n, -1).astype(field.blob_dtype)
        if rows.shape[1] < max(1, field.blob_min_width):
            return [None] * n
        return [row.tobytes() for row in rows]
    array = np.asarray(values)
    return array.astype(np.int64).tolist() if field.is_int else _nullable(array.astype(np.float64))


class RunWriter:
    """Creates or reopens a run's store and appends to it."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.conn = schema.connect(self.path)
            try:
                schema.migrate(self.conn, self.path)
            except BaseException:
                self.conn.close()
                raise
        else:
            self.conn = schema.create(self.path)

    # -- metadata -------------------------------------------------------------------------

    def set_meta(self, **items: Any) -> None:
        with self._tx():
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    def set_params(self, params: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Names and shapes of the tracked parameters, in the order of the per-step norm blob."""
        with self._tx():
            self.conn.execute("DELETE FROM params")
        self.add_params(params, None)

    def add_params(self, params: Sequence[tuple[str, Sequence[int]]],
                   first_step: int | None, start: int | None = None) -> None:
        """Append parameters to the blob's columns (idx from `start`, default: after the last);
        `first_step` is the first step whose row has their norms (None: every step)."""
        with self._tx():
            if start is None:
                start = self.conn.execute("SELECT COUNT(*) FROM params").fetchone()[0]
            rows = [(start + i, name, json.dumps(list(shape)),
                     int(np.prod(shape, dtype=np.int64)), first_step)
                    for i, (name, shape) in enumerate(params)]
            self.conn.executemany(
                "INSERT OR REPLACE INTO params (idx, name, shape, numel, first_step) "
                "VALUES (?, ?, ?, ?, ?)", rows)

    def params(self) -> list[tuple[str, int | None]]:
        """(name, first_step) of the recorded parameters, in blob order."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT name, first_step FROM params ORDER BY idx")]

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- status ---------------------------------------------------------------------------

    def start(self, total_steps: int | None, *, state: str = "running") -> None:
        now = time.time()
        with self._tx():
            self.conn.execute(
                "INSERT OR REPLACE INTO status (id, state, heartbeat, pid, host, started, ended, "
                "last_step, total_steps, message) VALUES (1, ?, ?, ?, ?, ?, NULL, "
                "(SELECT MAX(step) FROM steps), ?, NULL)",
                (state, now, os.getpid(), socket.gethostname(), now, total_steps),
            )

    def set_state(self, state: str, message: str | None = None) -> None:
        ended = time.time() if state in ("finished", "failed", "stopped") else None
        with self._tx():
            self.conn.execute(
                "UPDATE status SET state = ?, heartbeat = ?, ended = ?, message = ? WHERE id = 1",
                (state, time.time(), ended, message),
            )

    def heartbeat(self) -> None:
        with self._tx():
            self.conn.execute("UPDATE status SET heartbeat = ? WHERE id = 1", (time.time(),))

    # -- records --------------------------------------------------------------------------

    def append_steps(self, cols: dict[str, np.ndarray | list[Any]]) -> None:
        """A batch of steps as columns of equal length, one per field of schema.STEP_FIELDS.

        Blob fields are lists of bytes (or None); a missing optional field is NULL. INSERT OR
        REPLACE: a resumed run rewrites the steps that a crash left after its checkpoint
        instead of duplicating them.
        """
        n = len(cols["step"])
        if n == 0:
            return
        columns = [_sql_values(cols.get(f.name), f, n) for f in STEP_FIELDS]
        last = int(cols["step"][-1])
        with self._tx():
            self.conn.executemany(STEP_INSERT, zip(*columns, strict=True))
            self.conn.execute(
                "UPDATE status SET last_step = MAX(COALESCE(last_step, -1), ?), heartbeat = ? "
                "WHERE id = 1", (last, time.time()))

    def add_eval(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        with self._tx():
            self.conn.executemany(
                "INSERT OR REPLACE INTO evals (step, metric, value, wall_time) VALUES (?, ?, ?, ?)",
                [(step, k, None if v != v else float(v), now) for k, v in metrics.items()],
            )

    def add_event(self, step: int | None, kind: str, message: str,
                  data: dict[str, Any] | None = None) -> None:
        with self._tx():
            self.conn.execute(
                "INSERT INTO events (step, wall_time, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                (step, time.time(), kind, message, json.dumps(data) if data else None),
            )

    def truncate_after(self, step: int, keep: Sequence[str] = ("resume",)) -> None:
        """Forget what was recorded after `step` (resume from the checkpoint taken after it).

        Events at step + 1 recorded before that checkpoint's own event (commands applied at the
        boundary, the pause) happened before the save and stay; events of the kinds in `keep`
        always stay (resume; a rewind also keeps its alerts).
        """
        marks = ", ".join("?" * len(keep)) or "NULL"
        with self._tx():
            self.conn.execute("DELETE FROM steps WHERE step > ?", (step,))
            self.conn.execute("DELETE FROM evals WHERE step > ?", (step,))
            saved = self.conn.execute(
                "SELECT MAX(id) FROM events WHERE step = ? AND kind = 'checkpoint'",
                (step + 1,)).fetchone()[0]
            self.conn.execute(
                f"DELETE FROM events WHERE kind NOT IN ({marks}) AND (step > ? OR (step = ? "
                "AND id > ?))", (*keep, step + 1, step + 1, -1 if saved is None else saved))
            # last_step only grows while appending; a truncation is the one place it goes back.
            self.conn.execute("UPDATE status SET last_step = (SELECT MAX(step) FROM steps) "
                              "WHERE id = 1")

    def history(self, columns: Sequence[str], before: int, n: int) -> dict[str, list[float]]:
        """The last `n` recorded values of each step column before step `before`, oldest first
        (NaN for NULL)."""
        names = [f.name for f in STEP_FIELDS]
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise KeyError(unknown[0])
        rows = self.conn.execute(
            f"SELECT {', '.join(columns)} FROM steps WHERE step < ? ORDER BY step DESC LIMIT ?",
            (before, n)).fetchall()[::-1]
        return {c: [math.nan if r[i] is None else float(r[i]) for r in rows]
                for i, c in enumerate(columns)}

    def events_at(self, step: int) -> list[tuple[int, str, str]]:
        """(step, kind, message) of the events recorded at `step`, in order."""
        return self.conn.execute(
            "SELECT step, kind, message FROM events WHERE step = ? ORDER BY id",
            (step,)).fetchall()

    # -- commands (trainer side) ----------------------------------------------------------

    def reject_pending(self, message: str) -> int:
        return reject_pending(self.conn, message)

    def pending_commands(self) -> list[tuple[int, str, str, str | None, str | None]]:
        """(id, source, action, key, value) of unresolved commands, oldest first."""
        return self.conn.execute(
            "SELECT id, source, action, key, value FROM commands WHERE state = 'pending' "
            "ORDER BY id").fetchall()

    def resolve_command(self, command_id: int, applied: bool, step: int | None,
                        message: str) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE commands SET state = ?, step = ?, message = ?, resolved = ? WHERE id = ?",
                ("applied" if applied else "rejected", step, message, time.time(), command_id),
            )

    def close(self) -> None:
        self.conn.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE takes the write lock up front: no deadlock-prone lock upgrade later."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
