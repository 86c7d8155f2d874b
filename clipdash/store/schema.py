"""The SQLite schema of a run, versioned with PRAGMA user_version.

One database per run, WAL mode so readers (dashboard, CLI) never block the trainer's writer.
Measured columns hold NULL where the value was NaN (SQLite stores NaN as NULL).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
# v1: params had no first_step (every parameter was tracked from the first step).
# v2: params.first_step; steps.param_norms rows may be narrower than the params table (a
#     parameter that appears at step k has no value in the rows before k).

# Seconds a reader or a command waits for the single writer lock before failing.
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Field:
    """One per-step value. Everything that handles steps is derived from STEP_FIELDS."""

    name: str
    sql: str  # column type and constraint in the steps table
    doc: str
    source: str  # key | host (known on the host) | device (measured into the device row) |
    #              derived (computed from other fields by the writer) | blob
    tb_tag: str | None = None  # TensorBoard scalar tag of every step, if any
    tb_sparse: bool = False  # the tag is written only at steps where the value is not NaN
    listed: bool = True  # a plain column of STEP_COLUMNS (readers, export, dashboard)
    blob_dtype: str = ""  # blob fields: numpy dtype of the row's values
    blob_min_width: int = 0  # blob fields: rows narrower than this are stored as NULL

    @property
    def is_int(self) -> bool:
        return self.sql.startswith("INTEGER")


STEP_FIELDS = (
    Field("step", "INTEGER PRIMARY KEY", "0-based optimizer step", "key"),
    Field("epoch", "INTEGER NOT NULL", "epoch given to step()", "host"),
    Field("wall_time", "REAL NOT NULL", "unix seconds", "host"),
    Field("loss", "REAL", "training loss", "device", "loss/train"),
    Field("lr", "REAL", "group 0: the LR this step used", "host"),
    Field("grad_norm_pre", "REAL", "total gradient norm before clipping", "device",
          "grad_norm/pre_clip"),
    Field("grad_norm_post", "REAL", "total gradient norm after clipping", "device",
          "grad_norm/post_clip"),
    Field("max_norm", "REAL", "threshold in effect; NULL when not clipping by a norm", "device",
          "clip/max_norm", tb_sparse=True),
    Field("clip_coef", "REAL", "post/pre, 1.0 when not clipped", "device", "clip/coef"),
    Field("clipped", "INTEGER NOT NULL", "1 when clipping fired", "derived", "clip/clipped"),
    Field("finite", "INTEGER NOT NULL", "1 when the pre-clip norm was finite", "derived"),
    Field("max_value", "REAL", "clip-by-value threshold, else NULL", "host", listed=False),
    Field("lr_groups", "BLOB", "float64[n_groups] when n_groups > 1, else NULL", "blob",
          listed=False, blob_dtype="<f8", blob_min_width=2),
    Field("param_norms", "BLOB", "float32[n params known at this step], pre-clip, in params.idx "
          "order", "blob", listed=False, blob_dtype="<f4"),
)
FIELDS_BY_NAME = {f.name: f for f in STEP_FIELDS}
# Step columns that readers may ask for by name (a whitelist keeps SQL built from names safe).
STEP_COLUMNS = tuple(f.name for f in STEP_FIELDS if f.listed)
# `clipdash export` columns before lr_group_N and the parameters.
EXPORT_COLUMNS = (*STEP_COLUMNS, "max_value")
# The device row of the Tracker's buffer, in order (per-parameter norms follow).
DEVICE_FIELDS = tuple(f.name for f in STEP_FIELDS if f.source == "device")
# Per-step TensorBoard scalars: (tag, field); lr/group_N and the histogram are added per step.
TB_SCALARS = tuple((f.tb_tag, f.name) for f in STEP_FIELDS if f.tb_tag and not f.tb_sparse)
TB_SPARSE_SCALARS = tuple((f.tb_tag, f.name) for f in STEP_FIELDS if f.tb_tag and f.tb_sparse)
STEP_INSERT = (f"INSERT OR REPLACE INTO steps ({', '.join(f.name for f in STEP_FIELDS)}) "
               f"VALUES ({', '.join('?' for _ in STEP_FIELDS)})")
_STEPS_DDL = "\n".join(f"    {f.name} {f.sql}{',' if i < len(STEP_FIELDS) - 1 else ''}  -- {f.doc}"
                       for i, f in enumerate(STEP_FIELDS))

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
CREATE TABLE IF NOT EXISTS params (
    idx   INTEGER PRIMARY KEY,     -- position in steps.param_norms
    name  TEXT NOT NULL,
    shape TEXT NOT NULL,
    numel INTEGER NOT NULL,
    first_step INTEGER             -- first step with a value (NULL: from the first step)
);
CREATE TABLE IF NOT EXISTS steps (
""" + _STEPS_DDL + """
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


# What turns a store of version N into N + 1 (the writer applies them when it reopens a run;
# readers read older versions as they are: every column they ask for exists since v1).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE params ADD COLUMN first_step INTEGER",),
}


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring an older store up to SCHEMA_VERSION in one transaction; returns the old version."""
    old = check_version(conn, path)
    if old == SCHEMA_VERSION:
        return old
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(old, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return old


def param_row(blob: bytes | None, width: int) -> Any:
    """A step's per-parameter norms as float32[width]: NaN for parameters that appeared later
    (a v2 row is as wide as the parameter set at its step). None when the step has none."""
    if not blob:
        return None
    import numpy as np  # noqa: PLC0415 - readers that never decode blobs start without numpy

    row = np.frombuffer(blob, np.float32)
    if len(row) >= width:
        return row[:width]
    return np.concatenate([row, np.full(width - len(row), np.nan, np.float32)])


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a clipdash store ({exc})") from exc
    if version == 0:
        raise StoreError(f"{path}: not a clipdash store (no schema version)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is newer than this clipdash "
                         f"({SCHEMA_VERSION}); upgrade clipdash")
    return int(version)
