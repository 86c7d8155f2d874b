"""How long `clipdash run` takes from launch to its first recorded step, for a small config.

    .venv/bin/python benchmarks/bench_launch.py [--repeat 5]

Prints, per launch: seconds until the process starts training (the first row in the store,
polled every 5 ms; the Tracker flushes its first batch at once) and the bare `import torch`
time in a fresh interpreter for scale, then the median of each. `clipdash run` cannot start
faster than `import torch`; what is above it is clipdash's own start-up.
"""

from __future__ import annotations

import argparse
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


def first_step_s(workdir: Path, name: str) -> float:
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
                            return time.perf_counter() - start
                    finally:
                        conn.close()
                except sqlite3.Error:
                    pass
            time.sleep(0.005)
        raise RuntimeError("no step recorded within 120 s")
    finally:
        proc.kill()
        proc.wait()


def import_torch_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=ENV, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    launch, torch_only = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "cfg.toml").write_text(CONFIG)
        for i in range(args.repeat):
            launch.append(first_step_s(work, f"r{i}"))
            torch_only.append(import_torch_s())
            print(f"launch -> first step {launch[-1]:.2f} s   "
                  f"(import torch {torch_only[-1]:.2f} s)")
    print(f"median: launch -> first step {statistics.median(launch):.2f} s, "
          f"import torch {statistics.median(torch_only):.2f} s")


if __name__ == "__main__":
    main()
