"""Keeping up with one run cheaply: a file signature to skip unchanged stores, and buckets that
fold in only the rows written since the last look."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipdash.store.layout import DB_NAME
from clipdash.store.reader import RunReader
from clipdash.tui.buckets import Buckets, width_for

# More new rows than this since the last look (a reader that fell far behind): rebucket in SQL
# instead of pulling them into Python.
FOLD_LIMIT = 20_000

Sig = tuple[tuple[int, int] | None, ...]


def db_path(run_dir: Path) -> str:
    return os.path.join(run_dir, DB_NAME)


def file_sig(db: str) -> Sig:
    """mtime and size of the database (a path from `db_path`) and of its WAL: any commit
    changes one of them. Two stats, no SQL: the cheap test that runs every tick."""
    out: list[tuple[int, int] | None] = []
    for name in (db, db + "-wal"):
        try:
            st = os.stat(name)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Tail:
    """Buckets of some step columns of one run, kept current by `refresh`."""

    def __init__(self, columns: Sequence[str], cap: int,
                 only: Mapping[str, Collection[str]] | None = None) -> None:
        """`only`: the aggregates read per column (see `RunReader.bucket_stats`)."""
        self.columns = tuple(columns)
        self.buckets = Buckets(self.columns, cap)
        self.only = only
        self.ready = False

    @property
    def last_step(self) -> int | None:
        return self.buckets.last_step

    def reset(self) -> None:
        self.buckets.reset()
        self.ready = False

    def refresh(self, reader: RunReader) -> bool:
        """Bring the buckets up to date; True when they changed."""
        last = reader.last_step()
        seen = self.buckets.last_step
        if last is None:
            changed = self.ready and seen is not None
            self.reset()
            self.ready = True
            return changed
        if not self.ready or seen is None or last < seen:  # first look, or steps were truncated
            self._load(reader, last)
            return True
        if last == seen:
            return False
        rows = reader.steps_after(seen, ("step", *self.columns), limit=FOLD_LIMIT + 1)
        if len(rows["step"]) > FOLD_LIMIT:
            self._load(reader, last)
            return True
        self.buckets.add(rows["step"], [rows[c] for c in self.columns])
        return True

    def saved(self) -> tuple[list[tuple[Any, ...]], int, int]:
        """(rows, origin, width): what `restore` takes back (for the spark cache)."""
        return self.buckets.rows(), self.buckets.origin or 0, self.buckets.width

    def restore(self, rows: Sequence[Sequence[Any]], origin: int, width: int) -> None:
        self.buckets.load(rows, origin, width)
        self.ready = True

    def _load(self, reader: RunReader, last: int) -> None:
        first = reader.first_step()
        origin = first if first is not None else 0
        width = width_for(origin, last, self.buckets.cap)
        self.buckets.load(reader.bucket_stats(self.columns, width, origin, only=self.only),
                          origin, width)
        self.ready = True
