"""The run store: batched appends, incremental and downsampled reads, status, concurrency."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipdash.store import RunReader
from clipdash.store.commands import result, submit
from clipdash.store.reader import LOST_AFTER_S, effective_status
from clipdash.store.writer import RunWriter

PARAMS = [("layer.weight", (4, 3)), ("layer.bias", (4,)), ("head.weight", (1, 4)),
          ("head.bias", (1,))]


def columns(steps: np.ndarray | range, **values: np.ndarray | float) -> dict[str, np.ndarray]:
    """A batch of step columns as the tracker's writer thread hands them to the store."""
    step = np.asarray(steps, np.int64)
    n = len(step)
    cols: dict[str, np.ndarray] = {
        "step": step, "epoch": step // 100, "wall_time": 1.7e9 + step * 0.01,
        "loss": 1.0 / (1 + step), "lr": np.full(n, 0.1), "grad_norm_pre": np.ones(n),
        "grad_norm_post": np.ones(n), "max_norm": np.full(n, 2.0), "clip_coef": np.ones(n),
        "clipped": np.zeros(n, bool), "finite": np.ones(n, bool),
        "max_value": np.full(n, np.nan), "lr_groups": np.full((n, 1), 0.1),
        "param_norms": np.ones((n, len(PARAMS)), np.float32),
    }
    for key, value in values.items():
        cols[key] = np.broadcast_to(value, cols[key].shape).copy()
    return cols


def new_run(path: Path, total_steps: int | None = None) -> RunWriter:
    writer = RunWriter(path)
    writer.set_params(PARAMS)
    writer.set_meta(name=path.name, clip_mode="norm")
    writer.start(total_steps)
    return writer


def test_append_batches_and_read_incrementally(tmp_path: Path) -> None:
    writer = new_run(tmp_path, total_steps=15)
    writer.append_steps(columns(range(0, 5)))
    writer.append_steps(columns(range(5, 10)))
    with RunReader(tmp_path) as reader:
        assert reader.params() == [(n, list(s)) for n, s in PARAMS]
        assert reader.meta() == {"name": tmp_path.name, "clip_mode": "norm"}
        first = reader.steps_after(-1)
        assert first["step"] == list(range(10))
        assert reader.steps_after(4, columns=("step", "loss"))["step"] == [5, 6, 7, 8, 9]
        assert reader.steps_after(4, limit=2)["step"] == [5, 6]
        # The same open reader sees a later batch: "rows after step N" is what a tail asks.
        writer.append_steps(columns(range(10, 15), loss=0.5))
        later = reader.steps_after(first["step"][-1])
        assert later["step"] == list(range(10, 15)) and later["loss"] == [0.5] * 5
        assert reader.steps_after(14)["step"] == []
        assert reader.last_step() == 14 and reader.step_count() == 15
        summary = reader.summary()
        assert (summary.status, summary.step, summary.total_steps) == ("running", 14, 15)
        assert summary.loss == 0.5 and summary.max_norm == 2.0
        assert reader.status_row()["last_step"] == 14  # type: ignore[index]
    writer.close()


def test_nan_is_stored_and_returned_as_none(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    cols = columns(range(3))
    cols["loss"][1] = np.nan
    cols["grad_norm_pre"][2] = np.inf  # inf is a value, not missing
    cols["max_norm"][:] = np.nan
    writer.append_steps(cols)
    writer.add_eval(2, {"loss": float("nan"), "accuracy": 0.75})
    with RunReader(tmp_path) as reader:
        rows = list(reader.iter_steps())
        assert [r["loss"] for r in rows] == [1.0, None, pytest.approx(1 / 3)]
        assert rows[2]["grad_norm_pre"] == float("inf")
        assert all(r["max_norm"] is None and r["max_value"] is None for r in rows)
        assert reader.evals_after() == [(2, "accuracy", 0.75), (2, "loss", None)]
        raw = reader.conn.execute("SELECT typeof(loss) FROM steps WHERE step = 1").fetchone()
        assert raw[0] == "null"
    writer.close()


def test_rewritten_steps_replace_not_duplicate(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    writer.append_steps(columns(range(10)))
    writer.add_eval(8, {"loss": 1.0})
    writer.add_event(9, "control", "late")
    writer.add_event(9, "resume", "kept")
    writer.truncate_after(4)  # resume from a checkpoint taken after step 4
    writer.append_steps(columns(range(3, 8), loss=7.0))  # overlapping: replaced
    with RunReader(tmp_path) as reader:
        steps = reader.steps_after(-1, columns=("step", "loss"))
        assert steps["step"] == list(range(8))
        assert steps["loss"][3:] == [7.0] * 5
        assert reader.evals_after() == []
        assert [e["kind"] for e in reader.events_after()] == ["resume"]
    writer.close()


# -- downsampling ---------------------------------------------------------------------------

N_BIG = 100_000
SPIKE, DIP = 54_321, 12_345


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big")
    writer = new_run(path)
    rng = np.random.default_rng(0)
    for start in range(0, N_BIG, 25_000):
        steps = np.arange(start, start + 25_000)
        pre = 1.0 + 0.01 * rng.random(len(steps))
        pre[steps == SPIKE] = 1e3
        pre[steps == DIP] = 1e-3
        norms = np.ones((len(steps), len(PARAMS)), np.float32)
        norms[steps == SPIKE, 2] = 500.0
        writer.append_steps(columns(steps, grad_norm_pre=pre, param_norms=norms))
    writer.close()
    return path


def test_series_keeps_a_single_spike_and_dip(big_run: Path) -> None:
    with RunReader(big_run) as reader:
        statements: list[str] = []
        reader.conn.set_trace_callback(statements.append)
        series = reader.series("grad_norm_pre", 100)
        reader.conn.set_trace_callback(None)
    # Reduced in SQL: one GROUP BY query, 100 rows back, not 100,000.
    assert any("GROUP BY" in s for s in statements)
    assert len(series) == 100
    assert series.step_lo[0] == 0 and series.step_hi[-1] == N_BIG - 1
    assert all(hi - lo + 1 == 1000 for lo, hi in zip(series.step_lo, series.step_hi,
                                                       strict=True))
    spike = next(i for i, (lo, hi) in enumerate(zip(series.step_lo, series.step_hi,
                                                    strict=True)) if lo <= SPIKE <= hi)
    dip = next(i for i, (lo, hi) in enumerate(zip(series.step_lo, series.step_hi,
                                                  strict=True)) if lo <= DIP <= hi)
    vmax, vmin = np.array(series.vmax, float), np.array(series.vmin, float)
    assert vmax[spike] == 1e3 and vmax.max() == 1e3
    assert vmin[dip] == 1e-3 and vmin.min() == 1e-3
    assert np.delete(vmax, spike).max() < 1.02
    assert series.vmean[spike] == pytest.approx(1.0 + 999 / 1000, abs=0.02)


def test_series_window(big_run: Path) -> None:
    with RunReader(big_run) as reader:
        window = reader.series("grad_norm_pre", 10, start=SPIKE - 500, end=SPIKE + 499)
    assert len(window) == 10 and window.step_lo[0] == SPIKE - 500
    assert window.step_hi[-1] == SPIKE + 499
    assert np.array(window.vmax, float).max() == 1e3


def test_param_norms_bucket_max(big_run: Path) -> None:
    with RunReader(big_run) as reader:
        steps, norms = reader.param_norms(start=SPIKE - 5000, end=SPIKE + 4999, points=10)
    assert norms.shape == (10, len(PARAMS)) and norms.dtype == np.float32
    assert steps.tolist() == list(range(SPIKE - 5000, SPIKE + 5000, 1000))
    bucket = (SPIKE - (SPIKE - 5000)) // 1000
    assert norms[bucket, 2] == 500.0
    expected = np.ones((10, len(PARAMS)), np.float32)
    expected[bucket, 2] = 500.0
    np.testing.assert_array_equal(norms, expected)


# -- status ---------------------------------------------------------------------------------


def test_status_lost_when_the_heartbeat_is_stale(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    with RunReader(tmp_path) as reader:
        assert reader.status() == "running"
        writer.conn.execute("UPDATE status SET heartbeat = ?", (time.time() - 60,))
        assert reader.status() == "lost" and reader.summary().status == "lost"
        writer.heartbeat()
        assert reader.status() == "running"
        writer.set_state("paused")
        writer.conn.execute("UPDATE status SET heartbeat = ?", (time.time() - 60,))
        assert reader.status() == "lost"
        writer.set_state("finished")
        writer.conn.execute("UPDATE status SET heartbeat = ?", (time.time() - 3600,))
        assert reader.status() == "finished"  # an ended run is never "lost"
    writer.close()


def test_effective_status_boundaries() -> None:
    now = 1000.0
    assert effective_status("running", now - LOST_AFTER_S + 0.1, now=now) == "running"
    assert effective_status("running", now - LOST_AFTER_S - 0.1, now=now) == "lost"
    assert effective_status("paused", None, now=now) == "lost"
    for state in ("finished", "failed", "stopped"):
        assert effective_status(state, 0.0, now=now) == state
    assert effective_status(None, None) == "unknown"


def test_status_lost_with_a_frozen_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = new_run(tmp_path)
    started = time.time()
    with RunReader(tmp_path) as reader:
        monkeypatch.setattr(time, "time", lambda: started + LOST_AFTER_S + 1)
        assert reader.status() == "lost"
    writer.close()


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_writers_and_readers_never_see_a_locked_database(tmp_path: Path) -> None:
    """The trainer's writer appends and resolves commands while 4 senders and a reader run."""
    writer = new_run(tmp_path)
    errors: list[BaseException] = []
    done = threading.Event()
    batches, per_batch, senders, per_sender = 60, 50, 4, 15
    ids: list[int] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
        return run

    @guarded
    def trainer() -> None:
        for b in range(batches):
            writer.append_steps(columns(range(b * per_batch, (b + 1) * per_batch)))
            for row in writer.pending_commands():
                writer.resolve_command(row[0], True, b * per_batch, "applied")
            writer.heartbeat()
        done.set()

    @guarded
    def sender() -> None:
        for i in range(per_sender):
            ids.append(submit(tmp_path, "set", "max_norm", str(0.1 * (i + 1)), source="api"))
            time.sleep(0.002)

    @guarded
    def reader() -> None:
        with RunReader(tmp_path) as r:
            after = -1
            while not done.is_set():
                rows = r.steps_after(after, columns=("step",))
                if rows["step"]:
                    assert rows["step"][0] == after + 1
                    after = rows["step"][-1]
                r.series("grad_norm_pre", 50)
                r.summary()

    threads = [threading.Thread(target=trainer), threading.Thread(target=reader)]
    threads += [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # The last commands may arrive after the last batch: the trainer's next poll takes them.
    for row in writer.pending_commands():
        writer.resolve_command(row[0], True, batches * per_batch, "applied")
    assert not errors, errors
    assert not any(isinstance(e, sqlite3.OperationalError) for e in errors)
    assert len(set(ids)) == senders * per_sender
    assert {result(tmp_path, i).state for i in ids} == {"applied"}
    with RunReader(tmp_path) as r:
        assert r.step_count() == batches * per_batch
    writer.close()
