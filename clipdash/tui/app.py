"""`clipdash watch`: the Textual App. It owns the reader (started on mount, stopped and joined on
unmount) and does the steering; screens get the reader handed in, subscribe to what they show,
and ask for navigation and steering with messages.

Never imports torch (a test checks): the dashboard must open in well under a second.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from clipdash.tui.feed import COMPARE, PROBLEMS, RUNS, STATUS, DataSource
from clipdash.tui.messages import (
    Back,
    CompareUpdated,
    ControlDone,
    ControlStatus,
    OpenCompare,
    OpenRun,
    ReaderProblem,
    RunRow,
    RunsUpdated,
    Steer,
)
from clipdash.tui.poller import POLL_S, Poller
from clipdash.tui.render import printable
from clipdash.tui.runlist import RunsScreen
from clipdash.tui.seen import SeenAlerts, default_path
from clipdash.tui.sparkcache import SparkCache

ACK_TIMEOUT_S = 15.0
# The run view, the compare view, the dialogs and the control API are imported when first
# used: the run list paints without them.


def compare_view(reader: DataSource, paths: list[str]) -> Screen[None]:
    """The compare screen (tui/compare.py), subscribed to the reader's compare feed."""
    from clipdash.tui.compare import CompareScreen

    class CompareView(CompareScreen):
        def on_compare_updated(self, msg: CompareUpdated) -> None:
            self.compare_updated(msg.bands)

        def on_unmount(self) -> None:
            reader.hub.unsubscribe(self)

        def action_back(self) -> None:  # the view is a mode of its own: nothing to pop
            self.post_message(Back())

    screen = CompareView(paths)
    reader.hub.forget(COMPARE)  # another compare's bands are not these runs'
    reader.hub.subscribe(screen, COMPARE)
    return screen


class WatchApp(App[int]):
    TITLE = "clipdash watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, runs_dir: str | Path, poll_s: float = POLL_S,
                 ack_timeout: float = ACK_TIMEOUT_S, *, reader: DataSource | None = None,
                 seen: SeenAlerts | None = None) -> None:
        """`reader`: the data source (default: a `Poller` on `runs_dir`); tests pass a fake.
        `seen`: the alerts the user has seen (default: in memory only; `main` passes the
        user's file, so no test writes to the real cache unless it asks to)."""
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.ack_timeout = ack_timeout
        self.reader: DataSource = reader if reader is not None else Poller(self.runs_dir, poll_s)
        self.seen = seen if seen is not None else SeenAlerts()
        self.add_mode("runs", lambda: RunsScreen(self.reader, self.runs_dir, self.seen))
        self._views = 0
        self._viewing: str | None = None  # the run whose view is open
        self._seen_warned = False

    @property
    def poller(self) -> DataSource:
        """The reader, by its older name (`tui/compare.py` asks for it)."""
        return self.reader

    # Each view is the only screen of its own mode (a stack of its own): Textual repaints the
    # whole screen on every change while another screen lies under the current one.
    DEFAULT_MODE = "runs"

    @property
    def rows(self) -> Mapping[str, RunRow]:
        """The latest row of every run (for steering), taken when needed: the App does not
        follow every update."""
        msg = self.reader.hub.latest(RUNS)
        return msg.rows if isinstance(msg, RunsUpdated) else {}

    def on_mount(self) -> None:
        self.reader.hub.subscribe(self, PROBLEMS)
        self.reader.start()

    def on_unmount(self) -> None:
        self.reader.stop()
        self.reader.join(timeout=5)

    def on_reader_problem(self, msg: ReaderProblem) -> None:
        self.notify(printable(msg.text), title="cannot read", severity="warning", timeout=8)

    # -- what screens ask for -------------------------------------------------------------

    def on_open_run(self, msg: OpenRun) -> None:
        from clipdash.tui.detail import DetailScreen

        self.see_alerts(msg.path)
        self._viewing = msg.path
        self._open_view(lambda: DetailScreen(self.reader, msg.path))

    def on_open_compare(self, msg: OpenCompare) -> None:
        self._viewing = None
        self._open_view(lambda: compare_view(self.reader, msg.paths))

    def _open_view(self, make: Callable[[], Screen[None]]) -> None:
        self._views += 1
        mode = f"view-{self._views}"
        self.add_mode(mode, make)
        self.switch_mode(mode)

    def on_back(self, msg: Back) -> None:
        """Esc in a run or compare view: back to the run list, and the view is dropped."""
        mode = self.current_mode
        if self._viewing is not None:  # alerts that came while the user watched: seen too
            self.see_alerts(self._viewing)
            self._viewing = None
        if mode != "runs":
            self.switch_mode("runs")
            self.remove_mode(mode)

    def on_steer(self, msg: Steer) -> None:
        if msg.action == "pause":
            self.toggle_pause(msg.path)
        elif msg.action == "set" and msg.key is not None:
            self.ask_setting(msg.path, msg.key)
        elif msg.action == "stop":
            self.ask_stop(msg.path)
        elif msg.action == "rewind":
            self.ask_rewind(msg.path)

    def see_alerts(self, path: str) -> None:
        """The user is looking at the run: its alerts so far are seen (and saved)."""
        row = self.rows.get(path)
        if row is not None and self.seen.mark(row):
            self._save_seen(list(self.rows.values()))

    @work(thread=True, group="seen", exit_on_error=False)
    def _save_seen(self, rows: list[RunRow]) -> None:
        try:
            self.seen.save(rows)
        except OSError as exc:  # kept in memory for this session; said once
            if not self._seen_warned:
                self._seen_warned = True
                self.call_from_thread(self.notify, f"seen alerts not saved: {exc}",
                                      severity="warning", timeout=6)

    def action_help(self) -> None:
        from clipdash.tui.dialogs import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- steering -------------------------------------------------------------------------

    def run_name(self, path: str) -> str:
        row = self.rows.get(path)
        return printable(row.name if row else Path(path).name)

    def toggle_pause(self, path: str) -> None:
        row = self.rows.get(path)
        self.steer(path, "resume" if row and row.status == "paused" else "pause")

    def ask_setting(self, path: str, key: str) -> None:
        from clipdash.tui.dialogs import SettingDialog

        row = self.rows.get(path)
        current = None if row is None else (row.max_norm if key == "max_norm" else row.lr)

        def done(value: float | None) -> None:
            if value is not None:
                self.steer(path, "set", key, value)

        self.push_screen(SettingDialog(key, self.run_name(path), current), done)

    def ask_stop(self, path: str) -> None:
        from clipdash.tui.dialogs import ConfirmDialog

        def done(yes: bool | None) -> None:
            if yes:
                self.steer(path, "stop")

        self.push_screen(ConfirmDialog(
            f"Stop run {self.run_name(path)}? It checkpoints and ends at its next step."), done)

    def ask_rewind(self, path: str) -> None:
        from clipdash.tui.dialogs import ConfirmDialog

        def done(yes: bool | None) -> None:
            if yes:
                self.steer(path, "rewind")

        self.push_screen(ConfirmDialog(
            f"Rewind run {self.run_name(path)} to its checkpoint before the latest alert? "
            "The steps after it are replaced."), done)

    def steer(self, path: str, action: str, key: str | None = None,
              value: float | None = None) -> None:
        what = f"{key}={value:g}" if key is not None and value is not None else action
        self.show_control_status(Text.assemble((f"{what} → {self.run_name(path)}", "bold"),
                                               ": waiting for the trainer…"))
        self._send(path, action, key, value, what)

    @work(thread=True, exclusive=True, exit_on_error=False, group="control")
    def _send(self, path: str, action: str, key: str | None, value: float | None,
              what: str) -> None:
        from clipdash import control

        try:
            res = control.send(path, action, key, value, source="dashboard",
                               timeout=self.ack_timeout)
        except control.ControlError as exc:
            self.post_message(ControlDone(path, what, False, str(exc)))
        except (sqlite3.Error, OSError) as exc:  # the store itself: locked, gone, read-only
            self.post_message(ControlDone(path, what, False, f"{type(exc).__name__}: {exc}"))
        else:
            step = "" if res.step is None else f" at step {res.step}"
            self.post_message(ControlDone(path, what, True,
                                          f"applied{step}: {res.message or 'ok'}"))

    def on_control_done(self, msg: ControlDone) -> None:
        name = self.run_name(msg.path)
        style = "green" if msg.ok else "bold red"
        self.show_control_status(Text.assemble((f"{msg.what} → {name}: ", "bold"),
                                               (printable(msg.text), style)))
        if not msg.ok:  # an acknowledgement is in the status line; a failure also pops up
            self.notify(f"{msg.what} → {name}: {printable(msg.text)}", severity="error",
                        timeout=6)
        self.reader.wake()

    def show_control_status(self, text: Text) -> None:
        self.reader.hub.publish(STATUS, lambda: ControlStatus(text))


def main(runs_dir: str | Path) -> int:
    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        print(f"clipdash watch: {path} is not a directory of runs", file=sys.stderr)
        return 2
    app = WatchApp(path, reader=Poller(path, cache=SparkCache()),
                   seen=SeenAlerts(default_path()))
    app.run()
    return app.return_code or 0
