"""Real trainer processes for the control, resume and crash tests.

`Trainer.start(...)` launches `python -m clipdash run CONFIG --runs-dir DIR --name NAME
--no-progress` as a subprocess (output to files, so a full pipe never blocks it); helpers poll
the run's store the way the dashboard does. Everything here is deliberately small: an MLP on the
built-in regression data trains at ~1000 steps/s on one CPU core, so a test can steer a run,
kill it and resume it in a few seconds.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdash.store import schema
from clipdash.store.layout import DB_NAME

# One intra-op thread: runs with the same seed are bit-identical, and parallel test processes
# do not fight over the (few) cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

BASE_CONFIG = """\
seed = 0
device = "cpu"
[model]
kind = "mlp"
hidden = [16]
[data]
kind = "regression"
batch_size = 16
n_samples = 640
[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9
[clip]
mode = "{clip_mode}"
max_norm = 1.0
max_value = 0.5
[train]
max_steps = {max_steps}
eval_every = {eval_every}
checkpoint_every = {checkpoint_every}
"""

STEPLR = """[scheduler]
name = "StepLR"
step_size = 50
gamma = 0.9
interval = "step"
"""


def write_config(folder: Path, name: str = "cfg", *, max_steps: int = 1_000_000,
                 checkpoint_every: int = 0, eval_every: int = 500, clip_mode: str = "norm",
                 scheduler: str = STEPLR) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(BASE_CONFIG.format(max_steps=max_steps, checkpoint_every=checkpoint_every,
                                       eval_every=eval_every, clip_mode=clip_mode) + scheduler)
    return path


def clipdash(*args: str, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the `clipdash` command to completion; text output captured."""
    return subprocess.run([sys.executable, "-m", "clipdash", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=timeout)


@dataclass
class Trainer:
    """A `clipdash run` subprocess and its run directory."""

    proc: subprocess.Popen
    run_dir: Path
    log: Path
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, config: Path, runs_dir: Path, name: str, *extra: str,
              resume: bool = False) -> Trainer:
        runs_dir.mkdir(parents=True, exist_ok=True)
        log = runs_dir / f"{name}.{'resume.' if resume else ''}log"
        if resume:
            args = ["run", "--resume", name, "--runs-dir", str(runs_dir), "--no-progress",
                    *extra]
        else:
            args = ["run", str(config), "--runs-dir", str(runs_dir), "--name", name,
                    "--no-progress", *extra]
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "clipdash", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=ENV)
        return cls(proc, runs_dir / name, log)

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"trainer did not exit within {timeout} s:\n{self.output}") \
                from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    # -- the store, read the way the dashboard reads it ---------------------------------------

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return query(self.run_dir, sql, args)

    def last_step(self) -> int:
        rows = self.query("SELECT MAX(step) FROM steps") if self.has_store() else [(None,)]
        return -1 if rows[0][0] is None else int(rows[0][0])

    def has_store(self) -> bool:
        return (self.run_dir / DB_NAME).is_file()

    def wait_for_step(self, step: int, timeout: float = 60) -> int:
        """Block until step `step` is recorded; the last recorded step."""
        return wait_until(lambda: self.last_step() >= step, timeout,
                          f"step {step} in {self.run_dir.name}", self) and self.last_step()

    def status(self) -> str:
        from clipdash.store.reader import RunReader

        with RunReader(self.run_dir) as reader:
            return reader.status()


def query(run_dir: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = schema.connect(run_dir / DB_NAME)
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    finally:
        conn.close()


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               trainer: Trainer | None = None, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return True
        except (sqlite3.OperationalError, FileNotFoundError):
            pass  # the store is not created yet
        if trainer is not None and trainer.proc.poll() is not None:
            raise AssertionError(f"trainer exited ({trainer.proc.returncode}) while waiting for "
                                 f"{what}:\n{trainer.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def steps_table(run_dir: Path, columns: str = "step, loss, lr, grad_norm_pre, grad_norm_post, "
                "max_norm") -> list[tuple[Any, ...]]:
    return query(run_dir, f"SELECT {columns} FROM steps ORDER BY step")


def control_events(run_dir: Path) -> list[dict[str, Any]]:
    import json

    rows = query(run_dir, "SELECT step, message, data FROM events WHERE kind = 'control' "
                          "ORDER BY id")
    return [dict(step=s, message=m, **json.loads(d)) for s, m, d in rows]


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag as TensorBoard itself reads the run (purges included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def tensorboard_texts(run_dir: Path, tag: str = "events") -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
