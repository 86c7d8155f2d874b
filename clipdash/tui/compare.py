"""The compare view: the same columns of several runs overlaid, one colour per run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from clipdash.tui.buckets import Band
from clipdash.tui.columns import COMPARE_SECOND, COMPARE_TITLES, COMPARE_TOP
from clipdash.tui.render import Line
from clipdash.tui.widgets import Plot

if TYPE_CHECKING:
    from clipdash.tui.app import WatchApp

PALETTE = ("cyan", "magenta", "yellow", "green", "bright_blue", "red", "bright_cyan",
           "bright_magenta")


class CompareScreen(Screen[None]):
    DEFAULT_CSS = """
    CompareScreen #legend { height: auto; max-height: 3; padding: 0 1; background: $panel; }
    """
    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("n", "next_metric", "next metric"),
        Binding("y", "log", "y scale"),
    ]

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths
        self.second = 0
        self.bands: dict[str, dict[str, Band]] = {}
        self.log_modes: tuple[bool | None, ...] = (None, True, False)
        self.log_mode = 0

    @property
    def wapp(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(self._legend(), id="legend")
        yield Plot(COMPARE_TITLES[COMPARE_TOP], id="top")
        yield Plot(COMPARE_TITLES[COMPARE_SECOND[0]], id="bottom")
        yield Footer()

    def on_mount(self) -> None:
        self.call_after_refresh(self._request)

    def on_unmount(self) -> None:
        if self.wapp.poller is not None:
            self.wapp.poller.show_compare(None)

    def _legend(self) -> Text:
        text = Text("comparing  ", style="bold")
        for i, path in enumerate(self.paths):
            row = self.wapp.rows.get(path)
            name = row.name if row else path
            text.append(f"━ {name}  ", style=PALETTE[i % len(PALETTE)])
        return text

    def _request(self) -> None:
        if self.wapp.poller is None:
            return
        cap = max(64, 2 * max(p.dots for p in self.query(Plot)))
        self.wapp.poller.show_compare(self.paths, (COMPARE_TOP, COMPARE_SECOND[self.second]),
                                      cap)

    def compare_updated(self, bands: dict[str, dict[str, Band]]) -> None:
        self.bands = bands
        self._draw()

    def _draw(self) -> None:
        second = COMPARE_SECOND[self.second]
        for plot_id, column in (("top", COMPARE_TOP), ("bottom", second)):
            lines = [Line(self.bands[p][column], PALETTE[i % len(PALETTE)])
                     for i, p in enumerate(self.paths)
                     if p in self.bands and column in self.bands[p]]
            plot = self.query_one(f"#{plot_id}", Plot)
            plot.title = COMPARE_TITLES[column]
            plot.set_data(lines)
            plot.border_title = COMPARE_TITLES[column]

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_next_metric(self) -> None:
        self.second = (self.second + 1) % len(COMPARE_SECOND)
        title = COMPARE_TITLES[COMPARE_SECOND[self.second]]
        self.query_one("#bottom", Plot).border_title = title
        self._request()

    def action_log(self) -> None:
        self.log_mode = (self.log_mode + 1) % len(self.log_modes)
        for plot in self.query(Plot):
            plot.set_log(self.log_modes[self.log_mode])
