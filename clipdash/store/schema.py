"""The SQLite schema of a run, versioned with PRAGMA user_version.

One database per run, WAL mode so readers (dashboard, CLI) never block the trainer's writer.
Measured columns hold NULL where the value was NaN (SQLite stores NaN as NULL).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

# Seconds a reader or a command waits for the single writer lock before failing.
BUSY_TIMEOUT_MS = 30_000

# Step columns that readers may ask for by name (a whitelist keeps SQL built from names safe).
STEP_COLUMNS = (
    "step",
    "epoch",
    "wall_time",
    "loss",
    "lr",
    "grad_norm_pre",
    "grad_norm_post",
    "max_norm",
    "clip_coef",
    "clipped",
    "finite",
)

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
CREATE TABLE IF NOT EXISTS params (
    idx   INTEGER PRIMARY KEY,     -- position in steps.param_norms
    name  TEXT NOT NULL,
    shape TEXT NOT NULL,
    numel INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    step           INTEGER PRIMARY KEY,  -- 0-based optimizer step
    epoch          INTEGER NOT NULL,
    wall_time      REAL NOT NULL,        -- unix seconds
    loss           REAL,
    lr             REAL,                 -- group 0: the LR this step used
    grad_norm_pre  REAL,
    grad_norm_post REAL,
    max_norm       REAL,                 -- threshold in effect; NULL when not clipping by norm
    clip_coef      REAL,                 -- post/pre, 1.0 when not clipped
    clipped        INTEGER NOT NULL,
    finite         INTEGER NOT NULL,
    max_value      REAL,                 -- clip-by-value threshold, else NULL
    lr_groups      BLOB,                 -- float64[n_groups] when n_groups > 1, else NULL
    param_norms    BLOB                  -- float32[n_params], pre-clip, in params.idx order
);
CREATE TABLE IF NOT EXISTS evals (
    step      INTEGER NOT NULL,
    metric    TEXT NOT NULL,             -- loss, accuracy, ...
    value     REAL,
    wall_time REAL NOT NULL,
    PRIMARY KEY (step, metric)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    step      INTEGER,
    wall_time REAL NOT NULL,
    kind      TEXT NOT NULL,             -- control, nonfinite, checkpoint, resume, status, ...
    message   TEXT NOT NULL,
    data      TEXT                       -- JSON
);
CREATE INDEX IF NOT EXISTS events_step ON events(step);
CREATE TABLE IF NOT EXISTS commands (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    created  REAL NOT NULL,
    source   TEXT NOT NULL,              -- cli, dashboard, api
    action   TEXT NOT NULL,              -- pause, resume, stop, set
    key      TEXT,                       -- for set: max_norm, lr, max_value
    value    TEXT,                       -- for set: as typed by the user
    state    TEXT NOT NULL DEFAULT 'pending',  -- pending, applied, rejected
    step     INTEGER,                    -- step from which it took effect
    message  TEXT,
    resolved REAL
);
CREATE TABLE IF NOT EXISTS status (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    state       TEXT NOT NULL,           -- running, paused, finished, failed, stopped
    heartbeat   REAL NOT NULL,
    pid         INTEGER,
    host        TEXT,
    started     REAL NOT NULL,
    ended       REAL,
    last_step   INTEGER,
    total_steps INTEGER,
    message     TEXT
);
"""


class StoreError(RuntimeError):
    """The file is not a clipdash store, or has a schema this version cannot read."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode; writers open explicit BEGIN IMMEDIATE transactions."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def create(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(DDL)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a clipdash store ({exc})") from exc
    if version == 0:
        raise StoreError(f"{path}: not a clipdash store (no schema version)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is newer than this clipdash "
                         f"({SCHEMA_VERSION}); upgrade clipdash")
