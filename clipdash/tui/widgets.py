"""Widgets: the braille Plot, and text builders for the run list and the parameter panel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.widget import Widget

from clipdash.tui.buckets import Band
from clipdash.tui.columns import STATUS_STYLES
from clipdash.tui.messages import ParamPanel, RunRow
from clipdash.tui.render import (
    GUTTER,
    Line,
    Marker,
    fmt_num,
    fmt_step,
    printable,
    render_plot,
    sparkline,
)


@dataclass(frozen=True)
class EventMark:
    """How an event of one kind is drawn (under the plots, in the events tab) and what it
    means (the help screen's legend is made from this table)."""

    char: str
    style: str
    meaning: str


EVENT_MARKS = {
    "control": EventMark("▲", "bold cyan", "a command applied"),
    "nonfinite": EventMark("✖", "bold red", "non-finite step (also the top row of a plot)"),
    "checkpoint": EventMark("◆", "green", "checkpoint"),
    "alert": EventMark("!", "bold red reverse", "spike alert"),
    "rewind": EventMark("↺", "bold magenta", "rewound to a checkpoint"),
}
OTHER_EVENT = EventMark("•", "dim", "any other event")


def elide(text: str, width: int, keep: str = "end") -> str:
    """`text` in at most `width` cells, cut in the middle (or at the start, keeping the end)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if keep == "end":
        return "…" + text[-(width - 1):]
    half = (width - 1) // 2
    return text[:half] + "…" + text[-(width - 1 - half):]


def event_mark(kind: str) -> EventMark:
    return EVENT_MARKS.get(kind, OTHER_EVENT)


def event_marker(step: int, kind: str) -> Marker:
    mark = event_mark(kind)
    return Marker(step, mark.char, mark.style)


def run_headline(row: RunRow | None, path: str) -> Text:
    """The one-line summary at the top of the run view."""
    if row is None:
        return Text(path, style="bold")
    clip = "-" if row.clip_rate is None else f"{row.clip_rate * 100:.0f}%"
    text = Text.assemble((printable(row.name), "bold"), "  ",
                         (row.status, STATUS_STYLES.get(row.status, "")))
    for label, value in (("step", fmt_step(row.step, row.total)), ("it/s", fmt_num(row.rate)),
                         ("loss", fmt_num(row.loss)), ("grad", fmt_num(row.grad_norm)),
                         ("max_norm", fmt_num(row.max_norm)), ("clip", clip),
                         ("lr", fmt_num(row.lr))):
        text.append(f"  {label} ", style="dim")
        text.append(value)
    if row.read_only:
        text.append("  read-only", style="yellow")
    if row.message and row.status in ("failed", "stopped", "error"):
        text.append(f"  {printable(row.message)}", style="red")
    return text


# -- the parameter panel ------------------------------------------------------------------


def param_table(panel: ParamPanel | None, width: int) -> Text:
    if panel is None:
        return Text("reading parameters…", style="dim")
    if panel.total == 0:
        return Text("no per-parameter norms recorded for this run", style="dim")
    spark_w = 24 if width >= 70 else 12
    name_w = max(12, width - spark_w - 2 * 9 - 2)
    lo, hi = panel.window
    out = Text(no_wrap=True)
    out.append(f"top {len(panel.top)} of {panel.total} parameters by latest pre-clip norm, "
               f"steps {lo}–{hi}\n", style="dim")
    out.append(f"{'parameter':<{name_w}} {'latest':>8} {'peak':>8}  recent\n", style="bold")
    scale = max((p.peak for p in panel.top if p.peak is not None), default=None)
    for p in panel.top:
        out.append(f"{elide(p.name, name_w):<{name_w}} {fmt_num(p.latest):>8} "
                   f"{fmt_num(p.peak):>8}  ")
        # One scale for all rows: a parameter whose norm is 100x the others looks it.
        out.append(sparkline(p.spark, spark_w, "max", lo=0.0, hi=scale), style="yellow")
        out.append("\n")
    return out


# -- plots --------------------------------------------------------------------------------


class Plot(Widget):
    """A braille line plot of min/max bands; spikes survive any downsampling."""

    DEFAULT_CSS = """
    Plot {
        border: round $primary 60%;
        border-title-color: $text;
        height: 1fr;
        min-height: 4;
    }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.border_title = title
        self.log_scale: bool | None = None
        self._lines: tuple[Line, ...] = ()
        self._markers: tuple[Marker, ...] = ()
        self._nonfinite: Band | None = None
        self._cache: tuple[tuple[int, int, bool | None], Text] | None = None

    @property
    def dots(self) -> int:
        """Horizontal resolution of the canvas, in braille dots."""
        return max(0, (self.content_size.width - GUTTER) * 2)

    def set_data(self, lines: Sequence[Line], markers: Sequence[Marker] = (),
                 nonfinite: Band | None = None) -> None:
        """`nonfinite`: the `finite` column's band; buckets with a non-finite step are marked."""
        lines, markers = tuple(lines), tuple(markers)
        if lines == self._lines and markers == self._markers and nonfinite == self._nonfinite:
            return
        self._lines, self._markers, self._cache = lines, markers, None
        self._nonfinite = nonfinite
        legend = "  ".join(f"[{ln.style}]{'·' if ln.points else '━'} {ln.label}[/]"
                           for ln in lines if ln.label)
        self.border_title = f"{self.title}  {legend}" if legend else self.title
        self.refresh()

    def set_log(self, log: bool | None) -> None:
        if log != self.log_scale:
            self.log_scale, self._cache = log, None
            self.refresh()

    def render(self) -> Text:
        w, h = self.content_size
        key = (w, h, self.log_scale)
        if self._cache is None or self._cache[0] != key:
            rows = render_plot(self._lines, w, h, log=self.log_scale, markers=self._markers,
                               nonfinite=self._nonfinite)
            self._cache = (key, Text("\n", no_wrap=True).join(rows))
        return self._cache[1]


class TextLine(Widget):
    """One line of text that changes often (a headline, a status line). Unlike Static.update,
    which relayouts the whole screen (~50 ms with four plots), a change repaints this line only."""

    DEFAULT_CSS = "TextLine { height: 1; }"

    def __init__(self, text: Text | str = "", *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._text = Text(text) if isinstance(text, str) else text

    def update(self, text: Text | str) -> None:
        text = Text(text) if isinstance(text, str) else text
        if text != self._text:
            self._text = text
            self.refresh()

    @property
    def text(self) -> Text:
        return self._text

    def render(self) -> Text:
        return self._text


# The steering keys, the same on the run list and in the run view (DESIGN.md's key contract).
STEER_BINDINGS = [
    Binding("p", "pause", "pause"),
    Binding("m", "set('max_norm')", "max_norm"),
    Binding("l", "set('lr')", "lr"),
    Binding("s", "stop", "stop"),
    Binding("r", "rewind", "rewind"),
]
