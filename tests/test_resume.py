"""Checkpoints, resume and crash safety, against real `clipdash run` processes.

Two runs of one config train side by side: one uninterrupted, one paused, resumed, killed with
SIGKILL and resumed. Both must record the same losses, bit for bit, with exactly one record per
step in the store and in TensorBoard.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from trainer_proc import (
    Trainer,
    clipdash,
    control_events,
    query,
    steps_table,
    tensorboard_scalars,
    tensorboard_texts,
    wait_until,
    write_config,
)

from clipdash import control
from clipdash.cli import main
from clipdash.store.reader import RunReader
from clipdash.store.writer import RunWriter

STEPS = 1600


def losses(run_dir: Path) -> list[float]:
    return [row[1] for row in steps_table(run_dir, "step, loss")]


def status(run_dir: Path) -> str:
    with RunReader(run_dir) as reader:
        return reader.status()


def assert_one_record_per_step(run_dir: Path, n: int) -> None:
    assert [row[0] for row in steps_table(run_dir, "step")] == list(range(n))
    board = tensorboard_scalars(run_dir, "loss/train")
    assert [s for s, _ in board] == list(range(n)), "TensorBoard: one value per step"
    stored = losses(run_dir)
    assert all(abs(v - s) <= 1e-6 * abs(s) for (_, v), s in zip(board, stored, strict=True))


def test_pause_kill_and_resume_reproduce_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_steps=STEPS, checkpoint_every=200)
    runs = tmp_path / "runs"
    plain = Trainer.start(cfg, runs, "plain")
    run = Trainer.start(cfg, runs, "steered")
    trainers = [plain, run]
    try:
        # Pause: no new steps while paused, the heartbeat beats, a checkpoint is written.
        run.wait_for_step(300)
        at = control.pause(run.run_dir).step
        assert run.status() == "paused" and run.last_step() == at - 1
        assert (run.run_dir / "checkpoints" / f"step-{at:09d}.pt").is_file()
        beat = query(run.run_dir, "SELECT heartbeat FROM status")[0][0]
        time.sleep(1.0)
        wait_until(lambda: query(run.run_dir, "SELECT heartbeat FROM status")[0][0] > beat, 3,
                   "a heartbeat while paused", run)
        assert run.last_step() == at - 1, "a paused run recorded steps"
        assert run.status() == "paused"
        control.resume(run.run_dir)

        # SIGKILL once a later periodic checkpoint exists and steps were recorded after it.
        run.wait_for_step(at + 400)
        run.signal(signal.SIGKILL)
        run.proc.wait()
        kill_time = time.time()
        r = clipdash("ctl", str(run.run_dir), "pause")  # refused at once, not queued
        assert r.returncode == 2 and "lost" in r.stderr, r.stderr
        # The directory as the kill left it (a run directory is self-contained: a copy opens).
        left = tmp_path / "left-by-the-kill"
        shutil.copytree(run.run_dir, left, ignore=shutil.ignore_patterns("checkpoints"))

        resumed = Trainer.start(cfg, runs, "steered", resume=True)  # no need to wait for "lost"
        trainers.append(resumed)
        rows = steps_table(left, "step, wall_time")
        assert [r[0] for r in rows] == list(range(len(rows))), "no gaps up to the last flush"
        assert kill_time - rows[-1][1] < 2.0, "more than the last flush was lost"
        recorded_at_kill = len(rows)
        assert status(left) == "running"
        wait_until(lambda: status(left) == "lost", 10, "status lost")
        lost_after = time.time() - kill_time
        assert lost_after < 7, lost_after
        assert plain.wait() == 0, plain.output
        assert resumed.wait() == 0, resumed.output
    finally:
        for t in trainers:
            t.kill()

    for t in (plain, run):
        assert t.status() == "finished"
        assert_one_record_per_step(t.run_dir, STEPS)
    assert losses(run.run_dir) == losses(plain.run_dir), "pause or SIGKILL + resume changed it"

    restart = query(run.run_dir, "SELECT step FROM events WHERE kind = 'resume'")[0][0]
    assert restart % 200 == 0 and at < restart <= recorded_at_kill
    kinds = query(run.run_dir, "SELECT kind, step FROM events WHERE step >= ? ORDER BY id",
                  (restart,))
    assert ("checkpoint", restart) in kinds and ("resume", restart) in kinds
    assert [e["action"] for e in control_events(run.run_dir)] == ["pause", "resume"]
    texts = tensorboard_texts(run.run_dir)
    assert sum("[control] paused before step" in x for _, x in texts) == 1, texts
    assert sum("[resume]" in x for _, x in texts) == 1, texts


def test_resume_refuses_finished_and_live_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, state in [("done", "finished"), ("busy", "running"), ("held", "paused")]:
        (runs / name).mkdir(parents=True)
        writer = RunWriter(runs / name)
        writer.start(10)
        writer.set_state(state)
        writer.conn.execute("UPDATE status SET pid = ?", (os.getpid(),))
        writer.close()
    r = clipdash("run", "--resume", "done", "--runs-dir", str(runs))
    assert r.returncode == 2 and "finished" in r.stderr and "nothing to resume" in r.stderr
    for name, state in [("busy", "running"), ("held", "paused")]:
        r = clipdash("run", "--resume", name, "--runs-dir", str(runs))
        assert r.returncode == 2, r.stderr
        assert f"is {state} (pid {os.getpid()}" in r.stderr and "stop it" in r.stderr
    r = clipdash("run", "--resume", "nothing-here", "--runs-dir", str(runs))
    assert r.returncode == 2 and "no run" in r.stderr


def test_resume_without_a_checkpoint_starts_over(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed before its first checkpoint: --resume starts it over in the same directory,
    and nothing of the first attempt is left in the store or in TensorBoard."""
    import numpy as np

    from clipdash.track.tensorboard import TensorBoardSink

    runs = tmp_path / "runs"
    run_dir = runs / "early"
    run_dir.mkdir(parents=True)
    cfg = write_config(tmp_path, max_steps=60)
    (run_dir / "config.toml").write_text(cfg.read_text())
    writer = RunWriter(run_dir)
    writer.start(60)
    n = 100  # more steps than the restarted run makes: the extra ones must go too
    cols = {"step": np.arange(n), "epoch": np.zeros(n), "wall_time": np.full(n, time.time()),
            "loss": np.full(n, 123.0), "lr": np.full(n, 0.1), "lr_groups": np.full((n, 1), 0.1),
            "grad_norm_pre": np.ones(n), "grad_norm_post": np.ones(n), "max_norm": np.ones(n),
            "clip_coef": np.ones(n), "clipped": np.zeros(n, bool), "finite": np.ones(n, bool)}
    writer.append_steps(cols)
    writer.add_event(50, "control", "max_norm 1 -> 2 from step 50 (cli)")
    writer.conn.execute("INSERT INTO commands (created, source, action) VALUES (0, 'cli', "
                        "'stop')")
    writer.set_state("stopped")
    writer.close()
    board = TensorBoardSink(run_dir, [])
    board.write_steps(dict(cols, max_norm=np.ones(n)))
    board.close()
    time.sleep(1.1)  # event file names carry whole seconds: the restart's file sorts last

    assert main(["run", "--resume", "early", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert "early has no checkpoint: starting over from step 0" in capsys.readouterr().err
    assert_one_record_per_step(run_dir, 60)
    assert 123.0 not in losses(run_dir)
    assert query(run_dir, "SELECT kind FROM events WHERE kind = 'control'") == []
    assert query(run_dir, "SELECT state, message FROM commands") == [
        ("rejected", "expired: the run restarted at step 0")]


def test_resume_from_an_unreadable_checkpoint_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    run_dir = runs / "bad"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml").write_text(write_config(tmp_path, max_steps=60).read_text())
    writer = RunWriter(run_dir)
    writer.start(60)
    writer.set_state("stopped")
    writer.close()
    (run_dir / "checkpoints" / "step-000000020.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--resume", "bad", "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "step-000000020.pt: cannot resume from it" in err
    assert len(err.strip().splitlines()) == 1
    assert query(run_dir, "SELECT state FROM status") == [("stopped",)]  # untouched


def test_truncation_keeps_what_happened_before_the_checkpoint(tmp_path: Path) -> None:
    """Resuming from the checkpoint after step 9 (taken at boundary 10): a command applied at
    that boundary before the save is in the checkpoint, so its event stays; what followed the
    save (a non-finite step during step 10, later steps, evals, events) goes."""
    writer = RunWriter(tmp_path)
    for step, kind in [(9, "control"), (10, "control"), (10, "checkpoint"), (10, "nonfinite"),
                       (12, "control"), (12, "resume")]:
        writer.add_event(step, kind, f"{kind} at {step}")
    writer.add_eval(9, {"loss": 1.0})
    writer.add_eval(11, {"loss": 2.0})
    writer.truncate_after(9)
    with RunReader(tmp_path) as reader:
        assert [(e["step"], e["kind"]) for e in reader.events_after()] == [
            (9, "control"), (10, "control"), (10, "checkpoint"), (12, "resume")]
        assert reader.evals_after() == [(9, "loss", 1.0)]
    writer.truncate_after(-1)  # starting over: only the history of resumes stays
    with RunReader(tmp_path) as reader:
        assert [e["kind"] for e in reader.events_after()] == ["resume"]
    writer.close()
