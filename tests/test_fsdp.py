"""A user's own FSDP2 / DDP loop with `Tracker` under torchrun (2 CPU ranks, gloo) against the
same loop alone on the same global batches (tests/fsdp_loop.py).

Tolerance: the 2-rank runs sum float32 partial norms and gradients in another order than the
single process, so values agree to float32 rounding accumulated over 20 SGD steps: rtol 1e-4
on norms and losses (measured differences are ~1e-6 relative), atol 1e-5 on the parameters.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainer_proc import ENV

from clipdash.store.reader import RunReader

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")

LOOP = str(Path(__file__).with_name("fsdp_loop.py"))
TIMEOUT_S = 120


def run_loop(mode: str, out: Path, *args: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if mode == "single":
        cmd = [sys.executable, LOOP, mode, str(out), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", LOOP, mode, str(out), *args]
    log = out / "log.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
        try:
            code = proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{mode} loop timed out:\n{log.read_text()}") from None
    assert code == 0, log.read_text()
    return out / "run"


def record(run_dir: Path) -> tuple[list[dict[str, Any]], list[str], str]:
    with RunReader(run_dir) as reader:
        rows = list(reader.iter_steps(with_params=True))
        names = [name for name, _ in reader.params()]
        return rows, names, reader.status()


def column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=np.float64)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_loop("single", tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("mode", ["fsdp2", "ddp"])
def test_two_ranks_record_the_single_process_run(mode: str, single: Path,
                                                 tmp_path: Path) -> None:
    run_dir = run_loop(mode, tmp_path)
    ref, ref_names, _ = record(single)
    rows, names, status = record(run_dir)
    assert status == "finished"
    assert [r["step"] for r in rows] == list(range(20)), "one record, one row per step"
    assert names == ref_names == ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias",
                                  "2.weight", "2.bias"]  # full names, not shard names
    for key in ("loss", "grad_norm_pre", "grad_norm_post", "clip_coef"):
        np.testing.assert_allclose(column(rows, key), column(ref, key), rtol=1e-4,
                                   err_msg=key)
    assert column(ref, "clipped").sum() >= 10, "the reference must actually clip"
    np.testing.assert_allclose(np.stack([r["param_norms"] for r in rows]),
                               np.stack([r["param_norms"] for r in ref]), rtol=1e-4)
    # The single-process record itself is clip_grad_norm_'s (checked in test_tracker_norms);
    # both ranks end with the reference model (gathered from the shards under FSDP2).
    expected = torch.load(single.parent / "params0.pt")
    ranks = [torch.load(tmp_path / f"params{r}.pt") for r in (0, 1)]
    for name in expected:  # DDP ranks are identical; FSDP2's gathered shards are one model
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    for r in (0, 1):
        got = torch.load(tmp_path / f"params{r}.pt")
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("norm_type", ["inf"])  # p = 1 or 3 take the p = 2 path
def test_fsdp2_other_norm_types(norm_type: str, tmp_path: Path) -> None:
    ref, _, _ = record(run_loop("single", tmp_path / "single", "--norm-type", norm_type))
    rows, _, _ = record(run_loop("fsdp2", tmp_path / "fsdp2", "--norm-type", norm_type))
    for key in ("loss", "grad_norm_pre", "grad_norm_post"):
        np.testing.assert_allclose(column(rows, key), column(ref, key), rtol=1e-4,
                                   err_msg=key)
    np.testing.assert_allclose(np.stack([r["param_norms"] for r in rows]),
                               np.stack([r["param_norms"] for r in ref]), rtol=1e-4)


def test_fsdp2_value_clipping_records_the_global_post_norm(tmp_path: Path) -> None:
    """Value clipping measures the post-clip norm on the clipped shards; for the first 5 steps
    one parameter has no gradient (the partial path: its recorded norm is 0)."""
    args = ("--clip", "value", "--drop-grad-until", "5")
    ref, _, _ = record(run_loop("single", tmp_path / "single", *args))
    rows, _, _ = record(run_loop("fsdp2", tmp_path / "fsdp2", *args))
    assert (column(ref, "grad_norm_post") < column(ref, "grad_norm_pre")).sum() >= 10
    norms = np.stack([r["param_norms"] for r in rows])
    assert (norms[:5, 3] == 0).all() and (norms[5:, 3] > 0).all()
    np.testing.assert_allclose(norms, np.stack([r["param_norms"] for r in ref]), rtol=1e-4)
    for key in ("loss", "grad_norm_pre", "grad_norm_post", "clip_coef"):
        np.testing.assert_allclose(column(rows, key), column(ref, key), rtol=1e-4,
                                   err_msg=key)


def test_pause_longer_than_the_process_group_timeout(tmp_path: Path) -> None:
    """The PG times out after 3 s; rank 0's pause checkpoint takes 4 s and the pause 4 s more
    while rank 1 waits. The run survives, pauses at one step on both ranks, and finishes."""
    run_dir = run_loop("fsdp2", tmp_path, "--steps", "400", "--pause-at", "20",
                       "--pause-s", "4", "--slow-checkpoint", "--pg-timeout", "3")
    rows, _, status = record(run_dir)
    assert status == "finished"
    assert [r["step"] for r in rows] == list(range(400))
    with RunReader(run_dir) as reader:
        control = [e for e in reader.events_after() if e["kind"] == "control"]
    actions = [(e["data"]["action"], e["step"]) for e in control]
    assert [a for a, _ in actions] == ["pause", "resume"], actions
    assert actions[0][1] == actions[1][1] and actions[0][1] % 10 == 0
    wall = column(rows, "wall_time")
    gap = np.diff(wall).max()
    assert gap >= 7.0, f"the run did not pause for the whole time (longest gap {gap:.1f} s)"


def test_fsdp2_max_norm_change_lands_on_every_rank_at_one_step(tmp_path: Path) -> None:
    """A max_norm change sent mid-run is applied by both ranks at the same exchange step; the
    record and the gathered model equal a single process that changed it at that step."""
    run_dir = run_loop("fsdp2", tmp_path / "fsdp2", "--steps", "300", "--steer-at", "15")
    with RunReader(run_dir) as reader:
        [change] = [e for e in reader.events_after() if e["kind"] == "control"]
    at = change["step"]
    assert at % 10 == 0 and 15 < at < 300
    logs = [(tmp_path / "fsdp2" / f"rank{r}.jsonl").read_text() for r in (0, 1)]
    assert logs[0] == logs[1], "the ranks stepped with different thresholds"
    ref_dir = run_loop("single", tmp_path / "single", "--steps", "300", "--apply-at", str(at))
    ref, _, _ = record(ref_dir)
    rows, _, _ = record(run_dir)
    assert column(rows, "max_norm").tolist() == column(ref, "max_norm").tolist()
    assert column(rows, "max_norm")[at - 1:at + 1] == pytest.approx([0.5, 0.2])
    for key in ("loss", "grad_norm_pre", "grad_norm_post"):
        np.testing.assert_allclose(column(rows, key), column(ref, key), rtol=1e-4,
                                   err_msg=key)
    expected = torch.load(tmp_path / "single" / "params0.pt")
    for r in (0, 1):
        got = torch.load(tmp_path / "fsdp2" / f"params{r}.pt")
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)
