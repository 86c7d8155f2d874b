"""The main screen: every run with live columns, a filter, and marks for comparing.

Data comes from the reader (subscribed on mount); what the user wants done goes up to the App
as messages (OpenRun, OpenCompare, Steer). Nothing here reaches into the App.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input

from clipdash.tui.feed import STATUS, DataSource
from clipdash.tui.messages import ControlStatus, OpenCompare, OpenRun, RunsUpdated, Steer
from clipdash.tui.runtable import RunTable
from clipdash.tui.seen import SeenAlerts
from clipdash.tui.widgets import STEER_BINDINGS, TextLine


class RunsScreen(Screen[None]):
    DEFAULT_CSS = """
    RunsScreen #title { height: 1; padding: 0 1; background: $panel; }
    RunsScreen #filter { display: none; }
    RunsScreen #filter.shown { display: block; }
    RunsScreen .status { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        *STEER_BINDINGS,
        Binding("space", "mark", "mark", key_display="␣"),
        Binding("c", "compare", "compare"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self, reader: DataSource, runs_dir: Path, seen: SeenAlerts | None = None) -> None:
        super().__init__()
        self.reader = reader
        self.runs_dir = runs_dir
        self.seen = seen
        self._visible: list[str] | None = None
        self._control: Text | None = None
        self._pending: RunsUpdated | None = None
        self._shown: dict[str, Text] = {}  # what the title and status lines show now

    def compose(self) -> ComposeResult:
        yield TextLine("", id="title")
        yield RunTable(self.seen)
        yield Input(placeholder="filter runs by name or status (Enter: keep, Esc: clear)",
                    id="filter")
        yield TextLine("", classes="status")
        yield Footer(compact=True)

    @property
    def table(self) -> RunTable:
        return self.query_one(RunTable)

    def on_mount(self) -> None:
        self.table.focus()
        self.watch(self.table, "scroll_y", self.report_visible, init=False)
        self.reader.watch_runs(self)
        self.reader.hub.subscribe(self, STATUS)
        self.update_title()

    def on_screen_resume(self) -> None:
        self.table.refresh()  # the run view just closed may have marked alerts seen
        if self._pending is not None:
            self.on_runs_updated(self._pending)

    def on_unmount(self) -> None:
        self.reader.unwatch(self)

    def on_resize(self) -> None:
        self.call_after_refresh(self.report_visible)

    def report_visible(self, *_: object) -> None:
        """Tell the reader which rows are on screen: their sparklines are read first (only)."""
        paths = self.table.visible_paths()
        if paths != self._visible:
            self._visible = paths
            self.reader.set_visible(paths)

    # -- data in --------------------------------------------------------------------------

    def on_runs_updated(self, msg: RunsUpdated) -> None:
        if not self.is_active:
            # Under the run view: drawing here would make Textual repaint the whole screen
            # on top. Keep the newest state and draw it when this screen shows again.
            self._pending = msg
            return
        self._pending = None
        table = self.table
        before = len(table.items)
        table.update_rows(msg.rows)
        self.update_title()
        if len(table.items) != before or self._visible is None:
            self.call_after_refresh(self.report_visible)

    def on_control_status(self, msg: ControlStatus) -> None:
        self._control = msg.text
        self.show_status(msg.text)

    def update_title(self) -> None:
        table = self.table
        rows = table.rows.values()
        live = sum(r.status in ("running", "paused") for r in rows)
        runs = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
        text = Text.assemble(("clipdash watch  ", "bold"), (runs, "bold"), f", {live} live")
        if table.needle:
            shown = sum(it.row is not None for it in table.items)
            text.append(f"  filter: {table.needle!r} ({shown})", style="yellow")
        if table.marks:
            text.append(f"  marked: {len(table.marks)}", style="cyan")
        text.append(f"  {self.runs_dir}", style="dim")
        if text != self._shown.get("title"):
            self._shown["title"] = text
            self.query_one("#title", TextLine).update(text)
        if self._control is None:  # the status line is free: say why it is empty
            self.show_status("" if rows else f"no runs in {self.runs_dir} yet: a run shows "
                             "up here as soon as it starts recording")

    def show_status(self, text: Text | str) -> None:
        text = Text(text) if isinstance(text, str) else text
        if text != self._shown.get("status"):
            self._shown["status"] = text
            self.query_one(".status", TextLine).update(text)

    # -- actions --------------------------------------------------------------------------

    def _selected(self) -> str | None:
        path = self.table.selected_path()
        if path is None:
            self.notify("no run selected", severity="warning")
        return path

    def on_run_table_chosen(self, event: RunTable.Chosen) -> None:
        self.post_message(OpenRun(event.path))

    def action_pause(self) -> None:
        if path := self._selected():
            self.post_message(Steer(path, "pause"))

    def action_set(self, key: str) -> None:
        if path := self._selected():
            self.post_message(Steer(path, "set", key))

    def action_stop(self) -> None:
        if path := self._selected():
            self.post_message(Steer(path, "stop"))

    def action_rewind(self) -> None:
        if path := self._selected():
            self.post_message(Steer(path, "rewind"))

    def action_mark(self) -> None:
        """Space marks (or unmarks) the run and moves to the next line, to mark several."""
        path = self._selected()
        if path is None:
            return
        table = self.table
        table.toggle_mark(path)
        self.update_title()
        table.move_to(table.cursor + 1)

    def action_compare(self) -> None:
        table = self.table
        paths = [it.key for it in table.items if it.key in table.marks]
        selected = table.selected_path()
        if len(paths) < 2 and selected and selected not in paths:
            paths.append(selected)
        if len(paths) < 2:
            self.notify("mark two or more runs with space, then press c", severity="warning")
            return
        self.post_message(OpenCompare(paths))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.table.needle
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.table.set_filter(event.value)
            self.update_title()
            self.call_after_refresh(self.report_visible)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not self.table.needle:
                event.input.remove_class("shown")
            self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("shown")
        if self.table.needle:
            box.value = ""
            self.table.set_filter("")
            self.update_title()
        self.table.focus()
