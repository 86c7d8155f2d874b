"""Steering a run under torch.distributed: 2 CPU ranks (gloo), launched by torchrun.

Only rank 0 reads commands and records; every rank must apply each command at the same step
(one exchange every `sync_every` = 10 steps), pause at the same step, and stop at the same step.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_proc import ENV, Trainer, control_events, query, steps_table, write_config

from clipdash import control

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")


def test_two_ranks_apply_every_command_at_the_same_step(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    runs = tmp_path / "runs"
    probe = Path(__file__).with_name("ddp_probe.py")
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
             str(probe), "run", str(cfg), "--runs-dir", str(runs), "--name", "ddp",
             "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT, env={**ENV, "PROBE_DIR": str(tmp_path)},
            start_new_session=True)
    t = Trainer(proc, runs / "ddp", log)
    try:
        t.wait_for_step(150, timeout=90)
        norm = control.set_value(t.run_dir, "max_norm", 0.3)
        lr = control.set_value(t.run_dir, "lr", 0.01)
        paused = control.pause(t.run_dir)
        assert t.status() == "paused" and t.last_step() == paused.step - 1
        time.sleep(1.0)
        assert t.last_step() == paused.step - 1, "a paused distributed run recorded steps"
        assert t.status() == "paused"
        resumed = control.resume(t.run_dir)
        t.wait_for_step(resumed.step + 50)
        t.signal(signal.SIGTERM)  # to the launcher, which forwards it to every rank
        t.wait(60)
    finally:
        t.kill()
    for res in (norm, lr, paused, resumed):
        assert res.step is not None and res.step % 10 == 0, "applied at an exchange step"
    assert t.status() == "stopped", t.output
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and ranks[0] == ranks[1], "the ranks diverged"
    by_step = {row[0]: row for row in ranks[0]}
    assert by_step[norm.step][1] == 0.3 and by_step[norm.step - 1][1] == 1.0
    assert by_step[lr.step][2] == pytest.approx(0.01)
    assert resumed.step == paused.step  # no step between pause and resume, on any rank
    rows = steps_table(t.run_dir, "step, max_norm")
    assert [s for s, _ in rows] == list(range(len(rows))) and len(rows) == len(ranks[0])
    assert [m for _, m in rows] == pytest.approx([0.3 if s >= norm.step else 1.0 for s, _ in rows])
    stop = control_events(t.run_dir)[-1]
    assert (stop["action"], stop["source"], stop["step"]) == ("stop", "signal", len(rows))
    assert query(t.run_dir, "SELECT COUNT(*) FROM steps")[0][0] == len(rows)
