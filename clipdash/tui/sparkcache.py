"""Whole-run sparkline buckets of finished runs, kept between dashboard sessions.

A finished run's buckets cost one scan of all its steps (0.1-0.2 s for 100,000 steps); they
never change while its database does not, so the dashboard keeps them in a small SQLite file
under the user's cache directory, keyed by the database's path, size and mtime. A second
`clipdash watch` of the same runs shows every sparkline at first paint. The cache is only a
cache: anything wrong with it (no home, read-only, damaged, busy) just means a rescan.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CACHE_ENV = "CLIPDASH_CACHE_DIR"
VERSION = 2  # of what is kept (2: the list's sparklines read only what they draw)
Rows = list[tuple[Any, ...]]


def default_path() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clipdash")
    return Path(base) / "watch-sparks.sqlite"


class SparkCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._conn: sqlite3.Connection | None = None
        self._broken = False

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=0.2, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA synchronous=OFF")  # a lost write is a rescan, no harm
                conn.execute("CREATE TABLE IF NOT EXISTS sparks (db TEXT, columns TEXT, "
                             "cap INTEGER, sig TEXT, origin INTEGER, width INTEGER, rows TEXT, "
                             "PRIMARY KEY (db, columns, cap))")
                self._conn = conn
            except (sqlite3.Error, OSError):
                self._broken = True
        return self._conn

    @staticmethod
    def _key(db: str, sig: tuple[int, int], columns: Sequence[str], cap: int) -> tuple[Any, ...]:
        return (os.path.realpath(db), ",".join(columns), cap, f"v{VERSION}:{sig[0]}:{sig[1]}")

    def get(self, db: str, sig: tuple[int, int], columns: Sequence[str],
            cap: int) -> tuple[Rows, int, int] | None:
        """(bucket rows, origin, width) as `RunReader.bucket_stats` gave them, if still valid."""
        conn = self._db()
        if conn is None:
            return None
        path, cols, cap_, stamp = self._key(db, sig, columns, cap)
        try:
            row = conn.execute("SELECT origin, width, rows FROM sparks WHERE db = ? AND "
                               "columns = ? AND cap = ? AND sig = ?",
                               (path, cols, cap_, stamp)).fetchone()
            return None if row is None else ([tuple(r) for r in json.loads(row[2])],
                                             int(row[0]), int(row[1]))
        except (sqlite3.Error, ValueError, TypeError):
            return None

    def put(self, db: str, sig: tuple[int, int], columns: Sequence[str], cap: int, rows: Rows,
            origin: int, width: int) -> None:
        conn = self._db()
        if conn is None:
            return
        path, cols, cap_, stamp = self._key(db, sig, columns, cap)
        with contextlib.suppress(sqlite3.Error, ValueError):
            conn.execute("INSERT OR REPLACE INTO sparks VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (path, cols, cap_, stamp, origin, width, json.dumps(rows)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
