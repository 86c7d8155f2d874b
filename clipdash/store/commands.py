"""The commands table: how `clipdash ctl` and the dashboard talk to a running trainer.

Senders `submit` a row (state pending); the trainer's writer thread polls pending rows, the
trainer applies or rejects each at a step boundary and `resolve`s it with the step from which it
took effect. Rows a trainer never got to (it ended, or was killed) are rejected when it closes or
when the run is resumed, so a resumed run never obeys a stale command.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdash.store import schema
from clipdash.store.layout import DB_NAME
from clipdash.store.reader import LIVE_STATES, effective_status


@dataclass(frozen=True)
class CommandResult:
    id: int
    state: str  # pending (not acknowledged yet), applied, rejected
    step: int | None  # the first step the command affected
    message: str | None


def _connect(run_dir: str | Path) -> sqlite3.Connection:
    """A connection to a run's store; StoreError (naming the file) if it is not one."""
    path = Path(run_dir) / DB_NAME
    conn = schema.connect(path)
    try:
        schema.check_version(conn, path)
    except schema.StoreError:
        conn.close()
        raise
    return conn


def submit(run_dir: str | Path, action: str, key: str | None = None, value: str | None = None,
           source: str = "api") -> int:
    """Queue a command for the trainer; return its id. The caller validates before submitting."""
    conn = _connect(run_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT INTO commands (created, source, action, key, value) VALUES (?, ?, ?, ?, ?)",
            (time.time(), source, action, key, value))
        conn.execute("COMMIT")
        return int(cur.lastrowid or 0)
    finally:
        conn.close()


def result(run_dir: str | Path, command_id: int,
           conn: sqlite3.Connection | None = None) -> CommandResult:
    own = conn is None
    conn = conn or _connect(run_dir)
    try:
        row = conn.execute("SELECT state, step, message FROM commands WHERE id = ?",
                           (command_id,)).fetchone()
    finally:
        if own:
            conn.close()
    if row is None:
        raise KeyError(command_id)
    return CommandResult(command_id, row[0], row[1], row[2])


def _status(run_dir: str | Path, conn: sqlite3.Connection | None) -> tuple[Any, ...] | None:
    own = conn is None
    conn = conn or _connect(run_dir)
    try:
        row = conn.execute("SELECT state, heartbeat, pid, host FROM status WHERE id = 1").fetchone()
    finally:
        if own:
            conn.close()
    return tuple(row) if row else None


def live_state(run_dir: str | Path, conn: sqlite3.Connection | None = None) -> str:
    """The run's status word, with "lost" for a stale heartbeat."""
    row = _status(run_dir, conn)
    return effective_status(row[0] if row else None, row[1] if row else None)


def is_live(state: str) -> bool:
    return state in LIVE_STATES


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def process_gone(run_dir: str | Path, conn: sqlite3.Connection | None = None) -> bool:
    """True when the run says it is live but its trainer, on this host, no longer exists.

    Catches a killed trainer at once instead of after the heartbeat goes stale. Unknowable for
    a trainer on another host (False).
    """
    row = _status(run_dir, conn)
    if row is None or row[0] not in LIVE_STATES or not row[2]:
        return False
    return row[3] == socket.gethostname() and not pid_alive(int(row[2]))


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's meta table (clip_mode, settable keys, ...), decoded."""
    conn = _connect(run_dir)
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    finally:
        conn.close()
    return {k: json.loads(v) for k, v in rows}


# -- the trainer's side ------------------------------------------------------------------------


def reject_pending(conn: sqlite3.Connection, message: str) -> int:
    """Reject every command still pending (the trainer is ending, or a run is being resumed)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute(
            "UPDATE commands SET state = 'rejected', message = ?, resolved = ? "
            "WHERE state = 'pending'", (message, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return cur.rowcount
