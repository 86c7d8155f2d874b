"""RUN arguments: exact names, unique prefixes, @latest, close-name suggestions, and `ctl`
without RUN when one run is live. Every command resolves RUN through store.layout.resolve_run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tui_fixtures import FakeTrainer, make_run

from clipdash.cli import main
from clipdash.store.layout import RunNotFound, resolve_run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for name in ("live1", "live2", "exploding_rnn-20261201-101010", "abc"):
        make_run(root / name, 5).close()
    make_run(root / "sw" / "max_norm=0.5,scheduler=StepLR", 3).close()
    return root


def test_exact_prefix_and_sweep_member(runs: Path) -> None:
    assert resolve_run("live1", runs) == runs / "live1"
    assert resolve_run("expl", runs) == runs / "exploding_rnn-20261201-101010"
    assert resolve_run("max_norm=0.5", runs) == runs / "sw" / "max_norm=0.5,scheduler=StepLR"
    assert resolve_run("sw/max", runs) == runs / "sw" / "max_norm=0.5,scheduler=StepLR"
    assert resolve_run(str(runs / "ab"), runs) == runs / "abc"  # a path prefix too
    assert resolve_run(runs / "live2", "elsewhere") == runs / "live2"


def test_ambiguous_prefix_lists_the_candidates(runs: Path) -> None:
    with pytest.raises(RunNotFound, match="'live' is ambiguous: it matches live1, live2$"):
        resolve_run("live", runs)


def test_no_match_suggests_close_names(runs: Path) -> None:
    with pytest.raises(RunNotFound, match=r"did you mean exploding_rnn-20261201-101010\?"):
        resolve_run("xploding", runs)
    with pytest.raises(RunNotFound, match=r"did you mean live1 or live2\?"):
        resolve_run("liev", runs)
    with pytest.raises(RunNotFound, match=r"^no run 'zzz' \(not a run directory, nor a run in"):
        resolve_run("zzz", runs)
    with pytest.raises(RunNotFound, match="does not exist"):
        resolve_run("x", runs / "nowhere")


def test_latest_is_the_last_started(runs: Path) -> None:
    time.sleep(0.01)
    make_run(runs / "0-newest", 2).close()  # first by name, last by start time
    assert resolve_run("@latest", runs) == runs / "0-newest"
    (runs.parent / "empty").mkdir()
    with pytest.raises(RunNotFound, match="no run for @latest: no runs in"):
        resolve_run("@latest", runs.parent / "empty")


def test_every_run_command_takes_a_prefix(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["export", "expl"], ["suggest", "expl"], ["compare", "expl", "abc"],
                 ["export", "@latest"]):
        assert main([*argv, "--runs-dir", str(runs)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["export", "live", "--runs-dir", str(runs)]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_ctl_without_run_uses_the_only_live_run(runs: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "pause", "--runs-dir", str(runs)]) == 2
    assert "no live run in" in capsys.readouterr().err
    trainer = FakeTrainer(runs / "trainer-a")
    trainer.start()
    try:
        assert main(["ctl", "set", "max_norm=0.25", "--runs-dir", str(runs)]) == 0
        assert capsys.readouterr().out.startswith("applied at step")
        assert trainer.max_norm == 0.25
        assert main(["ctl", "trai", "set", "max_norm=0.5", "--runs-dir", str(runs)]) == 0
        assert trainer.max_norm == 0.5
        other = FakeTrainer(runs / "trainer-b")
        other.start()
        try:
            capsys.readouterr()
            assert main(["ctl", "pause", "--runs-dir", str(runs)]) == 2
            assert "2 live runs" in capsys.readouterr().err
        finally:
            other.finish()
    finally:
        trainer.finish()


def test_hostile_names_are_escaped(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(runs / "live\x1b[2J", 2).close()
    with pytest.raises(RunNotFound) as exc:
        resolve_run("live", runs)
    assert "\x1b" not in str(exc.value) and "'live\\x1b[2J'" in str(exc.value)
    assert main(["ls", str(runs)]) == 0
    assert main(["ls", str(runs), "--names"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "'live\\x1b[2J'" in out
