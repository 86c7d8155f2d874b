"""`clipdash rm`: confirms (or -y), refuses live runs and a missing terminal, removes sweep
members with their bookkeeping, and never deletes the runs directory itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from trainer_proc import query
from tui_fixtures import FakeTrainer, make_run

from clipdash.cli import main
from clipdash.store import schema
from clipdash.store.layout import DB_NAME
from clipdash.store.lock import acquire


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for name in ("lrfind-1", "lrfind-2", "keep"):
        make_run(root / name, 3).close()
    for member in ("max_norm=0.5", "max_norm=1"):
        make_run(root / "sw" / member, 3).close()
        for kind, ext in (("configs", "toml"), ("logs", "log")):
            (root / "sw" / ".sweep" / kind).mkdir(parents=True, exist_ok=True)
            (root / "sw" / ".sweep" / kind / f"{member}.{ext}").write_text("x")
    (root / "sw" / "results.json").write_text("{}")
    return root


def rm(capsys: pytest.CaptureFixture[str], runs: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["rm", *argv, "--runs-dir", str(runs)])
    out, err = capsys.readouterr()
    return code, out, err


def left(runs: Path) -> list[str]:
    return sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob(DB_NAME))


def test_rm_yes_removes_only_the_named_runs(runs: Path, capsys) -> None:
    code, out, _ = rm(capsys, runs, "lrfind-1", "lrfind-2", "-y")
    assert (code, out) == (0, "removed 2 runs: lrfind-1, lrfind-2\n")
    assert left(runs) == ["keep", "sw/max_norm=0.5", "sw/max_norm=1"]


def test_without_a_terminal_rm_needs_yes(runs: Path, capsys) -> None:
    code, _, err = rm(capsys, runs, "keep")
    assert code == 2 and "pass -y" in err
    assert "keep" in left(runs)


def test_confirmation(runs: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert rm(capsys, runs, "lrfind-1")[0] == 1
    assert "lrfind-1" in left(runs)
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert rm(capsys, runs, "lrfind-1")[0] == 0
    assert "lrfind-1" not in left(runs)


def test_live_runs_are_refused(runs: Path, capsys) -> None:
    trainer = FakeTrainer(runs / "live")
    trainer.start()
    try:
        code, _, err = rm(capsys, runs, "keep", "live", "-y")
        assert code == 2 and "refusing to remove live: it is running" in err
        assert {"keep", "live"} <= set(left(runs))  # nothing removed, not even `keep`
    finally:
        trainer.finish()
    lock = acquire(runs / "keep")  # a writer (SIGSTOP'd, say) holds the lock: still live
    try:
        code, _, err = rm(capsys, runs, "keep", "-y")
        assert code == 2 and "is writing it" in err
    finally:
        lock.release()


def test_a_lost_run_can_be_removed(runs: Path, capsys) -> None:
    make_run(runs / "crashed", 3, state="running").close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    conn = schema.connect(runs / "crashed" / DB_NAME)
    with conn:
        conn.execute("UPDATE status SET pid = ?", (dead.pid,))
    conn.close()
    assert query(runs / "crashed", "SELECT state FROM status") == [("running",)]
    assert rm(capsys, runs, "crashed", "-y")[0] == 0
    assert "crashed" not in left(runs)


def test_sweep_members_and_folders(runs: Path, capsys) -> None:
    assert rm(capsys, runs, "sw/max_norm=0.5", "-y")[0] == 0
    assert sorted(p.name for p in (runs / "sw" / ".sweep").rglob("*.*")) == [
        "max_norm=1.log", "max_norm=1.toml"]
    assert rm(capsys, runs, "sw/max_norm=1", "-y")[0] == 0  # the last member: folder goes too
    assert not (runs / "sw").exists()


def test_a_whole_sweep_folder(runs: Path, capsys) -> None:
    code, out, _ = rm(capsys, runs, "sw", "-y")
    assert code == 0 and "removed 2 runs" in out
    assert not (runs / "sw").exists() and left(runs) == ["keep", "lrfind-1", "lrfind-2"]


@pytest.mark.parametrize("arg", [".", "runs", "nope"])
def test_never_the_runs_directory(runs: Path, capsys, monkeypatch: pytest.MonkeyPatch,
                                  arg: str) -> None:
    monkeypatch.chdir(runs.parent)
    code = main(["rm", arg, "-y"])
    assert code == 2 and "no run" in capsys.readouterr().err
    assert len(left(runs)) == 5


def test_a_run_that_cannot_be_deleted_is_reported(runs: Path, capsys) -> None:
    """An immutable run directory (chattr +i; as root, chmod would not stop rmtree): a one-line
    error naming it, exit 1, and the other runs are still removed."""
    locked = runs / "lrfind-1"
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (not root, or the filesystem lacks it)")
    try:
        code, out, err = rm(capsys, runs, "lrfind-1", "lrfind-2", "-y")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert code == 1 and out == "removed 1 run: lrfind-2\n"
    assert err.startswith("clipdash rm: cannot remove lrfind-1: ") and err.count("\n") == 1
    assert "lrfind-1" in left(runs) and "lrfind-2" not in left(runs)
