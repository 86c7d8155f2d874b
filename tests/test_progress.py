"""The training terminal's progress line: a recent-window steps/s that a pause does not drag
down, the run's state and last command on the line, and the oversubscribed-threads note."""

from __future__ import annotations

import sys

import pytest
from rich.text import Text

from clipdash.engine import progress as progress_mod
from clipdash.engine.progress import RateWindow, RunProgress, thread_note


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def test_rate_is_recent_and_a_stall_does_not_count() -> None:
    rates = RateWindow(window_s=10.0)
    rates.restart(0.0, 0)
    for t in range(1, 31):  # 100 steps/s for 30 s, then 50 steps/s for 20 s
        rates.add(float(t), 100 * t)
    assert rates.rate == pytest.approx(100.0)
    for t in range(31, 51):
        rates.add(float(t), 3000 + 50 * (t - 30))
    assert rates.rate == pytest.approx(50.0)  # cumulative would say 80
    for t in range(51, 111):  # paused for a minute: the step does not move
        rates.add(float(t), 4000)
    assert rates.rate == pytest.approx(50.0)
    rates.add(111.0, 4050)
    assert rates.rate == pytest.approx(50.0)  # the minute of pause is not in it


def test_plain_lines_show_state_command_and_a_rate_a_pause_leaves_alone(
        clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    p = RunProgress("exp", total=10_000, threads=1)
    latest = {"loss": 0.5, "grad_norm_pre": 2.0, "lr": 0.1}
    for i in range(1, 21):
        clock.now += 1.0
        p.update(100 * i, latest)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "exp: step 2000/10000  loss 0.5  grad_norm 2  lr 0.1  100.0 steps/s  ETA 80s")
    p.set_state("paused", "paused before step 2000")
    assert capsys.readouterr().out == (
        "exp: step 2000/10000  [paused] loss 0.5  grad_norm 2  lr 0.1  100.0 steps/s"
        "  | paused before step 2000  ETA 80s\n")
    clock.now += 300.0  # five minutes paused
    p.set_state("running", "max_norm 1 -> 0.5 from step 2000")
    clock.now += 1.0
    p.update(2100, latest)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == ("exp: step 2100/10000  loss 0.5  grad_norm 2  lr 0.1  100.0 steps/s"
                    "  | max_norm 1 -> 0.5 from step 2000  ETA 79s")  # cumulative: 6.7 steps/s


def test_tty_bar_shows_the_state(clock: Clock, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    p = RunProgress("exp", total=100, threads=1)
    try:
        clock.now += 1.0
        p.update(10, {"loss": 1.0})
        p.set_state("paused", "paused before step 10")
        assert p.bar is not None
        shown = Text.from_markup(p.bar.tasks[0].fields["info"]).plain
        assert shown.startswith("[paused] loss 1") and shown.endswith("| paused before step 10")
        assert p.bar.tasks[0].fields["eta"] == "9s"  # 90 steps left at 10 steps/s
    finally:
        p.close()


def test_thread_note_once(clock: Clock, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert thread_note(2, 2) is None
    assert thread_note(8, 2) == ("note: torch uses 8 threads on 2 usable cores; set "
                                 "OMP_NUM_THREADS=1 when several trainers share this machine")
    monkeypatch.setattr(progress_mod, "usable_cores", lambda: 2)
    p = RunProgress("exp", total=100, threads=8)
    for step in (1, 2):
        clock.now += 1.0
        p.update(step, {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"exp: {thread_note(8, 2)}" and len(lines) == 3
