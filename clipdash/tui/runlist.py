"""The main screen: a table of every run with live columns, a filter, and marks for comparing."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import RowDoesNotExist

from clipdash.tui.messages import RunRow
from clipdash.tui.widgets import RUN_COLUMNS, STEER_BINDINGS, row_cells

if TYPE_CHECKING:
    from clipdash.tui.app import WatchApp


def matches(row: RunRow, needle: str) -> bool:
    needle = needle.strip().lower()
    return not needle or needle in row.name.lower() or needle == row.status


class RunTable(DataTable[Text]):
    """Rows keyed by run path; only cells whose text changed are updated."""

    def __init__(self) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id="runs")
        self.shown: dict[str, tuple[Text, ...]] = {}

    def on_mount(self) -> None:
        for key, label, width in RUN_COLUMNS:
            self.add_column(label, key=key, width=width)

    def put(self, row: RunRow, marked: bool) -> None:
        cells = row_cells(row, marked)
        old = self.shown.get(row.path)
        if old is None:
            self.add_row(*cells, key=row.path)
        else:
            for (key, _, width), new, prev in zip(RUN_COLUMNS, cells, old, strict=True):
                if new != prev:
                    self.update_cell(row.path, key, new, update_width=width is None)
        self.shown[row.path] = cells

    def drop(self, path: str) -> None:
        if self.shown.pop(path, None) is not None:
            with contextlib.suppress(RowDoesNotExist):
                self.remove_row(path)

    def selected_path(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # no such cell (an empty table mid-rebuild)
            return None
        return key.value

    def visible_paths(self) -> list[str]:
        """Keys of the rows inside the viewport (and a few beyond it)."""
        first = max(0, int(self.scroll_y) - 4)
        rows = self.ordered_rows[first:first + max(1, self.size.height) + 8]
        return [str(r.key.value) for r in rows]

    def rebuild(self, rows: list[RunRow], marks: set[str]) -> None:
        keep = self.selected_path()
        self.clear()
        self.shown.clear()
        for row in rows:
            self.put(row, row.path in marks)
        if keep in self.shown:
            self.move_cursor(row=self.get_row_index(keep))


class RunsScreen(Screen[None]):
    DEFAULT_CSS = """
    RunsScreen #title { height: 1; padding: 0 1; background: $panel; }
    RunsScreen #runs { height: 1fr; }
    RunsScreen #filter { display: none; }
    RunsScreen #filter.shown { display: block; }
    RunsScreen .status { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        *STEER_BINDINGS,
        Binding("space", "mark", "mark"),
        Binding("c", "compare", "compare"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.needle = ""
        self._visible: list[str] | None = None
        self._shown: dict[str, Text] = {}  # what the title and status lines show now

    @property
    def wapp(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield RunTable()
        yield Input(placeholder="filter runs by name or status (Enter: keep, Esc: clear)",
                    id="filter")
        yield Static("", classes="status")
        yield Footer()

    def on_mount(self) -> None:
        self.rebuild()
        table = self.query_one(RunTable)
        table.focus()
        self.watch(table, "scroll_y", self.report_visible, init=False)

    def on_resize(self) -> None:
        self.call_after_refresh(self.report_visible)

    def report_visible(self, *_: object) -> None:
        """Tell the reader which rows are on screen: their sparklines are read first (only)."""
        paths = self.query_one(RunTable).visible_paths()
        if paths != self._visible and self.wapp.poller is not None:
            self._visible = paths
            self.wapp.poller.set_visible(paths)

    # -- data in --------------------------------------------------------------------------

    def runs_updated(self, rows: tuple[RunRow, ...], removed: tuple[str, ...]) -> None:
        table = self.query_one(RunTable)
        marks = self.wapp.marks
        for path in removed:
            table.drop(path)
        added = False
        for row in rows:
            if matches(row, self.needle):
                added |= row.path not in table.shown
                table.put(row, row.path in marks)
            else:
                table.drop(row.path)
        self.update_title()
        if added or removed:
            self.call_after_refresh(self.report_visible)

    def rebuild(self) -> None:
        rows = [r for r in self.wapp.rows.values() if matches(r, self.needle)]
        self.query_one(RunTable).rebuild(rows, self.wapp.marks)
        self.update_title()
        self.call_after_refresh(self.report_visible)

    def update_title(self) -> None:
        rows = self.wapp.rows.values()
        live = sum(r.status in ("running", "paused") for r in rows)
        runs = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
        text = Text.assemble(("clipdash watch  ", "bold"), (runs, "bold"), f", {live} live")
        if self.needle:
            text.append(f"  filter: {self.needle!r} ({len(self.query_one(RunTable).shown)})",
                        style="yellow")
        if self.wapp.marks:
            text.append(f"  marked: {len(self.wapp.marks)}", style="cyan")
        text.append(f"  {self.wapp.runs_dir}", style="dim")
        if text != self._shown.get("title"):
            self._shown["title"] = text
            self.query_one("#title", Static).update(text)
        if self.wapp.last_control is None:  # the status line is free: say why it is empty
            self.show_status("" if rows else f"no runs in {self.wapp.runs_dir} yet: a run shows "
                             "up here as soon as it starts recording")

    def show_status(self, text: Text | str) -> None:
        text = Text(text) if isinstance(text, str) else text
        if text != self._shown.get("status"):
            self._shown["status"] = text
            self.query_one(".status", Static).update(text)

    # -- actions --------------------------------------------------------------------------

    def _selected(self) -> str | None:
        path = self.query_one(RunTable).selected_path()
        if path is None:
            self.notify("no run selected", severity="warning")
        return path

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.wapp.open_detail(event.row_key.value)

    def action_pause(self) -> None:
        if path := self._selected():
            self.wapp.toggle_pause(path)

    def action_set(self, key: str) -> None:
        if path := self._selected():
            self.wapp.ask_setting(path, key)

    def action_stop(self) -> None:
        if path := self._selected():
            self.wapp.ask_stop(path)

    def action_rewind(self) -> None:
        if path := self._selected():
            self.wapp.ask_rewind(path)

    def action_mark(self) -> None:
        path = self._selected()
        if path is None:
            return
        marks = self.wapp.marks
        marks.symmetric_difference_update({path})
        row = self.wapp.rows.get(path)
        if row is not None:
            self.query_one(RunTable).put(row, path in marks)
        self.update_title()
        table = self.query_one(RunTable)
        table.move_cursor(row=min(table.cursor_row + 1, table.row_count - 1))

    def action_compare(self) -> None:
        paths = [p for p in self.wapp.rows if p in self.wapp.marks]
        selected = self.query_one(RunTable).selected_path()
        if len(paths) < 2 and selected and selected not in paths:
            paths.append(selected)
        if len(paths) < 2:
            self.notify("mark two or more runs with space, then press c", severity="warning")
            return
        self.wapp.open_compare(paths)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.needle
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.needle = event.value
            self.rebuild()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not self.needle:
                event.input.remove_class("shown")
            self.query_one(RunTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("shown")
        if self.needle:
            self.needle = ""
            box.value = ""
            self.rebuild()
        self.query_one(RunTable).focus()
