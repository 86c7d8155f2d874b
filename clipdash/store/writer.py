"""The trainer's side of the store: one connection, owned by the tracker's writer thread.

Every method is one short BEGIN IMMEDIATE transaction, so readers and `clipdash ctl` wait at most
milliseconds for the lock.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipdash.store import schema
from clipdash.store.layout import DB_NAME

STEP_INSERT = (
    "INSERT OR REPLACE INTO steps (step, epoch, wall_time, loss, lr, grad_norm_pre, "
    "grad_norm_post, max_norm, clip_coef, clipped, finite, max_value, lr_groups, param_norms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _nullable(values: np.ndarray) -> list[float | None]:
    """NaN becomes None explicitly, so the column's meaning does not hang on SQLite's coercion."""
    return [None if v != v else v for v in values.tolist()]


class RunWriter:
    """Creates or reopens a run's store and appends to it."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.conn = schema.connect(self.path)
            schema.check_version(self.conn, self.path)
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
        rows = [(i, name, json.dumps(list(shape)), int(np.prod(shape, dtype=np.int64)))
                for i, (name, shape) in enumerate(params)]
        with self._tx():
            self.conn.execute("DELETE FROM params")
            self.conn.executemany(
                "INSERT INTO params (idx, name, shape, numel) VALUES (?, ?, ?, ?)", rows)

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

    def append_steps(self, cols: dict[str, np.ndarray]) -> None:
        """A batch of steps as columns (numpy arrays of equal length).

        Required: step, epoch, wall_time, loss, lr, grad_norm_pre, grad_norm_post, max_norm,
        clip_coef, clipped, finite. Optional: max_value, lr_groups (2-D float64),
        param_norms (2-D float32). INSERT OR REPLACE: a resumed run rewrites the steps that a
        crash left after its checkpoint instead of duplicating them.
        """
        n = len(cols["step"])
        if n == 0:
            return
        nothing: list[None] = [None] * n
        lr_groups = cols.get("lr_groups")
        norms = cols.get("param_norms")
        groups_blobs: Iterable[bytes | None] = (
            [row.astype(np.float64).tobytes() for row in lr_groups]
            if lr_groups is not None and lr_groups.shape[1] > 1 else nothing)
        norm_blobs: Iterable[bytes | None] = (
            [row.astype(np.float32).tobytes() for row in norms] if norms is not None else nothing)
        max_value = cols.get("max_value")
        rows = zip(
            cols["step"].astype(np.int64).tolist(),
            cols["epoch"].astype(np.int64).tolist(),
            cols["wall_time"].tolist(),
            _nullable(cols["loss"]),
            _nullable(cols["lr"]),
            _nullable(cols["grad_norm_pre"]),
            _nullable(cols["grad_norm_post"]),
            _nullable(cols["max_norm"]),
            _nullable(cols["clip_coef"]),
            cols["clipped"].astype(np.int64).tolist(),
            cols["finite"].astype(np.int64).tolist(),
            _nullable(max_value) if max_value is not None else nothing,
            groups_blobs,
            norm_blobs,
            strict=True,
        )
        last = int(cols["step"][-1])
        with self._tx():
            self.conn.executemany(STEP_INSERT, rows)
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

    def truncate_after(self, step: int) -> None:
        """Forget what was recorded after `step` (resume from the checkpoint taken after it).

        Events at step + 1 recorded before that checkpoint's own event (commands applied at the
        boundary, the pause) happened before the save and stay; resume events always stay.
        """
        with self._tx():
            self.conn.execute("DELETE FROM steps WHERE step > ?", (step,))
            self.conn.execute("DELETE FROM evals WHERE step > ?", (step,))
            saved = self.conn.execute(
                "SELECT MAX(id) FROM events WHERE step = ? AND kind = 'checkpoint'",
                (step + 1,)).fetchone()[0]
            self.conn.execute(
                "DELETE FROM events WHERE kind != 'resume' AND (step > ? OR (step = ? AND "
                "id > ?))", (step + 1, step + 1, -1 if saved is None else saved))
            # last_step only grows while appending; a truncation is the one place it goes back.
            self.conn.execute("UPDATE status SET last_step = (SELECT MAX(step) FROM steps) "
                              "WHERE id = 1")

    # -- commands (trainer side) ----------------------------------------------------------

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
