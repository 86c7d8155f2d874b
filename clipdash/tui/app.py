"""`clipdash watch`: the Textual App that owns the reader thread and steers runs.

Never imports torch (a test checks): the dashboard must open in well under a second.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from clipdash import control
from clipdash.tui.compare import CompareScreen
from clipdash.tui.detail import DetailScreen
from clipdash.tui.dialogs import ConfirmDialog, HelpScreen, SettingDialog
from clipdash.tui.messages import (
    CompareUpdated,
    ControlDone,
    DetailUpdated,
    ReaderProblem,
    RunRow,
    RunsUpdated,
)
from clipdash.tui.poller import POLL_S, Poller
from clipdash.tui.runlist import RunsScreen

ACK_TIMEOUT_S = 15.0


class WatchApp(App[int]):
    TITLE = "clipdash watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, runs_dir: str | Path, poll_s: float = POLL_S,
                 ack_timeout: float = ACK_TIMEOUT_S) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.poll_s = poll_s
        self.ack_timeout = ack_timeout
        self.rows: dict[str, RunRow] = {}
        self.marks: set[str] = set()
        self.poller: Poller | None = None
        self.last_control: Text | None = None

    def get_default_screen(self) -> Screen[None]:
        return RunsScreen()

    def on_mount(self) -> None:
        self.poller = Poller(self.post_message, self.runs_dir, self.poll_s)
        self.poller.start()

    def on_unmount(self) -> None:
        if self.poller is not None:
            self.poller.stop()
            self.poller.join(timeout=5)

    # -- data from the reader -------------------------------------------------------------

    def on_runs_updated(self, msg: RunsUpdated) -> None:
        for path in msg.removed:
            self.rows.pop(path, None)
            self.marks.discard(path)
        for row in msg.rows:
            self.rows[row.path] = row
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen | DetailScreen) and screen.is_mounted:
                screen.runs_updated(msg.rows, msg.removed)

    def on_detail_updated(self, msg: DetailUpdated) -> None:
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.path == msg.snapshot.path:
            screen.detail_updated(msg.snapshot)
        else:  # the run view under a dialog
            for s in self.screen_stack:
                if isinstance(s, DetailScreen) and s.path == msg.snapshot.path:
                    s.detail_updated(msg.snapshot)

    def on_compare_updated(self, msg: CompareUpdated) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, CompareScreen):
                screen.compare_updated(msg.bands)

    def on_reader_problem(self, msg: ReaderProblem) -> None:
        self.notify(msg.text, title="cannot read", severity="warning", timeout=8)

    # -- navigation -----------------------------------------------------------------------

    def open_detail(self, path: str) -> None:
        self.push_screen(DetailScreen(path))

    def open_compare(self, paths: list[str]) -> None:
        self.push_screen(CompareScreen(paths))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- steering -------------------------------------------------------------------------

    def run_name(self, path: str) -> str:
        row = self.rows.get(path)
        return row.name if row else Path(path).name

    def toggle_pause(self, path: str) -> None:
        row = self.rows.get(path)
        self.steer(path, "resume" if row and row.status == "paused" else "pause")

    def ask_setting(self, path: str, key: str) -> None:
        row = self.rows.get(path)
        current = None if row is None else (row.max_norm if key == "max_norm" else row.lr)

        def done(value: float | None) -> None:
            if value is not None:
                self.steer(path, "set", key, value)

        self.push_screen(SettingDialog(key, self.run_name(path), current), done)

    def ask_stop(self, path: str) -> None:
        def done(yes: bool | None) -> None:
            if yes:
                self.steer(path, "stop")

        self.push_screen(ConfirmDialog(
            f"Stop run {self.run_name(path)}? It checkpoints and ends at its next step."), done)

    def ask_rewind(self, path: str) -> None:
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
        try:
            res = control.send(path, action, key, value, source="dashboard",
                               timeout=self.ack_timeout)
        except control.ControlError as exc:
            self.post_message(ControlDone(path, what, False, str(exc)))
        except (sqlite3.Error, OSError) as exc:  # the store itself: locked, gone, unreadable
            self.post_message(ControlDone(path, what, False, f"{type(exc).__name__}: {exc}"))
        else:
            step = "" if res.step is None else f" at step {res.step}"
            self.post_message(ControlDone(path, what, True,
                                          f"applied{step}: {res.message or 'ok'}"))

    def on_control_done(self, msg: ControlDone) -> None:
        name = self.run_name(msg.path)
        style = "green" if msg.ok else "bold red"
        self.show_control_status(Text.assemble((f"{msg.what} → {name}: ", "bold"),
                                               (msg.text, style)))
        if not msg.ok:  # an acknowledgement is in the status line; a failure also pops up
            self.notify(f"{msg.what} → {name}: {msg.text}", severity="error", timeout=6)
        if self.poller is not None:
            self.poller.wake()

    def show_control_status(self, text: Text) -> None:
        self.last_control = text
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen | DetailScreen) and screen.is_mounted:
                screen.show_status(text)


def main(runs_dir: str | Path) -> int:
    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        print(f"clipdash watch: {path} is not a directory of runs", file=sys.stderr)
        return 2
    app = WatchApp(path)
    app.run()
    return app.return_code or 0
