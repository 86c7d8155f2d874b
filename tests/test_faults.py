"""Faults for real: frozen and concurrent trainers, full and read-only file systems, resumes
that would change what a checkpoint was trained with, crashes mid-checkpoint.

Process faults use real `clipdash run` processes (SIGSTOP, a second trainer). File-system faults
use a real small tmpfs and a real read-only bind mount where this machine allows mounting
(root in a container usually does); otherwise they skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainer_proc import (
    ENV,
    Trainer,
    clipdash,
    control_events,
    query,
    steps_table,
    wait_until,
    write_config,
)

from clipdash.store.reader import LOST_AFTER_S, RunReader


def status(run_dir: Path) -> str:
    with RunReader(run_dir) as reader:
        return reader.status()


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def read_only(src: Path, where: Path) -> Iterator[Path]:
    """`where`: a read-only view of `src` (a bind mount; chmod where not root)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(src, 0o555)
        try:
            yield src
        finally:
            os.chmod(src, 0o755)
        return
    if not (_mount("--bind", str(src), str(where))
            and _mount("-o", "remount,bind,ro", str(where))):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def stopped_run(tmp_path: Path, name: str = "r", steps: int = 400, every: int = 50,
                **cfg: object) -> tuple[Path, Path]:
    """A run stopped by SIGTERM after a few checkpoints: (config, run dir)."""
    config = write_config(tmp_path, max_steps=1_000_000, checkpoint_every=every, **cfg)  # type: ignore[arg-type]
    trainer = Trainer.start(config, tmp_path / "runs", name)
    try:
        trainer.wait_for_step(steps)
        trainer.signal(signal.SIGTERM)
        assert trainer.wait() == 0, trainer.output
    finally:
        trainer.kill()
    assert status(trainer.run_dir) == "stopped"
    return config, trainer.run_dir


@pytest.fixture(scope="module")
def stopped_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run stopped after >= 120 steps, shared by the resume tests: each takes a copy."""
    return stopped_run(tmp_path_factory.mktemp("template"), steps=120)[1]


def copy_of(template: Path, tmp_path: Path) -> Path:
    """A private copy of a stopped run (as runs/r) that a test may resume or damage."""
    run_dir = tmp_path / "runs" / template.name
    shutil.copytree(template, run_dir, symlinks=True)
    return run_dir


def snapshot(run_dir: Path) -> tuple[int, str, bytes, list[str]]:
    """What "untouched" means: step count, status, config bytes, checkpoint files."""
    n = query(run_dir, "SELECT COUNT(*) FROM steps")[0][0]
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    return n, status(run_dir), (run_dir / "config.toml").read_bytes(), files


# --------------------------------------------------------------------------- two writers


def test_a_frozen_trainer_blocks_a_resume(tmp_path: Path) -> None:
    config = write_config(tmp_path, checkpoint_every=100)
    trainer = Trainer.start(config, tmp_path / "runs", "frozen")
    try:
        trainer.wait_for_step(200)
        trainer.signal(signal.SIGSTOP)
        # Its heartbeat goes stale: the record says "lost", as after a crash.
        wait_until(lambda: status(trainer.run_dir) == "lost", LOST_AFTER_S * 6, "lost")
        before = trainer.last_step()
        res = clipdash("run", "--resume", "frozen", "--runs-dir", str(tmp_path / "runs"),
                       "--no-progress")
        assert res.returncode == 2, res.stderr
        assert f"pid {trainer.proc.pid}" in res.stderr and "another process" in res.stderr
        assert res.stderr.count("\n") == 1
        assert trainer.last_step() == before  # the refused resume wrote nothing
        trainer.signal(signal.SIGCONT)
        trainer.wait_for_step(before + 50)  # and the frozen one carries on, alone
    finally:
        trainer.signal(signal.SIGCONT)
        trainer.kill()


def test_two_resumes_at_once_one_is_refused(tmp_path: Path) -> None:
    _, run_dir = stopped_run(tmp_path)
    runs = run_dir.parent
    both = [resume_process(runs, "r", runs / f"resume{i}.log") for i in range(2)]
    try:
        # One resumes (and trains on); the other is refused at once, naming the first.
        refused = wait_until(lambda: any(t.proc.poll() is not None for t in both), 60,
                             "one resume to be refused")
        assert refused
        done = [t for t in both if t.proc.poll() is not None]
        live = [t for t in both if t.proc.poll() is None]
        assert len(done) == 1 and len(live) == 1, [t.output for t in both]
        assert done[0].proc.returncode == 2
        assert f"pid {live[0].proc.pid}" in done[0].output
        live[0].signal(signal.SIGTERM)
        assert live[0].wait() == 0
    finally:
        for t in both:
            t.kill()


def resume_process(runs: Path, name: str, log: Path) -> Trainer:
    """`clipdash run --resume NAME` with its own log (two at once must not share one)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clipdash", "run", "--resume", name,
                                 "--runs-dir", str(runs), "--no-progress"],
                                stdout=out, stderr=subprocess.STDOUT, env=ENV)
    return Trainer(proc, runs / name, log)


def test_a_sweep_does_not_resume_a_member_another_process_writes(tmp_path: Path) -> None:
    sweep = tmp_path / "grid.toml"
    sweep.write_text(write_config(tmp_path, max_steps=30).read_text()
                     + '\n[sweep]\n"clip.max_norm" = [0.5, 1.0]\n')
    runs = tmp_path / "runs"
    res = clipdash("sweep", str(sweep), "--runs-dir", str(runs), "--name", "g", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    member = runs / "g" / "max_norm=0.5"
    # Make it look unfinished, then hold its writer lock from another live process.
    query_write(member, "UPDATE status SET state = 'stopped'")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from clipdash.store.lock import acquire; "
         f"lock = acquire({str(member)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = clipdash("sweep", str(sweep), "--runs-dir", str(runs), "--name", "g",
                       timeout=240)
        out = res.stdout + res.stderr
        assert "max_norm=0.5: busy" in out and f"pid {holder.pid}" in out, out
    finally:
        holder.kill()
        holder.wait()


def query_write(run_dir: Path, sql: str) -> None:
    import sqlite3

    conn = sqlite3.connect(run_dir / "clipdash.sqlite")
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- resume + --set


@pytest.mark.parametrize("override, key", [
    ("optimizer.name=RMSprop", "optimizer.name"),
    ("optimizer.momentum=0.5", "optimizer.momentum"),
    ("model.hidden=[32]", "model.hidden"),
    ("data.n_samples=320", "data.n_samples"),
    ("seed=1", "seed"),
    ("clip.mode=value", "clip.mode"),
])
def test_resume_refuses_a_changed_setup_and_leaves_the_run_alone(
        tmp_path: Path, stopped_template: Path, override: str, key: str) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    before = snapshot(run_dir)
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set", override,
                   "--no-progress")
    assert res.returncode == 2, res.stderr
    assert f"{key}: the checkpoint of r was trained with" in res.stderr
    assert res.stderr.count("\n") == 1
    assert snapshot(run_dir) == before


def test_resume_applies_max_norm_and_lr_as_control_changes(
        tmp_path: Path, stopped_template: Path) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    resumed_at = int(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1].stem[5:])
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set",
                   "clip.max_norm=0.25", "--set", "optimizer.lr=0.01", "--set",
                   "train.max_steps=" + str(resumed_at + 60), "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = {s: (lr, mx) for s, _, lr, _, _, mx in steps_table(run_dir)}
    assert sorted(rows) == list(range(resumed_at + 60))
    assert all(rows[s][1] == 0.25 for s in range(resumed_at, resumed_at + 60))
    assert rows[resumed_at - 1][1] == 1.0
    # StepLR (step_size 50, gamma 0.9, per step) keeps its shape, scaled to start at 0.01.
    for s in range(resumed_at, resumed_at + 60):
        expected = 0.01 * 0.9 ** (s // 50 - resumed_at // 50)
        assert rows[s][0] == pytest.approx(expected, rel=1e-9), s
    events = [e for e in control_events(run_dir) if e.get("source") == "resume"]
    assert {(e["key"], e["new"], e["step"]) for e in events} == {
        ("max_norm", 0.25, resumed_at), ("lr", 0.01, resumed_at)}
    resolved = tomllib.loads((run_dir / "config.toml").read_text())
    assert resolved["clip"]["max_norm"] == 0.25 and resolved["optimizer"]["lr"] == 0.01
    assert resolved["train"]["max_steps"] == resumed_at + 60


def test_resume_refuses_max_steps_below_the_checkpoint(
        tmp_path: Path, stopped_template: Path) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    before = snapshot(run_dir)
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set",
                   "train.max_steps=10", "--no-progress")
    assert res.returncode == 2, res.stderr
    assert "past the 10 steps this config trains" in res.stderr
    assert snapshot(run_dir) == before


def test_resume_removes_a_checkpoint_left_half_written(
        tmp_path: Path, stopped_template: Path) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    tmp = run_dir / "checkpoints" / "step-000000999.pt.tmp"
    tmp.write_bytes(b"\0" * 4096)  # what a crash in the middle of torch.save leaves
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set",
                   "train.max_steps=200", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert not tmp.exists() and "removed step-000000999.pt.tmp" in res.stderr


def test_resume_refuses_a_planted_checkpoint_without_running_it(
        tmp_path: Path, stopped_template: Path) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    marker = tmp_path / f"PWNED-{uuid.uuid4().hex}"
    plant = run_dir / "checkpoints" / "step-999999999.pt"
    code = ("import os, sys, torch\n"
            "class P:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'step': 1, 'model': P()}}, {str(plant)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=120)
    before = snapshot(run_dir)
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set",
                   "train.max_steps=2000000000", "--no-progress")
    assert res.returncode == 2, res.stderr
    assert "step-999999999.pt: cannot resume from it: refused to unpickle posix.system" \
        in res.stderr
    assert res.stderr.count("\n") == 1
    assert not marker.exists()
    assert snapshot(run_dir)[:2] == before[:2]


# --------------------------------------------------------------------------- file systems


def test_a_full_disk_fails_the_run_and_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_steps=20000, eval_every=10_000)
    with small_tmpfs(tmp_path / "disk", "600k") as disk:
        res = clipdash("run", str(config), "--runs-dir", str(disk), "--name", "full",
                       "--no-progress", timeout=300)
        assert res.returncode == 1, res.stdout + res.stderr
        line = [ln for ln in res.stderr.splitlines() if ln.startswith("clipdash run:")]
        assert len(line) == 1, res.stderr
        assert f"no space left on the disk holding {disk / 'full'}" in line[0]
        assert "finished" not in res.stdout
        log = disk / "full" / "error.log"
        assert log.is_file() and "Traceback" in log.read_text(), line
        assert not (disk / "full" / ".error.log.reserve").exists()


@pytest.mark.parametrize("size", ["8k", "100k"])
def test_a_full_disk_before_the_first_step_leaves_nothing(tmp_path: Path, size: str) -> None:
    config = write_config(tmp_path, max_steps=50)
    with small_tmpfs(tmp_path / "disk", size) as disk:
        res = clipdash("run", str(config), "--runs-dir", str(disk), "--name", "full",
                       "--no-progress")
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.count("\n") == 1 and "no space left on the disk holding" in res.stderr
        assert list(disk.iterdir()) == []


def test_a_read_only_runs_dir(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_steps=50)
    src = tmp_path / "src"
    src.mkdir()
    with read_only(src, tmp_path / "ro") as runs:
        res = clipdash("run", str(config), "--runs-dir", str(runs), "--name", "x",
                       "--no-progress")
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1
        assert "read-only" in res.stderr or "no permission" in res.stderr
    assert list(src.iterdir()) == []


def test_planted_symlinks_in_a_run_dir_are_not_written_through(
        tmp_path: Path, stopped_template: Path) -> None:
    run_dir = copy_of(stopped_template, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    names = [".error.log.reserve", ".config.toml.tmp", "checkpoints/step-000000999.pt.tmp"]
    for name in names:
        (run_dir / name).symlink_to(victim)
    res = clipdash("run", "--resume", "r", "--runs-dir", str(run_dir.parent), "--set",
                   "train.max_steps=300", "--set", "train.checkpoint_every=100", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "keep me"
    assert not any((run_dir / name).is_symlink() for name in names)


def test_a_sweep_into_a_read_only_runs_dir(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(write_config(tmp_path, max_steps=20).read_text()
                    + '\n[sweep]\n"clip.max_norm" = [0.5, 1.0]\n')
    src = tmp_path / "src"
    src.mkdir()
    with read_only(src, tmp_path / "ro") as runs:
        res = clipdash("sweep", str(grid), "--runs-dir", str(runs))
        assert res.returncode == 2, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
        assert "cannot write the sweep folder" in res.stderr
    assert list(src.iterdir()) == []
