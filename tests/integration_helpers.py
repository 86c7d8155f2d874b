"""Shared by the transformers and Lightning integration tests: snapshots, runs, subprocesses."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainer_proc import ENV, query, wait_until

from clipdash import control
from clipdash.store.reader import RunReader

ROOT = Path(__file__).resolve().parents[1]


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Every parameter and every optimizer state tensor (Adam's moments, its step count)."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {f"{i}.{k}": v.clone() if isinstance(v, torch.Tensor) else v
             for i, s in enumerate(optimizer.state.values()) for k, v in s.items()}
    return {"params": params, "state": state}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        return bool(x == y)

    return a["params"].keys() == b["params"].keys() and a["state"].keys() == b["state"].keys() \
        and all(equal(a[k][n], b[k][n]) for k in ("params", "state") for n in a[k])


def grad_norm64(params: Iterable[nn.Parameter]) -> float:
    """The total L2 gradient norm, recomputed in float64."""
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params
                         if p.grad is not None))


def steps(run_dir: Path, columns: str) -> list[tuple[Any, ...]]:
    return query(run_dir, f"SELECT {columns} FROM steps ORDER BY step")


def status(run_dir: Path) -> tuple[str, str | None]:
    with RunReader(run_dir) as reader:
        row = reader.status_row() or {}
        return reader.status(), row.get("message")


def meta(run_dir: Path) -> dict[str, Any]:
    with RunReader(run_dir) as reader:
        return reader.meta()


def import_check(framework: str) -> None:
    """`import clipdash` leaves the framework alone; the integration names its extra when the
    framework is missing."""
    code = (
        "import sys, json\n"
        "import clipdash, clipdash.integrations\n"
        f"loaded = {framework!r} in sys.modules\n"
        f"sys.modules[{framework!r}] = None  # as if it were not installed\n"
        "try:\n"
        f"    import clipdash.integrations.{framework}\n"
        "    error = None\n"
        "except ModuleNotFoundError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps([loaded, error]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, error = json.loads(out.stdout.strip().splitlines()[-1])
    assert not loaded, f"import clipdash imported {framework}"
    assert error is not None and f"pip install 'clipdash[{framework}]'" in error, error


def start_example(script: str, runs_dir: Path, name: str, *args: str,
                  nproc: int = 0) -> subprocess.Popen:
    """Run examples/SCRIPT in its own process (under torchrun with `nproc` ranks)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}"] if nproc else []
    with open(runs_dir / f"{name}.log", "w") as out:
        return subprocess.Popen([sys.executable, *launcher, str(ROOT / "examples" / script),
                                 "--runs-dir", str(runs_dir), "--name", name, *args],
                                stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=runs_dir)


def steer_ddp_run(proc: subprocess.Popen, run_dir: Path, log: Path) -> dict[str, int]:
    """Change max_norm, then stop, a 2-rank run; check both ranks obeyed at the same step.

    Only rank 0 records, so the other rank's obedience shows in its weights: the example prints
    every rank's step count and parameter checksum at the end. Had rank 1 kept clipping at the
    old max_norm, its weights would differ from rank 0's.
    """
    try:
        wait_until(lambda: last_step(run_dir) >= 5, 150, "step 5 of the DDP run")
        changed = control.set_value(run_dir, "max_norm", 0.05, timeout=60).step
        wait_until(lambda: last_step(run_dir) >= changed + 15, 60, "steps after the change")
        stopped = control.stop(run_dir, timeout=60).step
        assert proc.wait(90) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert changed % 10 == 0 and stopped % 10 == 0  # applied at the ranks' exchange steps
    rows = steps(run_dir, "step, max_norm")
    assert [r[1] for r in rows] == [1.0 if t < changed else 0.05 for t, _ in rows]
    assert status(run_dir) == ("stopped", None) and rows[-1][0] == stopped - 1
    reports = re.findall(r"rank (\d): (\d+) steps, parameter checksum (\S+)", log.read_text())
    assert sorted(r[0] for r in reports) == ["0", "1"], log.read_text()
    assert {(int(n), c) for _, n, c in reports} == {(stopped, reports[0][2])}
    names = [r[0] for r in query(run_dir, "SELECT name FROM params")]
    assert names and not any(n.startswith("module.") for n in names)  # DDP's wrapper unseen
    return {"changed": changed, "stopped": stopped}


def last_step(run_dir: Path) -> int:
    rows = query(run_dir, "SELECT MAX(step) FROM steps")
    return -1 if rows[0][0] is None else int(rows[0][0])


def steer_live_run(proc: subprocess.Popen, run_dir: Path, log: Path) -> dict[str, Any]:
    """Set max_norm and lr, pause, resume and stop a live run from this (another) process.

    Returns the steps each command took effect from; every wait has a deadline.
    """

    def alive_until(cond: Any, what: str, timeout: float = 90) -> None:
        try:
            wait_until(lambda: proc.poll() is None and cond() or proc.poll() is not None,
                       timeout, what)
        finally:
            if proc.poll() is not None:
                raise AssertionError(f"trainer exited ({proc.returncode}) while waiting for "
                                     f"{what}:\n{log.read_text()}")

    try:
        alive_until(lambda: last_step(run_dir) >= 2, "step 2")
        at: dict[str, Any] = {}
        at["max_norm"] = control.set_value(run_dir, "max_norm", 0.05, timeout=60).step
        at["lr"] = control.set_value(run_dir, "lr", 1e-3, timeout=60).step
        at["pause"] = control.pause(run_dir, timeout=60).step
        assert status(run_dir)[0] == "paused"
        held = last_step(run_dir)
        # While paused, the heartbeat goes on and no step is taken: watch a few heartbeats.
        beat = query(run_dir, "SELECT heartbeat FROM status")[0][0]
        alive_until(lambda: query(run_dir, "SELECT heartbeat FROM status")[0][0] > beat + 1,
                    "two heartbeats while paused")
        assert last_step(run_dir) == held == at["pause"] - 1
        at["resume"] = control.resume(run_dir, timeout=60).step
        alive_until(lambda: last_step(run_dir) >= at["resume"] + 2, "steps after resume")
        at["stop"] = control.stop(run_dir, timeout=60).step
        assert proc.wait(90) == 0, log.read_text()
        return at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
