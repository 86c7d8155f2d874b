"""The run directory's writer lock, against real processes (running, frozen, killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipdash.store.lock import RunLocked, acquire, holder

HOLD = ("import sys, time; from clipdash.store.lock import acquire; acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)")


def _holding_process(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"  # readline returns at EOF too: no hang
    return proc


def test_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    proc = _holding_process(tmp_path)
    try:
        info = holder(tmp_path)
        assert info is not None and info["pid"] == proc.pid
        with pytest.raises(RunLocked, match=f"pid {proc.pid} on "):
            acquire(tmp_path)
        os.kill(proc.pid, signal.SIGSTOP)  # a frozen trainer still holds its run
        with pytest.raises(RunLocked):
            acquire(tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert holder(tmp_path) is None  # the kernel freed it with the process
        with acquire(tmp_path) as lock:
            assert lock.held
            assert holder(tmp_path) == {"pid": os.getpid(), "host": info["host"]}
        assert not lock.held and holder(tmp_path) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_release_frees_the_run_and_holder_probes_without_taking(tmp_path: Path) -> None:
    assert holder(tmp_path) is None  # no lock file yet
    lock = acquire(tmp_path)
    with pytest.raises(RunLocked):  # one open file description per acquire: refused in-process too
        acquire(tmp_path)
    lock.release()
    lock.release()  # idempotent
    assert holder(tmp_path) is None
    acquire(tmp_path).release()
