"""`clipdash watch` driven headless with App.run_test() and Pilot, on real stores (and once on a
fake reader with a frozen clock), at 80x24 and wide."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from tui_fixtures import FakeReader, FakeTrainer, make_run, screen_text, step_columns

from clipdash.keymap import DASHBOARD_KEYS
from clipdash.store.writer import RunWriter
from clipdash.tui.app import WatchApp
from clipdash.tui.columns import RUN_COLUMNS
from clipdash.tui.compare import CompareScreen
from clipdash.tui.detail import DetailScreen
from clipdash.tui.dialogs import ConfirmDialog, HelpScreen, SettingDialog
from clipdash.tui.messages import RunRow
from clipdash.tui.render import fmt_num
from clipdash.tui.runlist import RunsScreen
from clipdash.tui.runtable import RunTable
from clipdash.tui.widgets import Plot

Body = Callable[[WatchApp, Pilot[Any]], Awaitable[None]]
SIZES = [(120, 40), (80, 24)]


def run_app(runs_dir: Path, body: Body, size: tuple[int, int] = (120, 40),
            poll_s: float = 0.04, **kwargs: Any) -> None:
    async def main() -> None:
        app = WatchApp(runs_dir, poll_s=poll_s, ack_timeout=5.0, **kwargs)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
        assert not app.reader.is_alive()  # stopped and joined on unmount

    asyncio.run(main())


async def wait_for(pilot: Pilot[Any], cond: Callable[[], object], what: str,
                   timeout: float = 5.0) -> None:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def table(app: WatchApp) -> RunTable:
    return app.screen.query_one(RunTable)


def cell(app: WatchApp, run_dir: Path, column: str) -> str:
    """The text of one column of a run's row, as the table draws it."""
    row = table(app).rows.get(str(run_dir))
    if row is None:
        return ""
    return next(c for c in RUN_COLUMNS if c.key == column).cell(row).plain.strip()


def line_of(app: WatchApp, needle: str) -> str:
    return next((ln for ln in screen_text(app).splitlines() if needle in ln), "")


def footer(app: WatchApp) -> str:
    return [ln for ln in screen_text(app).splitlines() if ln.strip()][-1]


def commands(run_dir: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(run_dir / "clipdash.sqlite")
    try:
        return conn.execute("SELECT action, key, value, state, source FROM commands "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def trainer(tmp_path: Path) -> Any:
    fake = FakeTrainer(tmp_path / "runs" / "live")
    fake.start()
    yield fake
    fake.finish()


@pytest.mark.parametrize("size", SIZES)
def test_run_list_fills_from_the_store(tmp_path: Path, size: tuple[int, int]) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "alpha", 300).close()
    make_run(runs / "sweep" / "beta-lr0.1", 120, state="failed").close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 2, "two rows")
        assert cell(app, runs / "alpha", "status") == "finished"
        assert cell(app, runs / "alpha", "step") == "300/1000"
        await wait_for(pilot, lambda: cell(app, runs / "alpha", "grad_spark"), "sparkline")
        text = screen_text(app)
        assert "2 runs" in text and "▾ sweep/" in text
        assert "finished    300/1000" in line_of(app, "alpha")
        assert "failed" in line_of(app, "beta-lr0.1")
        assert all(len(line) <= size[0] for line in text.splitlines())
        await wait_for(pilot, lambda: "? help" in footer(app), "the help key in the footer")

    run_app(runs, body, size)


def test_sweep_members_are_told_apart_at_80_columns_and_the_name_stays(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for mn in ("0.5", "1.0"):
        for sched in ("CyclicLR", "StepLR"):
            make_run(runs / "sw2" / f"max_norm={mn},scheduler={sched}", 50).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 4, "four rows")
        text = screen_text(app)
        labels = ["max_norm=0.5 CyclicLR", "max_norm=0.5 StepLR", "max_norm=1.0 CyclicLR",
                  "max_norm=1.0 StepLR"]
        assert all(text.count(label) == 1 for label in labels), text
        header = line_of(app, "status")
        assert "max_norm" in header and "grad norm" in header  # readable at 80 columns
        assert "        1 " in line_of(app, "max_norm=1.0 StepLR")
        await pilot.press("down", "right", "right")
        scrolled = screen_text(app)
        assert all(label in scrolled for label in labels)  # the name column stays
        assert "status" not in line_of(app, "run ") and "clip%" in line_of(app, "run ")
        await pilot.press("home", "enter")  # Enter on the sweep's header folds it
        await wait_for(pilot, lambda: "▸ sw2/  4 runs" in screen_text(app), "folded")
        assert "StepLR" not in screen_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "StepLR" in screen_text(app), "unfolded")

    run_app(runs, body, (80, 24))


def test_a_run_started_later_is_listed_first(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i in range(30):
        make_run(runs / f"done-{i:02d}", 20).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 30, "30 runs")
        writer = make_run(runs / "zz-new", 10, state="running")
        try:
            await wait_for(pilot, lambda: "zz-new" in screen_text(app), "the new run", 5.0)
            lines = screen_text(app).splitlines()
            assert "zz-new" in lines[2] and "running" in lines[2]  # the row under the header
            assert "31 runs, 1 live" in lines[0]
        finally:
            writer.close()

    run_app(runs, body, (80, 24))


def test_a_new_step_updates_its_row(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "the live run")
        writer = RunWriter(live, resume=True)
        writer.append_steps(step_columns(50, 1, loss=123.4))
        writer.close()
        await wait_for(pilot, lambda: "123.4" in line_of(app, "running"), "the new step on screen")
        assert cell(app, live, "step") == "51/1000"

    run_app(tmp_path / "runs", body)


def test_p_pauses_and_the_trainer_acknowledges(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "the live run")
        await pilot.press("p")
        await wait_for(pilot, lambda: cell(app, live, "status") == "paused", "paused status")
        assert commands(live) == [("pause", None, None, "applied", "dashboard")]
        await wait_for(pilot, lambda: "applied" in screen_text(app), "the acknowledgement")
        await pilot.press("p")  # a paused run resumes
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "running again")
        assert [c[0] for c in commands(live)] == ["pause", "resume"]

    run_app(tmp_path / "runs", body)


def test_max_norm_dialog_validates_then_the_config_tab_shows_the_value_in_effect(
        tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"
    (live / "config.toml").write_text(
        '[optimizer]\nname = "SGD"\nlr = 0.1\n[clip]\nmode = "norm"\nmax_norm = 1.0\n'
        'max_value = 0.5\n')

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "the live run")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingDialog), "the dialog")
        for bad, reason in (("abc", "not a number"), ("-1", "must be > 0"), ("0", "> 0")):
            app.screen.query_one(Input).value = bad
            await pilot.press("enter")
            await pilot.pause(0.05)
            assert isinstance(app.screen, SettingDialog), bad
            assert reason in screen_text(app), bad
        assert commands(live) == []
        app.screen.query_one(Input).value = ""
        await pilot.press("0", ".", "2", "5", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the list again")
        await wait_for(pilot, lambda: commands(live) and commands(live)[0][3] == "applied",
                       "the trainer's acknowledgement")
        assert commands(live) == [("set", "max_norm", "0.25", "applied", "dashboard")]
        await wait_for(pilot, lambda: "max_norm 1 -> 0.25" in screen_text(app), "the ack text")
        trainer.step_every = 0.02  # the trainer records steps at the new max_norm
        await wait_for(pilot, lambda: cell(app, live, "max_norm") == "0.25", "the new max_norm")
        await pilot.press("enter", "4")
        await wait_for(pilot, lambda: "max_norm = 0.25" in screen_text(app), "in effect")
        text = screen_text(app)
        assert "# in effect now" in text and "started at 1" in line_of(app, "max_norm = 0.25")
        assert "# starting config" in text and "max_norm = 1.0" in text
        assert "max_value" not in text  # a norm-mode run

    run_app(tmp_path / "runs", body)


def test_stop_asks_first(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "the live run")
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        assert commands(live) == []
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: cell(app, live, "status") == "stopped", "stopped")
        assert commands(live)[0][:4] == ("stop", None, None, "applied")

    run_app(tmp_path / "runs", body)


def test_commands_to_a_finished_run_are_refused_in_the_ui(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "done", 20).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 1, "the run")
        await pilot.press("p")
        await wait_for(pilot, lambda: "takes no commands" in screen_text(app), "the refusal")

    run_app(runs, body)


@pytest.mark.parametrize("size", SIZES)
def test_run_view_shows_plots_params_events_config(tmp_path: Path,
                                                   size: tuple[int, int]) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "alpha", 400, spike_at=123, n_params=300).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 1, "the run")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen)
                       and app.screen.snapshot is not None, "the run view")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        await wait_for(pilot, lambda: "1000┤" in screen_text(app), "the spike's label")
        grad = screen.query_one("#grad", Plot)
        assert "max_norm" in str(grad.border_title) and len(grad._lines[0].band) > 0
        assert "nonfin" not in screen_text(app)  # every step finite: no marker row
        await pilot.press("2")
        await wait_for(pilot, lambda: "top 50 of 300 parameters" in screen_text(app), "params")
        await pilot.press("3")
        await wait_for(pilot, lambda: "checkpoint at step 200" in screen_text(app), "events")
        await pilot.press("4")
        await wait_for(pilot, lambda: 'kind = "mlp"' in screen_text(app), "the config")
        await wait_for(pilot, lambda: "? help" in footer(app), "the help key in the footer")
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

    run_app(runs, body, size)


def test_the_exploding_run_shows_where_its_steps_were_not_finite(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    writer = make_run(runs / "boom", 0)
    cols = step_columns(0, 400)
    pre = np.geomspace(1.0, 3.3e18, 400)
    finite = np.arange(400) < 300
    pre[~finite] = np.inf
    cols.update(grad_norm_pre=pre, finite=finite, loss=np.where(finite, cols["loss"], np.nan))
    writer.append_steps(cols)
    writer.set_state("failed", "non-finite gradients")
    writer.close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, runs / "boom", "grad_spark"), "a sparkline")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "nonfin" in screen_text(app), "the marker row")
        grad_top = next(ln for ln in screen_text(app).splitlines() if "nonfin" in ln)
        marks = grad_top.split("nonfin")[-1]  # the grad-norm plot (the right one)
        assert "✖" in marks[len(marks) // 2:] and "✖" not in marks[:len(marks) // 3]
        top = fmt_num(float(pre[finite].max()))  # the scale tops out at the largest finite
        assert f"{top}┤" in grad_top or f"{top}┤" in screen_text(app)

    run_app(runs, body, (120, 40))


def test_escape_codes_in_a_run_name_are_shown_not_obeyed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "evil\x1b]0;pwned\x07\x1b[2J", 20).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).rows) == 1, "the run")
        text = screen_text(app)
        assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in text and "\x1b]0;" not in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: "evil\\x1b" in line_of(app, "finished"), "the headline")

    run_app(runs, body, (120, 40))


def test_a_damaged_store_is_one_row_with_a_note_and_the_others_list(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "good", 20).close()
    (runs / "bad").mkdir()
    conn = sqlite3.connect(runs / "bad" / "clipdash.sqlite")
    conn.execute("PRAGMA user_version=1")  # a store without tables
    conn.close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: cell(app, runs / "good", "status") == "finished", "good")
        await wait_for(pilot, lambda: cell(app, runs / "bad", "status") == "error",
                       "the damaged run marked", timeout=15.0)
        assert "damaged store (no table" in (table(app).rows[str(runs / "bad")].message or "")
        await wait_for(pilot, lambda: any("no table" in n.message for n in app._notifications),
                       "the warning")

    run_app(runs, body)


def test_filter_mark_and_compare(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("alpha", "beta", "gamma"):
        make_run(runs / name, 100).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: len(table(app).items) == 3, "three runs")
        await pilot.press("slash", "b", "e", "t")
        await wait_for(pilot, lambda: len(table(app).items) == 1, "the filtered list")
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(table(app).items) == 3, "the whole list")
        # The cursor stayed on beta; space marks and moves down.
        await pilot.press("space", "space", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                       and len(app.screen.bands) == 2, "two runs compared")
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        assert "comparing  ━ beta  ━ gamma" in screen_text(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: all("max_norm" in b for b in compare.bands.values()),
                       "the next metric")
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_lines = screen_text(app).splitlines()
        for key, what in DASHBOARD_KEYS[:8]:  # the top of the help, drawn from the keymap
            assert any(key in ln and what in ln for ln in help_lines), key
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

    run_app(runs, body)


# -- the App on a fake reader -------------------------------------------------------------


def test_the_app_takes_its_reader_and_screens_subscribe(tmp_path: Path) -> None:
    frozen = 1_700_000_000.0
    fake = FakeReader([RunRow("/r/a", "a", "finished", step=99, total=100, loss=0.5,
                              started=frozen - 60),
                       RunRow("/r/b", "b", "running", step=10, total=100, loss=2.0,
                              started=frozen)])

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        assert fake.started
        await wait_for(pilot, lambda: "2 runs, 1 live" in screen_text(app), "the fake rows")
        lines = screen_text(app).splitlines()
        assert "b " in lines[2] and "running" in lines[2]  # live first
        fake.push(RunRow("/r/b", "b", "running", step=11, total=100, loss=1.25,
                         started=frozen))
        await wait_for(pilot, lambda: "1.25" in line_of(app, "running"), "the pushed row")
        assert app.rows["/r/b"].loss == 1.25  # the App looks rows up when steering
        await wait_for(pilot, lambda: fake.visible and "/r/a" in (fake.visible[-1] or ()),
                       "the rows on screen reported to the reader")

    async def main() -> None:
        app = WatchApp(tmp_path, reader=fake)
        async with app.run_test(size=(80, 24)) as pilot:
            await body(app, pilot)
        assert fake.stopped and fake.joined

    asyncio.run(main())
