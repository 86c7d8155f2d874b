"""The recorder: failures reach the loop, a record is never silently replaced, old stores open.

Real faults where the machine allows: a full filesystem and a read-only remount (a small tmpfs,
root only: skipped with the reason otherwise), a second process holding the run (also frozen
with SIGSTOP), and a sink that raises.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clipdash import Tracker
from clipdash.store import RunReader, schema
from clipdash.store.layout import DB_NAME
from clipdash.store.lock import RunLocked
from clipdash.store.writer import RunWriter
from clipdash.track.recorder import RecordError, RunExists

STEPS = 20


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def train(tracker: Tracker, model: nn.Module, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.zero_grad()
        loss = model(torch.randn(16, 8, generator=gen)).pow(2).mean()
        loss.backward()
        tracker.clip()
        tracker.step(loss)


class FailingSink:
    """Fails its `fail_at`-th batch of steps the way a full disk does."""

    def __init__(self, fail_at: int) -> None:
        self.batches = 0
        self.fail_at = fail_at

    def write_steps(self, cols: dict[str, Any]) -> None:
        self.batches += 1
        if self.batches == self.fail_at:
            raise OSError(28, "No space left on device")

    def write_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    def write_event(self, step: int | None, kind: str, message: str) -> None: ...
    def set_param_names(self, names: list[str]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def test_a_failing_sink_reaches_the_loop_and_marks_the_run_failed(tmp_path: Path) -> None:
    model, opt = make()
    run_dir = tmp_path / "fail"
    tracker = Tracker(model, opt, run_dir=run_dir, tensorboard=False, buffer_steps=4,
                      quiet=True)
    tracker.recorder.sinks.append(FailingSink(fail_at=2))
    with pytest.raises(RecordError) as caught, tracker:
        train(tracker, model, 8)  # two batches of 4: the second fails
        tracker.flush()
        train(tracker, model, 8)
    message = str(caught.value)
    assert message == f"clipdash: recording {run_dir} failed: No space left on device"
    with RunReader(run_dir) as r:
        steps = [row["step"] for row in r.iter_steps()]
        status = r.status_row()
    assert status is not None
    assert status["state"] == "failed"
    assert status["message"] == "recording failed: No space left on device"
    assert steps == list(range(len(steps))) and len(steps) <= 8  # no step past the gap


def test_the_error_is_raised_at_the_next_step_and_close_does_not_repeat_it(
        tmp_path: Path) -> None:
    model, opt = make()
    tracker = Tracker(model, opt, run_dir=tmp_path / "s", tensorboard=False, buffer_steps=2,
                      quiet=True)
    tracker.recorder.sinks.append(FailingSink(fail_at=1))
    train(tracker, model, 2)
    with pytest.raises(RecordError):
        tracker.flush()
    with pytest.raises(RecordError):
        train(tracker, model, 1)
    tracker.close("failed", "gave up")  # already reported: no second raise
    with RunReader(tmp_path / "s") as r:
        assert r.status() == "failed"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_filesystem_stops_the_loop_with_one_line(tiny_fs: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(40)])  # 80 norms per step
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    run_dir = tiny_fs / "full"
    with pytest.raises(RecordError) as caught, Tracker(
            model, opt, run_dir=run_dir, buffer_steps=64, quiet=True,
            per_param_scalars=True) as tracker:
        for _ in range(20_000):  # ~1 MiB of per-parameter records fills it long before
            model.zero_grad()
            model(torch.randn(4, 64)).pow(2).mean().backward()
            tracker.clip()
            tracker.step(0.0)
    message = str(caught.value)
    assert "\n" not in message and str(run_dir) in message
    assert "No space left on device" in message or "full" in message


def test_a_read_only_filesystem_is_refused_with_one_line(tiny_fs: Path) -> None:
    (tiny_fs / "ro").mkdir()
    done = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
    model, opt = make()
    with pytest.raises(RecordError) as caught:
        Tracker(model, opt, run_dir=tiny_fs / "ro", quiet=True)
    expected = f"clipdash: cannot record in {tiny_fs / 'ro'}: Read-only file system"
    assert str(caught.value) == expected


# -- never silently replace a record ---------------------------------------------------------


def test_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    model, opt = make()
    run_dir = tmp_path / "done"
    with Tracker(model, opt, run_dir=run_dir, quiet=True) as tracker:
        train(tracker, model, STEPS)
    with pytest.raises(RunExists, match="already holds a run: pass resume=True"):
        Tracker(model, opt, run_dir=run_dir, quiet=True)
    with RunReader(run_dir) as r:
        assert r.step_count() == STEPS  # the refused Tracker changed nothing
    with Tracker(model, opt, run_dir=run_dir, start_step=STEPS, quiet=True) as tracker:
        train(tracker, model, 5)
    with RunReader(run_dir) as r:
        assert [row["step"] for row in r.iter_steps()] == list(range(STEPS + 5))
    with Tracker(model, opt, run_dir=run_dir, overwrite=True, quiet=True) as tracker:
        train(tracker, model, 3)
    with RunReader(run_dir) as r:
        assert r.step_count() == 3
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


HOLD_TRACKER = """
import sys, time, torch
from clipdash import Tracker
m = torch.nn.Linear(2, 1)
t = Tracker(m, torch.optim.SGD(m.parameters(), lr=0.1), run_dir=sys.argv[1], quiet=True)
print("recording", flush=True)
time.sleep(60)
"""


def test_a_live_or_frozen_run_is_refused_with_its_holder_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_TRACKER, str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "recording"  # EOF returns too: no hang
        model, opt = make()
        for mode in ({"resume": True}, {"overwrite": True}, {}):
            with pytest.raises(RunLocked, match=f"pid {proc.pid} on "):
                Tracker(model, opt, run_dir=run_dir, quiet=True, **mode)
        os.kill(proc.pid, signal.SIGSTOP)
        with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
            Tracker(model, opt, run_dir=run_dir, resume=True, quiet=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with Tracker(model, opt, run_dir=run_dir, resume=True, quiet=True) as tracker:
            train(tracker, model, 2)
        with RunReader(run_dir) as r:
            assert r.status() == "finished" and r.step_count() == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- older stores ------------------------------------------------------------------------------


def make_v1_store(run_dir: Path) -> None:
    writer = RunWriter(run_dir)
    writer.set_params([("w", (2, 2))])
    writer.start(None)
    writer.set_state("stopped")
    writer.close()
    conn = sqlite3.connect(run_dir / DB_NAME)
    conn.execute("ALTER TABLE params DROP COLUMN first_step")
    conn.execute("PRAGMA user_version=1")
    conn.close()


def test_a_v1_store_still_opens_and_is_migrated_on_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    make_v1_store(run_dir)
    with RunReader(run_dir) as r:  # readers read v1 as it is
        assert r.params() == [("w", [2, 2])]
    model, opt = make()
    with Tracker(model, opt, run_dir=run_dir, resume=True, quiet=True) as tracker:
        train(tracker, model, 3)
    conn = sqlite3.connect(run_dir / DB_NAME)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        columns = [r[1] for r in conn.execute("PRAGMA table_info(params)")]
    finally:
        conn.close()
    assert "first_step" in columns
    with RunReader(run_dir) as r:
        assert r.step_count() == 3 and r.status() == "finished"
