"""The store's reading side against real faults: a read-only run directory, hand-damaged stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tui_fixtures import make_run

from clipdash.store import StoreError
from clipdash.store.reader import RunReader


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory that really cannot be written: a small tmpfs remounted read-only (as root),
    or a chmod'ed directory (as anyone else)."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        yield where
        where.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (root without CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def freeze(where: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    else:
        for p in [where, *where.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    with pytest.raises(OSError):
        (where / "probe").write_text("x")


def test_a_read_only_run_directory_opens_and_says_so(tmp_path: Path,
                                                     read_only_dir: Path) -> None:
    make_run(tmp_path / "src", 300).close()
    shutil.copytree(tmp_path / "src", read_only_dir / "run")
    freeze(read_only_dir)
    with RunReader(read_only_dir / "run") as reader:
        assert reader.read_only
        assert reader.step_count() == 300 and reader.last_step() == 299
        assert reader.summary().status == "finished"
        assert reader.meta()["name"] == "src"
    assert not (read_only_dir / "run" / "clipdash.sqlite-shm").exists()


def test_a_read_only_copy_of_a_live_run_reads_its_wal(tmp_path: Path,
                                                      read_only_dir: Path) -> None:
    """Copied while the trainer still wrote (database, -wal and -shm): the WAL's rows count."""
    writer = make_run(tmp_path / "src", 120, state="running")
    assert (tmp_path / "src" / "clipdash.sqlite-wal").stat().st_size > 0
    shutil.copytree(tmp_path / "src", read_only_dir / "run")
    writer.close()
    freeze(read_only_dir)
    with RunReader(read_only_dir / "run") as reader:
        assert reader.read_only and reader.step_count() == 120


def _store(tmp_path: Path, name: str = "r") -> Path:
    make_run(tmp_path / name, 20).close()
    return tmp_path / name


def _sql(run: Path, *statements: str) -> None:
    conn = sqlite3.connect(run / "clipdash.sqlite")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def test_invalid_meta_json_is_a_one_line_store_error(tmp_path: Path) -> None:
    run = _store(tmp_path)
    _sql(run, "UPDATE meta SET value = '{not json' WHERE key = 'name'")
    with RunReader(run) as reader, pytest.raises(StoreError) as err:
        reader.meta()
    msg = str(err.value)
    assert "\n" not in msg and str(run / "clipdash.sqlite") in msg and "'name'" in msg


def test_a_bad_per_parameter_blob_is_an_error_not_a_shifted_row(tmp_path: Path) -> None:
    run = _store(tmp_path)
    _sql(run, "UPDATE steps SET param_norms = X'0000803F0000' WHERE step = 7")  # 6 bytes
    with RunReader(run) as reader:
        with pytest.raises(StoreError, match=r"param_norms of step 7 is 6 bytes, expected 16"):
            list(reader.iter_steps(with_params=True))
        # Without parameters every step still reads; the parameter panel leaves the bad one out.
        assert len(list(reader.iter_steps())) == 20
        steps, norms = reader.param_norms(points=100)
        assert 7 not in steps.tolist() and norms.shape == (19, 4)
        assert np.isfinite(norms).all()


def test_a_store_without_tables_and_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    conn = sqlite3.connect(empty / "clipdash.sqlite")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with pytest.raises(StoreError, match="damaged store .no table evals, events, meta"):
        RunReader(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "clipdash.sqlite").write_bytes(b"hello, not a database" * 100)
    with pytest.raises(StoreError, match="not a clipdash store .file is not a database"):
        RunReader(junk)


def test_a_dropped_table_after_opening_is_a_store_error(tmp_path: Path) -> None:
    run = _store(tmp_path)
    with RunReader(run) as reader:
        _sql(run, "DROP TABLE status")
        with pytest.raises(StoreError, match="damaged store .no such table: status"):
            reader.summary()


def test_one_bad_store_does_not_stop_the_others_being_listed(tmp_path: Path) -> None:
    """What `ls` and the dashboard do: each run read on its own, a bad one is one error."""
    from clipdash.store import find_runs

    _store(tmp_path, "a")
    bad = _store(tmp_path, "b")
    _store(tmp_path, "c")
    _sql(bad, "DROP TABLE steps")
    ok, errors = [], []
    for run in find_runs(tmp_path):
        try:
            with RunReader(run) as reader:
                ok.append(reader.summary().name)
        except StoreError as exc:
            errors.append(str(exc))
    assert ok == ["a", "c"] and len(errors) == 1 and "b/clipdash.sqlite" in errors[0]


def test_the_dashboard_reads_a_read_only_run_and_marks_it(tmp_path: Path,
                                                          read_only_dir: Path) -> None:
    from clipdash.tui.feed import RUNS
    from clipdash.tui.messages import RunsUpdated
    from clipdash.tui.poller import Poller

    make_run(tmp_path / "src", 300).close()
    shutil.copytree(tmp_path / "src", read_only_dir / "run")
    freeze(read_only_dir)
    got: list[object] = []

    class Inbox:
        def post_message(self, message: object) -> bool:
            got.append(message)
            return True

    poller = Poller(read_only_dir)
    poller.hub.subscribe(Inbox(), RUNS)  # type: ignore[arg-type]
    while poller.tick():
        pass
    rows = [m for m in got if isinstance(m, RunsUpdated)][-1].rows
    row = rows[str(read_only_dir / "run")]
    assert row.read_only and row.status == "finished" and row.step == 299 and row.norm_spark
    for w in poller.watches.values():
        w.close()
