"""`clipdash run` with `[distributed] strategy = "ddp" | "fsdp2"` on 2 CPU ranks (gloo).

A 2-rank run with batch_size B per rank sees, every step, the same 2B samples as a 1-process
run with batch_size 2B (each rank takes every other sample of the epoch's order), so its record
must be the single-process one. Tolerance: rtol 1e-4 (float32 reductions in another order).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer_proc import Trainer, clipdash, query, write_config

from clipdash.store.reader import RunReader

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")

TIMEOUT_S = 150


def write(tmp: Path, name: str, *, batch_size: int = 8, max_steps: int = 60,
          strategy: str = "ddp") -> Path:
    """trainer_proc's config (an MLP on regression data, SGD with momentum) that clips often,
    with batch_size per rank and a [distributed] section."""
    path = write_config(tmp, name, max_steps=max_steps, eval_every=40, checkpoint_every=50,
                        scheduler=f'[distributed]\nstrategy = "{strategy}"\n')
    text = path.read_text().replace("batch_size = 16", f"batch_size = {batch_size}")
    path.write_text(text.replace("max_norm = 1.0", "max_norm = 0.5"))
    return path


def run(cfg: Path, runs: Path, name: str, *extra: str) -> Path:
    t = Trainer.start(cfg, runs, name, *extra)
    try:
        assert t.wait(TIMEOUT_S) == 0, t.output
    finally:
        t.kill()
    return t.run_dir


def steps(run_dir: Path) -> list[dict[str, Any]]:
    with RunReader(run_dir) as reader:
        assert reader.status() in ("finished", "stopped")
        return list(reader.iter_steps(with_params=True))


def assert_same_record(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(len(ref)))
    for key in ("loss", "grad_norm_pre", "grad_norm_post", "clip_coef"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-4,
                                   err_msg=key)
    np.testing.assert_allclose(np.stack([r["param_norms"] for r in got]),
                               np.stack([r["param_norms"] for r in ref]), rtol=1e-4)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("single")
    ref = steps(run(write(tmp, "single", batch_size=16), tmp / "runs", "single"))
    assert sum(r["clipped"] for r in ref) >= 10, "the reference must actually clip"
    return ref


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_rank_run_records_the_single_process_run(strategy: str, tmp_path: Path,
                                                     single: list[dict[str, Any]]) -> None:
    run_dir = run(write(tmp_path, strategy, strategy=strategy), tmp_path / "runs", strategy,
                  "--nproc-per-node", "2")
    assert_same_record(steps(run_dir), single)
    val = query(run_dir, "SELECT step, value FROM evals WHERE metric = 'loss' ORDER BY step")
    assert [s for s, _ in val] == [39, 59]


def test_fsdp2_stop_and_resume_continue_the_same_run(tmp_path: Path,
                                                     single: list[dict[str, Any]]) -> None:
    """SIGTERM mid-run: every rank saves its shards (DCP) at the same step; the resume reads
    them back and the record, one row per step, is the uninterrupted run's."""
    cfg = write(tmp_path, "fsdp2", strategy="fsdp2", max_steps=60)
    runs = tmp_path / "runs"
    t = Trainer.start(cfg, runs, "f", "--nproc-per-node", "2", "--set", "train.max_steps=100000")
    try:
        t.wait_for_step(3, timeout=TIMEOUT_S)
        t.signal(signal.SIGTERM)
        assert t.wait(TIMEOUT_S) == 0, t.output
    finally:
        t.kill()
    assert t.status() == "stopped"
    stopped_at = t.last_step() + 1
    # On an idle machine all 60 steps can run before the stop reaches every rank (the store
    # sees step 3 only at the first hand-over): then the resume has nothing left to do.
    # TODO: a longer first run, so the stop always lands mid-run.
    assert 3 < stopped_at <= 60
    shards = sorted(p.name for p in (t.run_dir / "checkpoints").iterdir())
    assert f"step-{stopped_at:09d}.dcp" in shards and f"step-{stopped_at:09d}.pt" in shards
    again = Trainer.start(cfg, runs, "f", "--nproc-per-node", "2", "--set",
                          "train.max_steps=60", resume=True)
    try:
        assert again.wait(TIMEOUT_S) == 0, again.output
    finally:
        again.kill()
    assert_same_record(steps(t.run_dir), single)


def test_bad_distributed_combinations_are_one_line_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path, "bad")
    for setting, needle in (("distributed.backend='nccl'", "distributed.backend: nccl needs"),
                            ("distributed.strategy='fsdp'", "distributed.strategy"),
                            ("distributed.backnd='gloo'", "distributed.backnd")):
        out = clipdash("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--set", setting,
                       "--nproc-per-node", "2")
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
