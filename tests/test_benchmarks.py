"""The benchmark suite still runs (tiny sizes, no targets), so it never rots between releases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_runs_end_to_end_and_prints_its_table() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for row in ("overhead: MLP", "overhead: transformer", "overhead: 522 parameter tensors",
                "tracker / SummaryWriter.add_scalar", "store MiB per 1M steps"):
        assert row in out, out
    assert "FAILED" not in proc.stderr
