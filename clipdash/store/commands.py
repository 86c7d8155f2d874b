"""The commands table: how `clipdash ctl` and the dashboard talk to a running trainer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from clipdash.store import schema
from clipdash.store.layout import DB_NAME
from clipdash.store.reader import LIVE_STATES, effective_status


@dataclass(frozen=True)
class CommandResult:
    id: int
    state: str  # pending (timed out), applied, rejected
    step: int | None
    message: str | None


def submit(run_dir: str | Path, action: str, key: str | None = None, value: str | None = None,
           source: str = "api") -> int:
    """Queue a command for the trainer; return its id. The caller validates before submitting."""
    conn = schema.connect(Path(run_dir) / DB_NAME)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT INTO commands (created, source, action, key, value) VALUES (?, ?, ?, ?, ?)",
            (time.time(), source, action, key, value))
        conn.execute("COMMIT")
        return int(cur.lastrowid or 0)
    finally:
        conn.close()


def result(run_dir: str | Path, command_id: int) -> CommandResult:
    conn = schema.connect(Path(run_dir) / DB_NAME)
    try:
        row = conn.execute("SELECT state, step, message FROM commands WHERE id = ?",
                           (command_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise KeyError(command_id)
    return CommandResult(command_id, row[0], row[1], row[2])


def live_state(run_dir: str | Path) -> str:
    """The run's status word, with "lost" for a stale heartbeat."""
    conn = schema.connect(Path(run_dir) / DB_NAME)
    try:
        row = conn.execute("SELECT state, heartbeat FROM status WHERE id = 1").fetchone()
    finally:
        conn.close()
    return effective_status(row[0] if row else None, row[1] if row else None)


def is_live(state: str) -> bool:
    return state in LIVE_STATES
