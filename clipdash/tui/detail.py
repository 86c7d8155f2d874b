"""The run view: plots, per-parameter norms, the event log and the config of one run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static, TabbedContent, TabPane

from clipdash.tui.buckets import Band
from clipdash.tui.messages import DetailSnapshot, ParamPanel, RunRow
from clipdash.tui.render import Line
from clipdash.tui.widgets import (
    EVENT_STYLES,
    STEER_BINDINGS,
    Plot,
    event_marker,
    param_table,
    run_headline,
)

if TYPE_CHECKING:
    from clipdash.tui.app import WatchApp

TABS = ("plots", "params", "events", "config")
LOG_MODES: tuple[bool | None, ...] = (None, True, False)


def plot_lines(snap: DetailSnapshot) -> dict[str, list[Line]]:
    """What each plot of the run view draws, from a snapshot."""
    b, ev = snap.bands, snap.evals
    empty = Band.empty()
    return {
        "loss": [Line(b.get("loss", empty), "cyan", "train"),
                 *([Line(ev["loss"], "bold magenta", "val", points=True)] if "loss" in ev else [])],
        "grad": [Line(b.get("grad_norm_pre", empty), "yellow", "pre"),
                 Line(b.get("grad_norm_post", empty), "cyan", "post"),
                 Line(b.get("max_norm", empty), "red", "max_norm")],
        "lr": [Line(b.get("lr", empty), "green", "group 0")],
        "coef": [Line(b.get("clip_coef", empty), "bright_blue", "post/pre")],
    }


class DetailScreen(Screen[None]):
    DEFAULT_CSS = """
    DetailScreen #head { height: 1; padding: 0 1; background: $panel; }
    DetailScreen #grid { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    DetailScreen TabbedContent { height: 1fr; }
    DetailScreen TabPane { padding: 0; }
    DetailScreen ContentSwitcher { height: 1fr; }
    DetailScreen .status { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape", "back", "back"),
        *STEER_BINDINGS,
        Binding("y", "log", "y scale"),
        *(Binding(str(i + 1), f"tab('{t}')", t, show=False) for i, t in enumerate(TABS)),
    ]

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.snapshot: DetailSnapshot | None = None
        self.params: ParamPanel | None = None
        self.requested_cap = 0
        self.log_mode = 0

    @property
    def wapp(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(run_headline(self.wapp.rows.get(self.path), self.path), id="head")
        with TabbedContent(initial="plots"):
            with TabPane("plots", id="plots"), Grid(id="grid"):
                yield Plot("loss", id="loss")
                yield Plot("grad norm", id="grad")
                yield Plot("learning rate", id="lr")
                yield Plot("clip coef", id="coef")
            with TabPane("params", id="params"), VerticalScroll():
                yield Static("reading…", id="param-text")
            with TabPane("events", id="events"):
                yield RichLog(id="event-log", max_lines=2000, wrap=False, markup=False)
            with TabPane("config", id="config"), VerticalScroll():
                yield Static("reading…", id="config-text", markup=False)
        yield Static("", classes="status")
        yield Footer()

    def on_mount(self) -> None:
        if self.wapp.last_control is not None:
            self.show_status(self.wapp.last_control)
        self.call_after_refresh(self._request)

    def on_resize(self) -> None:
        self.call_after_refresh(self._request)
        if self.params is not None:
            self.call_after_refresh(self._draw_params)

    def on_unmount(self) -> None:
        if self.wapp.poller is not None:
            self.wapp.poller.show_detail(None)

    def _request(self) -> None:
        """Ask the reader for buckets at (twice) the resolution of the widest plot."""
        dots = max((p.dots for p in self.query(Plot)), default=0)
        cap = max(64, 2 * dots)
        if abs(cap - self.requested_cap) > self.requested_cap // 4 and self.wapp.poller:
            self.requested_cap = cap
            self.wapp.poller.show_detail(self.path, cap)

    # -- data in --------------------------------------------------------------------------

    def runs_updated(self, rows: tuple[RunRow, ...], removed: tuple[str, ...]) -> None:
        for row in rows:
            if row.path == self.path:
                self.query_one("#head", Static).update(run_headline(row, self.path))

    def detail_updated(self, snap: DetailSnapshot) -> None:
        self.snapshot = snap
        markers = [event_marker(step, kind) for step, kind in snap.markers]
        for key, lines in plot_lines(snap).items():
            self.query_one(f"#{key}", Plot).set_data(lines, markers)
        if snap.first:
            self.query_one("#event-log", RichLog).clear()
        log = self.query_one("#event-log", RichLog)
        for ev in snap.new_events:
            char, style = EVENT_STYLES.get(ev["kind"], ("•", "dim"))
            step = "-" if ev["step"] is None else str(ev["step"])
            log.write(Text.assemble((f"{char} ", style), (f"{step:>8}  ", "dim"),
                                    (f"{ev['kind']:<11}", style), ev["message"]))
        if snap.params is not None:
            self.params = snap.params
            self._draw_params()
        if snap.config is not None:
            self.query_one("#config-text", Static).update(snap.config)

    def _draw_params(self) -> None:
        static = self.query_one("#param-text", Static)
        width = static.content_size.width or self.size.width - 2  # 0 while its tab is hidden
        static.update(param_table(self.params, width))

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "params":
            self.call_after_refresh(self._draw_params)

    def show_status(self, text: Text | str) -> None:
        self.query_one(".status", Static).update(text)

    # -- actions --------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_pause(self) -> None:
        self.wapp.toggle_pause(self.path)

    def action_set(self, key: str) -> None:
        self.wapp.ask_setting(self.path, key)

    def action_stop(self) -> None:
        self.wapp.ask_stop(self.path)

    def action_rewind(self) -> None:
        self.wapp.ask_rewind(self.path)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_log(self) -> None:
        self.log_mode = (self.log_mode + 1) % len(LOG_MODES)
        mode = LOG_MODES[self.log_mode]
        for plot in self.query(Plot):
            plot.set_log(mode)
        self.notify(f"y scale: {'auto' if mode is None else 'log' if mode else 'linear'}")
