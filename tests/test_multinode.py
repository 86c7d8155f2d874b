"""`clipdash run` across "nodes" and through a rank's death (2 CPU ranks, gloo).

Two nodes on one machine are two torchrun launches (`--nnodes 2`, one rank each) meeting at a
c10d rendezvous on 127.0.0.1. A SIGKILLed rank ends the job: the run is left failed (not
running) and resumes from its last checkpoint with exactly one record per step.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_proc import ENV, Trainer, clipdash, query, steps_table, wait_until, write_config

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")

TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_nodes_write_one_record(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_steps=60, eval_every=30)
    runs = tmp_path / "runs"
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    try:
        # Node 0 through clipdash's own flags, node 1 through plain torchrun: both forms meet.
        node0 = ["-m", "clipdash", "run", "--nnodes", "2", "--node-rank", "0",
                 "--rdzv-endpoint", endpoint]
        node1 = ["-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1",
                 "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                 "-m", "clipdash", "run"]
        for node, argv in enumerate((node0, node1)):
            log = open(tmp_path / f"node{node}.log", "w")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(
                [sys.executable, *argv, str(cfg), "--runs-dir", str(runs), "--name", "two",
                 "--no-progress"],
                stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True), log))
        codes = [p.wait(TIMEOUT_S) for p, _ in procs]
    finally:
        for p, log in procs:
            kill_group(p)
            log.close()
    logs = "\n".join((tmp_path / f"node{n}.log").read_text() for n in (0, 1))
    assert codes == [0, 0], logs
    assert sorted(p.name for p in runs.iterdir()) == ["two"], "one run directory"
    rows = steps_table(runs / "two", "step")
    assert [s for (s,) in rows] == list(range(60))
    assert query(runs / "two", "SELECT state FROM status")[0][0] == "finished"


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK="))[5:])


def test_sigkill_of_a_rank_fails_the_run_and_resume_records_every_step_once(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_steps=1500, checkpoint_every=100, eval_every=500)
    runs = tmp_path / "runs"
    t = Trainer.start(cfg, runs, "killed", "--nproc-per-node", "2")
    try:
        t.wait_for_step(300, timeout=TIMEOUT_S)
        launcher = children(t.proc.pid)
        assert launcher, "no torchrun launcher under clipdash run"
        wait_until(lambda: len(children(launcher[0])) == 2, 30, "two ranks")
        victim = next(pid for pid in children(launcher[0]) if rank_of(pid) == 1)
        os.kill(victim, signal.SIGKILL)
        t.wait(TIMEOUT_S)
    finally:
        t.kill()
    assert t.status() == "failed", t.output  # rank 0 lived to say so: not running, not lost
    before = t.last_step()
    assert before < 1499
    again = Trainer.start(cfg, runs, "killed", "--nproc-per-node", "2", resume=True)
    try:
        assert again.wait(TIMEOUT_S) == 0, again.output
    finally:
        again.kill()
    assert again.status() == "finished"
    steps = [s for (s,) in steps_table(runs / "killed", "step")]
    assert steps == list(range(1500)), "exactly one record per step after the resume"


@pytest.mark.parametrize(("flags", "needle"), [
    (["--nnodes", "2"], "--nnodes > 1 needs --rdzv-endpoint"),
    (["--nnodes", "0"], "--nnodes must be >= 1"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:1"], "--node-rank"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohost"], "--rdzv-endpoint must be HOST:PORT"),
    (["--rdzv-endpoint", "127.0.0.1:29400"], "--rdzv-endpoint needs --nnodes > 1"),
])
def test_bad_launch_flags_are_one_line_usage_errors(flags: list[str], needle: str,
                                                    tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_steps=5)
    out = clipdash("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), *flags)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()
