"""Seen and unseen alerts in the run list (issue #12): `!N` bold red until the user opens the
run's view, dim after that (also in the next dashboard session) until a new alert comes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.style import Style
from textual.pilot import Pilot
from tui_fixtures import FakeReader, make_run

from clipdash.tui.app import WatchApp
from clipdash.tui.detail import DetailScreen
from clipdash.tui.messages import RunRow
from clipdash.tui.runlist import RunsScreen
from clipdash.tui.runtable import RunTable
from clipdash.tui.seen import SeenAlerts, default_path

STARTED = 1_700_000_000.0
Body = Callable[[WatchApp, Pilot[Any]], Awaitable[None]]


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test here has its own cache directory: none touches the real ~/.cache."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def run_app(app: WatchApp, body: Body) -> None:
    async def main() -> None:
        async with app.run_test(size=(100, 20)) as pilot:
            await body(app, pilot)

    asyncio.run(main())


async def wait_for(pilot: Pilot[Any], cond: Callable[[], object], what: str,
                   timeout: float = 5.0) -> None:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def alert_mark(app: WatchApp) -> tuple[str, Style] | None:
    """The `!N` of the first run line as the table draws it, with its style."""
    if not isinstance(app.screen, RunsScreen):
        return None
    strip = app.screen.query_one(RunTable).render_line(1)
    for seg in strip:
        if seg.text.strip().startswith("!"):
            return seg.text.strip(), seg.style or Style()
    return None


def shown(app: WatchApp, text: str, how: str) -> bool:
    mark = alert_mark(app)
    if mark is None or mark[0] != text:
        return False
    style = mark[1]
    if how == "unseen":
        return bool(style.bold) and style.color is not None and style.color.name == "red"
    return bool(style.dim) and not (style.color is not None and style.color.name == "red")


def row(run_dir: Path, alerts: int, started: float = STARTED) -> RunRow:
    return RunRow(str(run_dir), run_dir.name, "running", step=10, total=100, started=started,
                  alerts=alerts)


async def open_and_back(app: WatchApp, pilot: Pilot[Any]) -> None:
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the run view")
    await pilot.press("escape")
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the run list")


def test_the_default_file_is_under_xdg_cache_home(cache_home: Path) -> None:
    assert default_path() == cache_home / "clipdash" / "seen.json"


def test_an_alert_from_the_store_is_unseen_then_seen_after_the_run_view(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    writer = make_run(runs / "spiky", 100)
    writer.add_event(40, "alert", "grad norm spike at step 40")
    writer.close()
    app = WatchApp(runs, poll_s=0.04, seen=SeenAlerts(default_path()))

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: shown(app, "!1", "unseen"), "!1 in bold red")
        await open_and_back(app, pilot)
        await wait_for(pilot, lambda: shown(app, "!1", "seen"), "!1 dim")

    run_app(app, body)
    saved = json.loads(default_path().read_text())
    (entry,) = saved["runs"].values()
    assert entry["seen"] == 1


def test_seen_survives_a_restart_and_a_new_alert_is_unseen_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    fake = FakeReader([row(run_dir, 1)])

    async def first(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: shown(app, "!1", "unseen"), "!1 in bold red")
        await open_and_back(app, pilot)
        await wait_for(pilot, lambda: shown(app, "!1", "seen"), "!1 dim")
        await wait_for(pilot, default_path().exists, "the file written")

    run_app(WatchApp(tmp_path, reader=fake, seen=SeenAlerts(default_path())), first)

    again = FakeReader([row(run_dir, 1)])

    async def second(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: shown(app, "!1", "seen"), "!1 still dim")
        again.push(row(run_dir, 2))
        await wait_for(pilot, lambda: shown(app, "!2", "unseen"), "!2 in bold red")

    run_app(WatchApp(tmp_path, reader=again, seen=SeenAlerts(default_path())), second)


def test_a_run_recreated_in_the_same_directory_starts_unseen(tmp_path: Path) -> None:
    run_dir = tmp_path / "a"
    run_dir.mkdir()
    seen = SeenAlerts(default_path())
    assert seen.mark(row(run_dir, 3)) and not seen.mark(row(run_dir, 3))
    seen.save([row(run_dir, 3)])
    reloaded = SeenAlerts(default_path())
    assert not reloaded.unseen(row(run_dir, 3))
    assert reloaded.unseen(row(run_dir, 1, started=STARTED + 5))  # same place, another run


def test_the_file_keeps_only_runs_that_still_exist(tmp_path: Path) -> None:
    kept, gone, other = tmp_path / "kept", tmp_path / "gone", tmp_path / "other"
    for d in (kept, gone, other):
        d.mkdir()
    seen = SeenAlerts(default_path())
    for d in (kept, gone, other):
        seen.mark(row(d, 1))
    gone.rmdir()
    # `other` is listed re-created (a new start time): its old entry goes too.
    seen.save([row(kept, 1), row(other, 0, started=STARTED + 1)])
    saved = json.loads(default_path().read_text())["runs"]
    assert set(saved) == {str(kept.resolve())}
    assert not list(default_path().parent.glob(".seen.*"))  # no temporary file left


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "runs": [1, 2]}',
                                     '{"version": 1, "runs": {"/x": {"seen": "two"}}}', "null"])
def test_a_damaged_file_counts_as_nothing_seen_and_is_rewritten(tmp_path: Path,
                                                                 content: str) -> None:
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    default_path().parent.mkdir(parents=True)
    default_path().write_text(content)
    fake = FakeReader([row(run_dir, 1)])

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: shown(app, "!1", "unseen"), "!1 in bold red")
        await open_and_back(app, pilot)
        await wait_for(pilot, lambda: shown(app, "!1", "seen"), "!1 dim")
        await wait_for(pilot, lambda: default_path().read_text() != content, "the rewrite")

    run_app(WatchApp(tmp_path, reader=fake, seen=SeenAlerts(default_path())), body)
    assert json.loads(default_path().read_text())["runs"][str(run_dir.resolve())]["seen"] == 1


def test_an_unwritable_file_warns_once_and_seen_stays_in_memory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the file's folder would have to be under a plain file
    fake = FakeReader([row(run_dir, 1)])
    notes: list[str] = []

    async def body(app: WatchApp, pilot: Pilot[Any]) -> None:
        original = app.notify

        def notify(message: str, **kw: Any) -> None:
            notes.append(message)
            original(message, **kw)

        app.notify = notify  # type: ignore[method-assign]
        await wait_for(pilot, lambda: shown(app, "!1", "unseen"), "!1 in bold red")
        await open_and_back(app, pilot)
        await wait_for(pilot, lambda: shown(app, "!1", "seen"), "!1 dim")
        await wait_for(pilot, lambda: notes, "the warning")
        fake.push(row(run_dir, 2))
        await wait_for(pilot, lambda: shown(app, "!2", "unseen"), "!2 in bold red")
        await open_and_back(app, pilot)
        await wait_for(pilot, lambda: shown(app, "!2", "seen"), "!2 dim")
        await pilot.pause(0.2)

    run_app(WatchApp(tmp_path, reader=fake, seen=SeenAlerts(blocker / "seen.json")), body)
    assert len(notes) == 1 and "not saved" in notes[0]
