"""The run view: plots, per-parameter norms, the event log and the config of one run."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, RichLog, Static, TabbedContent, TabPane

from clipdash.tui.buckets import Band
from clipdash.tui.columns import DETAIL_PLOTS
from clipdash.tui.feed import STATUS, DataSource
from clipdash.tui.messages import (
    Back,
    ControlStatus,
    DetailSnapshot,
    DetailUpdated,
    ParamPanel,
    RunRow,
    RunsUpdated,
    Steer,
)
from clipdash.tui.render import Line, printable
from clipdash.tui.widgets import (
    STEER_BINDINGS,
    Plot,
    TextLine,
    event_mark,
    event_marker,
    param_table,
    run_headline,
)

TABS = ("plots", "params", "events", "config")
HEAD_EVERY_S = 0.5
LOG_MODES: tuple[bool | None, ...] = (None, True, False)


def plot_lines(snap: DetailSnapshot) -> dict[str, list[Line]]:
    """What each plot of the run view draws, from a snapshot (and the validation loss, where
    the run has one, over the training loss)."""
    b, ev = snap.bands, snap.evals
    empty = Band.empty()
    out = {key: [Line(b.get(s.column, empty), s.style, s.label) for s in series]
           for key, (_, series) in DETAIL_PLOTS.items()}
    if "loss" in ev:
        out["loss"].append(Line(ev["loss"], "bold magenta", "val", points=True))
    return out


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

    def __init__(self, reader: DataSource, path: str) -> None:
        super().__init__()
        self.reader = reader
        self.path = path
        self.snapshot: DetailSnapshot | None = None
        self.params: ParamPanel | None = None
        self.requested_cap = 0
        self.log_mode = 0
        self.last_event = 0
        self.config = ""
        self._params_text: Text | None = None
        self._head_row: RunRow | None = None
        self._head_shown: RunRow | None = None
        self._head_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield TextLine(run_headline(None, self.path), id="head")
        with TabbedContent(initial="plots"):
            with TabPane("plots", id="plots"), Grid(id="grid"):
                for key, (title, _) in DETAIL_PLOTS.items():
                    yield Plot(title, id=key)
            with TabPane("params", id="params"), VerticalScroll():
                yield Static("reading…", id="param-text")
            with TabPane("events", id="events"):
                yield RichLog(id="event-log", max_lines=2000, wrap=False, markup=False)
            with TabPane("config", id="config"), VerticalScroll():
                yield Static("reading…", id="config-text", markup=False)
        yield TextLine("", classes="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.reader.watch_runs(self)  # for the headline
        self.reader.hub.subscribe(self, STATUS)
        self.call_after_refresh(self._request)

    def on_resize(self) -> None:
        self.call_after_refresh(self._request)
        if self.params is not None:
            self.call_after_refresh(self._draw_params)

    def on_unmount(self) -> None:
        self.reader.unwatch(self)

    def _request(self) -> None:
        """Ask the reader for buckets at (twice) the resolution of the widest plot."""
        dots = max((p.dots for p in self.query(Plot)), default=0)
        cap = max(64, 2 * dots)
        if abs(cap - self.requested_cap) > self.requested_cap // 4:
            self.requested_cap = cap
            self.reader.watch_detail(self, self.path, cap)

    # -- data in --------------------------------------------------------------------------

    def on_runs_updated(self, msg: RunsUpdated) -> None:
        """The headline follows at HEAD_EVERY_S: while a screen sits on the run list, Textual
        repaints the whole screen for any change, so this view changes twice a second."""
        row = msg.rows.get(self.path)
        if row is not None and row != self._head_row:
            self._head_row = row
            if self._head_timer is None:
                self._draw_head()
                self._head_timer = self.set_timer(HEAD_EVERY_S, self._head_due)

    def _head_due(self) -> None:
        self._head_timer = None
        if self._head_row is not self._head_shown:
            self._draw_head()
            self._head_timer = self.set_timer(HEAD_EVERY_S, self._head_due)

    def _draw_head(self) -> None:
        self._head_shown = self._head_row
        self.query_one("#head", TextLine).update(run_headline(self._head_row, self.path))

    def on_control_status(self, msg: ControlStatus) -> None:
        self.show_status(msg.text)

    def on_detail_updated(self, msg: DetailUpdated) -> None:
        snap = msg.snapshot
        self.snapshot = snap
        markers = [event_marker(step, kind) for step, kind in snap.markers]
        nonfinite = snap.bands.get("finite")
        for key, lines in plot_lines(snap).items():
            self.query_one(f"#{key}", Plot).set_data(
                lines, markers, nonfinite if key in ("grad", "loss") else None)
        log = self.query_one("#event-log", RichLog)
        if snap.events and snap.events[-1]["id"] < self.last_event:
            log.clear()  # the run was rewound or replaced
            self.last_event = 0
        for ev in snap.events:
            if ev["id"] <= self.last_event:
                continue
            self.last_event = ev["id"]
            mark = event_mark(ev["kind"])
            step = "-" if ev["step"] is None else str(ev["step"])
            log.write(Text.assemble((f"{mark.char} ", mark.style), (f"{step:>8}  ", "dim"),
                                    (f"{ev['kind']:<11}", mark.style), printable(ev["message"])))
        if snap.params is not None and snap.params is not self.params:
            self.params = snap.params
            self._draw_params()
        if snap.config and snap.config != self.config:
            self.config = snap.config
            self.query_one("#config-text", Static).update(snap.config)

    def _draw_params(self) -> None:
        """Only while its tab shows: a Static update relayouts the screen (~50 ms with the
        plots), which a live run's once-a-second panel must not cost behind the plots tab."""
        if self.query_one(TabbedContent).active != "params":
            return
        static = self.query_one("#param-text", Static)
        width = static.content_size.width or self.size.width - 2
        text = param_table(self.params, width)
        if text != self._params_text:
            self._params_text = text
            static.update(text)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "params":
            self.call_after_refresh(self._draw_params)

    def show_status(self, text: Text | str) -> None:
        self.query_one(".status", TextLine).update(text)

    # -- actions --------------------------------------------------------------------------

    def action_back(self) -> None:
        self.post_message(Back())

    def action_pause(self) -> None:
        self.post_message(Steer(self.path, "pause"))

    def action_set(self, key: str) -> None:
        self.post_message(Steer(self.path, "set", key))

    def action_stop(self) -> None:
        self.post_message(Steer(self.path, "stop"))

    def action_rewind(self) -> None:
        self.post_message(Steer(self.path, "rewind"))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_log(self) -> None:
        self.log_mode = (self.log_mode + 1) % len(LOG_MODES)
        mode = LOG_MODES[self.log_mode]
        for plot in self.query(Plot):
            plot.set_log(mode)
        self.notify(f"y scale: {'auto' if mode is None else 'log' if mode else 'linear'}")
