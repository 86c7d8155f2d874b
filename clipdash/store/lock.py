"""One writer per run directory: an exclusive lock held for the whole life of the writer.

The lock is `fcntl.flock` on `RUN/writer.lock`. The kernel drops it when the holder's process
ends, however it ends (SIGKILL included), so a crashed run never needs a manual unlock; a frozen
(SIGSTOP) trainer still holds it, so a second trainer cannot slip in while the first is stopped.
The file itself holds the holder's pid and host, for the message a refused writer prints.

    lock = acquire(run_dir)      # RunLocked (one line, names pid and host) if someone has it
    ...                          # write the record
    lock.release()               # or let the process end

`holder(run_dir)` asks without taking the lock (for `clipdash run --resume` and sweeps).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

LOCK_NAME = "writer.lock"


class RunLocked(RuntimeError):
    """Another process is writing this run directory; str() is one line naming it."""

    def __init__(self, run_dir: Path, info: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.info = info
        who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
        super().__init__(f"run {run_dir.name} is being written by another process ({who}): "
                         "one writer per run directory")


class RunLock:
    """A held lock; `release()` (or the end of the process) frees it."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for a reader to report
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_info(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def acquire(run_dir: str | Path) -> RunLock:
    """Take the run's writer lock at once, or raise RunLocked (never waits)."""
    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_info(fd)
        os.close(fd)
        raise RunLocked(run_dir, info) from None
    except BaseException:
        os.close(fd)
        raise
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, me, 0)
    return RunLock(run_dir, fd)


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """{"pid": .., "host": ..} of the process writing `run_dir` now, or None if nobody is.

    A probe, not a reservation: take the lock with `acquire` to be sure of it.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (an older run, or a read-only copy): no live writer
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd) or {"pid": None, "host": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
