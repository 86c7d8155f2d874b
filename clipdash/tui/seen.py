"""Which alerts the user has seen: per run, the alert count when its run view was last opened.

The run list shows a run with more alerts than that in bold red (issue #12: it stands out) and
the count dim once seen. Kept across dashboard sessions in a small JSON file under the user's
cache directory, one entry per run directory (its resolved path), with the run's start time so
that a run re-created in the same directory starts unseen. Like the spark cache it is only a
cache: a damaged, unreadable or unwritable file means "nothing seen yet" and the dashboard goes
on keeping what is seen in memory. Deleting the file resets every mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipdash.tui.messages import RunRow

VERSION = 1
FILE_NAME = "seen.json"


def default_path() -> Path:
    """`$XDG_CACHE_HOME/clipdash/seen.json` (`~/.cache/clipdash/seen.json` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "clipdash" / FILE_NAME


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The file's entries; {} for anything that is not a file this version wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) and data.get("version") == VERSION else None
    if not isinstance(runs, dict):
        return {}
    return {k: v for k, v in runs.items() if isinstance(v, dict)
            and isinstance(v.get("seen"), int)
            and (v.get("started") is None or isinstance(v["started"], (int, float)))}


class SeenAlerts:
    """Alert counts seen, by run. `path=None` keeps them in memory only (what tests get unless
    they pass a file)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries = _read(path) if path is not None else {}
        self._keys: dict[str, str] = {}  # run path as listed -> resolved path
        self._saving = threading.Lock()  # saves run in worker threads: the last one wins

    def _key(self, run_path: str) -> str:
        # Resolved once per run: the same directory reached by another path is the same run.
        key = self._keys.get(run_path)
        if key is None:
            key = self._keys[run_path] = os.path.realpath(run_path)
        return key

    def seen(self, row: RunRow) -> int:
        """How many of the run's alerts the user has seen (0 for a run re-created since)."""
        entry = self._entries.get(self._key(row.path))
        if entry is None or entry.get("started") != row.started:
            return 0
        return int(entry["seen"])

    def unseen(self, row: RunRow) -> bool:
        return row.alerts > self.seen(row)

    def mark(self, row: RunRow) -> bool:
        """The user has seen the run's alerts as they are now; True when that changed anything
        (and the file should be saved)."""
        if self.seen(row) == row.alerts:
            return False
        self._entries[self._key(row.path)] = {"started": row.started, "seen": row.alerts}
        return True

    def save(self, rows: Iterable[RunRow] = ()) -> None:
        """Write the file atomically (a temporary file renamed over it), merged with what other
        dashboards wrote there since. Entries of runs whose directory is gone, or that `rows`
        (the runs listed now) show re-created, are dropped, so the file stays small.
        Raises OSError when it cannot be written; what is seen stays in memory."""
        if self.path is None:
            return
        with self._saving:
            current = {self._key(r.path): r.started for r in rows}
            merged = {**_read(self.path), **self._entries}
            kept = {k: v for k, v in merged.items() if os.path.isdir(k)
                    and (k not in current or v.get("started") == current[k])}
            _write(self.path, kept)


def _write(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".seen.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "runs": entries}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
