"""Steering real `clipdash run` processes: set, pause, resume, stop, bad commands, concurrency.

The fake-run tests (a store written directly, no trainer) cover refusals that must happen at
once: finished and lost runs, timeouts, --no-wait.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from trainer_proc import (
    ENV,
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
from clipdash.store.reader import RunReader
from clipdash.store.writer import RunWriter

LR0, GAMMA, STEP_SIZE = 0.05, 0.9, 50  # trainer_proc.STEPLR


def steplr(t: int) -> float:
    return LR0 * GAMMA ** (t // STEP_SIZE)


def wait_until_resumed(run_dir: Path, trainer: Trainer) -> int:
    """The step a resumed run restarted from (its resume event)."""
    found: list[int] = []

    def resumed() -> bool:
        found[:] = [r[0] for r in query(run_dir, "SELECT step FROM events WHERE kind = 'resume'")]
        return bool(found)

    wait_until(resumed, 60, "the resume event", trainer)
    return found[0]


def heartbeat(run_dir: Path) -> float:
    return float(query(run_dir, "SELECT heartbeat FROM status")[0][0])


def expected_max_norms(commands: list[tuple[int, float]], steps: list[int],
                       restart: int | None = None) -> list[float]:
    """max_norm in effect at each step: the last set applied at or before it (1.0 before any).

    After a crash and a resume from the checkpoint at `restart`, sets applied after the
    checkpoint were lost with the crash.
    """
    out = []
    for t in steps:
        limit = t if restart is None or t < restart else restart
        values = [v for s, v in commands if s <= limit]
        out.append(values[-1] if values else 1.0)
    return out


def test_steer_a_real_run_then_kill_and_resume_keeps_the_changes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, checkpoint_every=100)
    runs = tmp_path / "runs"
    t = Trainer.start(cfg, runs, "steer")
    run = str(t.run_dir)
    try:
        t.wait_for_step(150)

        # max_norm from the CLI: the acknowledgement names the step it took effect from.
        r = clipdash("ctl", run, "set", "max_norm=0.25")
        assert r.returncode == 0, r.stderr
        m = re.fullmatch(r"applied at step (\d+): max_norm 1 -> 0.25 from step (\d+)\n", r.stdout)
        assert m and m[1] == m[2], r.stdout
        s_norm = int(m[1])

        # LR from the API: the StepLR schedule is scaled from the acknowledged step on.
        res = control.set_value(t.run_dir, "lr", 0.02)
        assert res.state == "applied" and res.step is not None and res.step > s_norm
        s_lr = res.step
        factor = 0.02 / steplr(s_lr)

        # Pause: acknowledged once flushed, checkpointed and marked paused.
        res = control.pause(t.run_dir, source="dashboard")
        paused_at = res.step
        assert res.message == f"paused before step {paused_at}"
        assert t.status() == "paused"
        assert t.last_step() == paused_at - 1
        assert (t.run_dir / "checkpoints" / f"step-{paused_at:09d}.pt").is_file()
        beat = heartbeat(t.run_dir)
        time.sleep(1.0)
        wait_until(lambda: heartbeat(t.run_dir) > beat, 3, "a heartbeat while paused", t)
        assert t.last_step() == paused_at - 1, "a paused run recorded steps"
        assert t.status() == "paused"

        # Bad commands are refused with a reason (the validator's or the trainer's).
        for key, value, why in [("max_norm", 0, "must be > 0"), ("max_norm", -1, "must be > 0"),
                                ("max_norm", "nan", "finite"), ("max_norm", "inf", "finite"),
                                ("max_norm", "abc", "not a number"),
                                ("lr", 0, "must be > 0"), ("momentum", 0.5, "unknown setting"),
                                ("max_value", 0.1, "cannot be set on run steer")]:
            with pytest.raises(control.ControlError, match=why):
                control.set_value(t.run_dir, key, value)
        with pytest.raises(control.ControlError, match="unknown action"):
            control.send(t.run_dir, "restart")
        for setting, why in [("max_norm=abc", "not a number"), ("max_norm=0", "must be > 0"),
                             ("max_value=0.1", "cannot be set"), ("bogus=1", "unknown setting")]:
            r = clipdash("ctl", run, "set", setting)
            assert r.returncode == 2 and why in r.stderr, (setting, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1
        assert t.last_step() == paused_at - 1

        res = control.resume(t.run_dir)
        assert res.step == paused_at and t.status() == "running"

        # Concurrent writers: the trainer, four `ctl` processes, API calls and a reader.
        errors: list[str] = []
        stop_reading = threading.Event()

        def read() -> None:
            while not stop_reading.is_set():
                try:
                    with RunReader(t.run_dir) as reader:
                        reader.summary()
                        reader.steps_after(max(-1, (reader.last_step() or 0) - 50))
                        reader.series("grad_norm_pre", 100)
                except Exception as exc:  # noqa: BLE001 - collected and asserted on
                    errors.append(repr(exc))

        def api(value: float) -> None:
            try:
                control.set_value(t.run_dir, "max_norm", value)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        threads = [threading.Thread(target=read)] + [
            threading.Thread(target=api, args=(v,)) for v in (0.5, 0.55)]
        for th in threads:
            th.start()
        procs = [subprocess.Popen([sys.executable, "-m", "clipdash", "ctl", run, "set",
                                   f"max_norm={v}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV)
                 for v in (0.3, 0.35, 0.4, 0.45)]
        outs = [p.communicate(timeout=30) for p in procs]
        for th in threads[1:]:
            th.join()
        stop_reading.set()
        threads[0].join()
        assert all(p.returncode == 0 for p in procs), outs
        assert not errors, errors
        assert not any("locked" in out + err for out, err in outs)

        # SIGKILL, then resume: the changes in effect at the checkpoint are kept.
        after = t.last_step()
        t.wait_for_step(after + 150)  # a periodic checkpoint after the last change
        t.kill()
        killed_at = t.last_step()
    finally:
        t.kill()
    assert "locked" not in t.output and "recording failed" not in t.output, t.output

    # Resumed, then stopped from the CLI: the step finishes, a checkpoint is written, exit 0.
    r2 = Trainer.start(cfg, runs, "steer", resume=True)
    try:
        restart = int(wait_until_resumed(t.run_dir, r2))
        r2.wait_for_step(max(killed_at, restart) + 100)
        r = clipdash("ctl", run, "stop")
        assert r.returncode == 0, r.stderr
        end = int(r.stdout.split()[3].rstrip(":"))
        assert r.stdout == f"applied at step {end}: stopping before step {end}\n"
        assert r2.wait() == 0, r2.output
    finally:
        r2.kill()
    assert f"resuming steer from step {restart}" in r2.output
    assert f"steer: stopped after {end} steps" in r2.output
    assert t.status() == "stopped" and t.last_step() == end - 1
    assert (t.run_dir / "checkpoints" / f"step-{end:09d}.pt").is_file()
    r = clipdash("ctl", run, "pause")
    assert r.returncode == 2 and "is stopped: it takes no commands" in r.stderr

    rows = steps_table(t.run_dir)
    steps = [row[0] for row in rows]
    assert steps == list(range(end)), "one record per step, no gaps"
    applied = query(t.run_dir, "SELECT step, CAST(value AS REAL) FROM commands WHERE "
                               "key = 'max_norm' AND state = 'applied' ORDER BY id")
    assert applied[0] == (s_norm, 0.25)
    assert [row[5] for row in rows] == pytest.approx(
        expected_max_norms(applied, steps, restart), rel=1e-6)
    assert rows[restart][5] != 1.0, "the resumed run forgot the max_norm change"
    for step, _, _, pre, post, max_norm in rows:
        assert post <= max_norm * (1 + 1e-5), step
        assert post == pytest.approx(min(pre, max_norm), rel=1e-4), step
    for step, _, lr, *_ in rows:  # closed-form StepLR, scaled from s_lr on (and after resume)
        want = steplr(step) * (factor if step >= s_lr else 1.0)
        assert math.isclose(lr, want, rel_tol=1e-9), (step, lr, want)

    # Every applied command is a control event (store and TensorBoard) with old and new values.
    events = control_events(t.run_dir)
    sets = [e for e in events if e["action"] == "set"]
    assert sets[0] == dict(step=s_norm, message=f"max_norm 1 -> 0.25 from step {s_norm} (cli)",
                           action="set", key="max_norm", old=1.0, new=0.25, source="cli",
                           command=1)
    assert sets[1]["key"] == "lr" and sets[1]["source"] == "api" and sets[1]["step"] == s_lr
    assert sets[1]["old"] == pytest.approx(steplr(s_lr)) and sets[1]["new"] == 0.02
    assert {"pause", "resume"} <= {e["action"] for e in events}
    later = [(e["step"], e["action"], e["source"]) for e in events if e["step"] > restart]
    assert later == [(end, "stop", "cli")], "events lost with the crash must go"
    texts = [text for _, text in tensorboard_texts(t.run_dir)]
    assert any("max_norm 1 -> 0.25" in x and "(cli)" in x for x in texts), texts
    assert any("paused before step" in x and "(dashboard)" in x for x in texts), texts
    assert [s for s, _ in tensorboard_scalars(t.run_dir, "loss/train")] == list(range(end))


# -- fake runs: refusals that need no trainer -----------------------------------------------


def fake_run(path: Path, state: str = "running", heartbeat_age: float = 0.0,
             pid: int | None = None) -> Path:
    path.mkdir(parents=True)
    writer = RunWriter(path)
    writer.set_meta(name=path.name, clip_mode="norm", settable=["max_norm", "lr"])
    writer.start(100)
    writer.set_state(state)
    writer.conn.execute("UPDATE status SET heartbeat = ?, pid = ?",
                        (time.time() - heartbeat_age, pid or os.getpid()))
    writer.close()
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("state", "age", "pid", "word"), [
    ("finished", 0.0, None, "is finished"),
    ("failed", 0.0, None, "is failed"),
    ("running", 60.0, None, "is lost"),  # stale heartbeat
    ("paused", 60.0, None, "is lost"),
    ("running", 0.0, "dead", "is lost (its trainer process is gone)"),
])
def test_runs_that_cannot_obey_are_refused_at_once(tmp_path: Path, state: str, age: float,
                                                   pid: str | None, word: str) -> None:
    run = fake_run(tmp_path / "r", state, age, dead_pid() if pid else None)
    started = time.monotonic()
    with pytest.raises(control.ControlError, match=re.escape(word)):
        control.set_value(run, "max_norm", 0.5, timeout=10)
    with pytest.raises(control.ControlError, match=re.escape(word)):
        control.pause(run, wait=False)
    assert time.monotonic() - started < 1.0, "refused at once, not after a timeout"
    assert query(run, "SELECT COUNT(*) FROM commands")[0][0] == 0, "nothing may be queued"


def test_cli_exit_codes_timeout_and_no_wait(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "quiet")  # live (this process), but nobody applies commands
    r = clipdash("ctl", str(run), "set", "max_norm=0.5", "--timeout", "0.3")
    assert r.returncode == 1
    assert "no acknowledgement from quiet within 0.3 s" in r.stderr
    assert "stays queued" in r.stderr
    r = clipdash("ctl", str(run), "pause", "--no-wait")
    assert r.returncode == 0 and re.fullmatch(r"queued command \d+\n", r.stdout)
    assert query(run, "SELECT action, state, source FROM commands ORDER BY id") == [
        ("set", "pending", "cli"), ("pause", "pending", "cli")]
    lost = fake_run(tmp_path / "gone", heartbeat_age=60)
    for args, code, why in [
        ((str(lost), "pause"), 2, "is lost"),
        ((str(run), "set"), 2, "set needs KEY=VALUE"),
        ((str(run), "pause", "max_norm=1"), 2, "takes no value"),
        ((str(run), "set", "lr=-1"), 2, "must be > 0"),
        ((str(tmp_path / "nowhere"), "pause"), 2, "no run"),
    ]:
        r = clipdash("ctl", *args)
        assert (r.returncode, why in r.stderr) == (code, True), (args, r.stderr)


def test_the_trainer_rejects_what_the_client_cannot_know(tmp_path: Path) -> None:
    """An old run without `settable` meta: the trainer's own check rejects a wrong key."""
    import torch

    from clipdash.track.tracker import Tracker

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = Tracker(model, opt, run_dir=tmp_path / "v", clip="value", tensorboard=False)
    with tracker:
        query(tracker.run_dir, "DELETE FROM meta WHERE key = 'settable'")
        res = control.set_value(tracker.run_dir, "max_norm", 0.5, wait=False)
        wait_until(lambda: bool(tracker.writer.inbox), 10, "the command in the inbox")
        tracker.step(0.0)
        tracker.flush()
        with pytest.raises(control.ControlError, match="max_norm cannot be set on this run "
                                                       r"\(clip mode value"):
            control.wait_for(tracker.run_dir, res.id, timeout=5)
        res = control.set_value(tracker.run_dir, "max_value", 0.25, wait=False)
        wait_until(lambda: bool(tracker.writer.inbox), 10, "the command in the inbox")
        tracker.step(0.0)
        assert control.wait_for(tracker.run_dir, res.id, timeout=5).step == 2
        assert tracker.clipper.get("max_value") == 0.25
