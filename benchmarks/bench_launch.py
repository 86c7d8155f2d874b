"""How long `clipdash run` takes from launch to its first recorded step, for a small config.

    .venv/bin/python benchmarks/bench_launch.py [--repeat 5]

Prints, per launch: wall seconds until the first row is in the store (polled every 5 ms; the
engine flushes the first step at once), the CPU seconds the process used by then (steadier
than wall time on a shared machine), and the same two for two floors in a fresh interpreter,
then the medians (the three interleaved):

- `import torch`;
- `import torch` and one `torch.optim.SGD` step: every torch.optim optimizer imports
  `torch._dynamo` in its first `step()` (`_use_grad_for_differentiable`) and in
  `add_param_group` (`torch._disable_dynamo`), about as long as `import torch` again. No
  training loop that steps a torch optimizer records its first step sooner.

Target (issue 11): launch -> first step <= 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """\
seed = 0
device = "cpu"
[model]
kind = "mlp"
hidden = [16]
[data]
kind = "regression"
batch_size = 16
n_samples = 256
[optimizer]
name = "SGD"
lr = 0.05
[train]
max_steps = 2000
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cpu_after_kill(proc: subprocess.Popen[bytes]) -> float:
    proc.kill()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = -9
    return usage.ru_utime + usage.ru_stime


def first_step_s(workdir: Path, name: str) -> tuple[float, float]:
    db = workdir / "runs" / name / "clipdash.sqlite"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clipdash", "run", "cfg.toml", "--name", name,
                             "--no-progress"], cwd=workdir, env=ENV, stdout=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 120:
            if db.exists():
                try:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
                    try:
                        if conn.execute("SELECT 1 FROM steps LIMIT 1").fetchone():
                            wall = time.perf_counter() - start
                            return wall, _cpu_after_kill(proc)
                    finally:
                        conn.close()
                except sqlite3.Error:
                    pass
            time.sleep(0.005)
        raise RuntimeError("no step recorded within 120 s")
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


FIRST_OPTIMIZER_STEP = ("import torch; p = torch.nn.Parameter(torch.ones(2)); "
                        "p.grad = torch.ones(2); torch.optim.SGD([p], lr=0.1).step()")


def python_s(code: str) -> tuple[float, float]:
    """Until `code` has run: os._exit skips the interpreter's teardown, which after
    torch._dynamo is imported takes most of a second (a launch is timed to its first step, not
    to its exit)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", f"{code}; import os; os._exit(0)"], env=ENV)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    args = parser.parse_args(argv)
    rows: dict[str, list[tuple[float, float]]] = {"launch": [], "torch": [], "optimizer": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "cfg.toml").write_text(CONFIG)
        for i in range(args.repeat):
            rows["launch"].append(first_step_s(work, f"r{i}"))
            rows["torch"].append(python_s("import torch"))
            rows["optimizer"].append(python_s(FIRST_OPTIMIZER_STEP))
            print("  ".join(f"{name} {r[-1][0]:.2f} s ({r[-1][1]:.2f} s CPU)"
                            for name, r in rows.items()))

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    print(f"median: launch -> first step {med('launch', 0):.2f} s ({med('launch', 1):.2f} s CPU), "
          f"import torch {med('torch', 0):.2f} s ({med('torch', 1):.2f} s CPU), "
          f"import torch + first optimizer step {med('optimizer', 0):.2f} s "
          f"({med('optimizer', 1):.2f} s CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "launch_s": {name: {"wall": med(name, 0), "cpu": med(name, 1)} for name in rows}}))


if __name__ == "__main__":
    main()
