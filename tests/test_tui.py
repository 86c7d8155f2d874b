"""`clipdash watch` driven headless with App.run_test() and Pilot, on real stores."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from tui_fixtures import FakeTrainer, make_run, screen_text, step_columns

from clipdash.store.writer import RunWriter
from clipdash.tui.app import WatchApp
from clipdash.tui.compare import CompareScreen
from clipdash.tui.detail import DetailScreen
from clipdash.tui.dialogs import ConfirmDialog, HelpScreen, SettingDialog
from clipdash.tui.runlist import RunsScreen, RunTable
from clipdash.tui.widgets import Plot

Body = Callable[[WatchApp, Pilot[Any]], Awaitable[None]]
SIZES = [(120, 40), (80, 24)]


def run_app(runs_dir: Path, body: Body, size: tuple[int, int] = (120, 40),
            poll_s: float = 0.05) -> None:
    async def main() -> None:
        app = WatchApp(runs_dir, poll_s=poll_s, ack_timeout=5.0)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
        assert app.poller is not None and not app.poller.is_alive()  # joined on unmount

    asyncio.run(main())


async def wait_for(pilot: Pilot[Any], cond: Callable[[], object], what: str,
                   timeout: float = 5.0) -> float:
    """Seconds until `cond()` holds (fails after `timeout`)."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
    return time.monotonic() - start


def table(app: WatchApp) -> RunTable:
    return app.screen.query_one(RunTable)


def cell(app: WatchApp, run_dir: Path, column: str) -> str:
    return table(app).get_cell(str(run_dir), column).plain.strip()


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
        await wait_for(pilot, lambda: table(app).row_count == 2, "two rows")
        assert cell(app, runs / "alpha", "status") == "finished"
        assert cell(app, runs / "alpha", "step") == "300/1000"
        assert cell(app, runs / "sweep" / "beta-lr0.1", "status") == "failed"
        await wait_for(pilot, lambda: cell(app, runs / "alpha", "grad_spark"), "sparkline")
        text = screen_text(app)
        assert "sweep/beta-lr0.1" in text and "2 runs" in text
        assert all(len(line) <= size[0] for line in text.splitlines())

    run_app(runs, body, size)


def test_new_run_appears_and_a_new_step_updates_its_row(tmp_path: Path, trainer: Any) -> None:
    runs = tmp_path / "runs"
    live = runs / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 1, "the live run")
        assert cell(app, live, "status") == "running"
        make_run(runs / "later", 10).close()
        await wait_for(pilot, lambda: table(app).row_count == 2, "the new run", timeout=3)
        writer = RunWriter(live, resume=True)
        writer.append_steps(step_columns(50, 1, loss=123.4))
        latency = await wait_for(pilot, lambda: cell(app, live, "loss") == "123.4", "new step")
        writer.close()
        assert cell(app, live, "step") == "51/1000"
        assert latency < 0.5  # from the commit to the cell, at the default poll interval

    run_app(runs, body, poll_s=0.25)


def test_p_pauses_and_the_trainer_acknowledges(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 1, "the live run")
        await pilot.press("p")
        await wait_for(pilot, lambda: cell(app, live, "status") == "paused", "paused status")
        assert commands(live) == [("pause", None, None, "applied", "dashboard")]
        await wait_for(pilot, lambda: "applied" in screen_text(app), "the acknowledgement")
        await pilot.press("p")  # a paused run resumes
        await wait_for(pilot, lambda: cell(app, live, "status") == "running", "running again")
        assert [c[0] for c in commands(live)] == ["pause", "resume"]

    run_app(tmp_path / "runs", body)


def test_max_norm_dialog_validates_before_sending(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 1, "the live run")
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

    run_app(tmp_path / "runs", body)


def test_stop_asks_first(tmp_path: Path, trainer: Any) -> None:
    live = tmp_path / "runs" / "live"

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 1, "the live run")
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
        await wait_for(pilot, lambda: table(app).row_count == 1, "the run")
        await pilot.press("p")
        await wait_for(pilot, lambda: "takes no commands" in screen_text(app), "the refusal")

    run_app(runs, body)


@pytest.mark.parametrize("size", SIZES)
def test_run_view_shows_plots_params_events_config(tmp_path: Path,
                                                   size: tuple[int, int]) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "alpha", 400, spike_at=123, n_params=300).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 1, "the run")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen)
                       and app.screen.snapshot is not None, "the run view")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        await wait_for(pilot, lambda: "1000┤" in screen_text(app), "the spike's label")
        grad = screen.query_one("#grad", Plot)
        assert "max_norm" in str(grad.border_title) and len(grad._lines[0].band) > 0
        await pilot.press("2")
        await wait_for(pilot, lambda: "top 50 of 300 parameters" in screen_text(app), "params")
        await pilot.press("3")
        await wait_for(pilot, lambda: "checkpoint at step 200" in screen_text(app), "events")
        await pilot.press("4")
        await wait_for(pilot, lambda: 'kind = "mlp"' in screen_text(app), "the config")
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

    run_app(runs, body, size)


def test_filter_mark_and_compare(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("alpha", "beta", "gamma"):
        make_run(runs / name, 100).close()

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: table(app).row_count == 3, "three runs")
        await pilot.press("slash", "b", "e", "t")
        await wait_for(pilot, lambda: table(app).row_count == 1, "the filtered list")
        await pilot.press("escape")
        await wait_for(pilot, lambda: table(app).row_count == 3, "the whole list")
        await pilot.press("space", "space", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                       and len(app.screen.bands) == 2, "two runs compared")
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        assert "comparing  ━ beta  ━ gamma" in screen_text(app)  # the cursor stayed on beta
        await pilot.press("n")
        await wait_for(pilot, lambda: all("max_norm" in b for b in compare.bands.values()),
                       "the next metric")
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

    run_app(runs, body)
