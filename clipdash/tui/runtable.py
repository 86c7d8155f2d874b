"""The run list: a Line-API table that redraws only the rows that changed.

Layout: a fixed name column (it never scrolls away and takes the width there is) and the
other columns (`columns.RUN_COLUMNS`), which scroll sideways on a narrow terminal. Live runs come
first; the members of a sweep sit under a collapsible header and are named by what varies
between them (`max_norm=0.5 CyclicLR`). Names are shown with control characters escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from clipdash.tui.columns import LIVE, NAME_MIN, RUN_COLUMNS
from clipdash.tui.messages import RunRow
from clipdash.tui.render import printable
from clipdash.tui.seen import SeenAlerts

GAP = 1
MARK_W = 2  # "● " before a marked run


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def member_labels(names: Iterable[str]) -> dict[str, str]:
    """Sweep members named by what varies: the `key=value` parts they do not all share
    (keeping the key where the value is a number, `max_norm=0.5 CyclicLR`)."""
    names = list(names)
    parts = {n: n.split(",") for n in names}
    common = set.intersection(*(set(p) for p in parts.values())) if len(names) > 1 else set()
    out = {}
    for name, tokens in parts.items():
        shown = []
        for tok in tokens:
            if tok in common:
                continue
            key, eq, value = tok.partition("=")
            shown.append(tok if not eq or _numeric(value) else value)
        out[name] = " ".join(shown) or name
    return out


# The `!N` after a run's name, N its alerts: bold red while some are new to the user (issue
# #12: such a run stands out), dim once its run view has been opened since the last one.
ALERT_STYLES = {"unseen": "bold red", "seen": "dim"}


def name_cell(item: Item, marked: bool, seen: int = 0) -> Text:
    """A run's name in the list; `seen`: how many of its alerts the user has seen."""
    name = Text(("● " if marked else "  ") + "  " * item.depth, style="bold cyan")
    name.append(item.label, style="bold" if marked else "")
    row = item.row
    if row is not None and row.alerts:
        name.append(f" !{row.alerts}",
                    style=ALERT_STYLES["unseen" if row.alerts > seen else "seen"])
    if row is not None and row.read_only:
        name.append(" (read-only)", style="dim")
    return name


def matches(row: RunRow, needle: str) -> bool:
    needle = needle.strip().lower()
    return not needle or needle in row.name.lower() or needle == row.status


@dataclass(frozen=True)
class Item:
    """One line of the table: a run, or the header of a sweep folder."""

    key: str  # run path, or "sweep:<folder>"
    label: str
    row: RunRow | None = None
    depth: int = 0
    members: int = 0
    live: int = 0
    collapsed: bool = False


def _is_live(row: RunRow) -> bool:
    return row.status in LIVE


def _shape(row: RunRow) -> tuple[object, ...]:
    """What a row's place in the table depends on."""
    return (row.name, _is_live(row), row.started, row.status if row.status in LIVE else "")


def _order(rows: Iterable[RunRow]) -> list[RunRow]:
    """Live runs first (the newest first), then the others by name."""
    return sorted(rows, key=lambda r: (not _is_live(r), -(r.started or 0) if _is_live(r) else 0,
                                       r.name))


def layout(rows: Mapping[str, RunRow], needle: str, collapsed: set[str]) -> list[Item]:
    """The lines of the table, in order."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows.values():
        if matches(row, needle):
            folder, sep, _ = row.name.partition("/")
            groups.setdefault(folder if sep else "", []).append(row)
    tops: list[tuple[tuple[bool, float, str], list[Item]]] = []
    for row in groups.pop("", []):
        key = (not _is_live(row), -(row.started or 0) if _is_live(row) else 0, row.name)
        tops.append((key, [Item(row.path, printable(row.name), row)]))
    for folder, members in groups.items():
        ordered = _order(members)
        live = sum(map(_is_live, members))
        shut = folder in collapsed
        labels = member_labels(r.name.partition("/")[2] for r in ordered)
        head = Item(f"sweep:{folder}", printable(folder), members=len(members), live=live,
                    collapsed=shut)
        items = [head] + ([] if shut else [
            Item(r.path, printable(labels[r.name.partition("/")[2]]), r, depth=1)
            for r in ordered])
        newest = max((r.started or 0) for r in members if _is_live(r)) if live else 0
        tops.append(((not live, -newest, folder), items))
    tops.sort(key=lambda t: t[0])
    return [item for _, items in tops for item in items]


class RunTable(ScrollView, can_focus=True):
    """Rows keyed by run path; a change to one run redraws that one line."""

    DEFAULT_CSS = """
    RunTable { height: 1fr; }
    RunTable > .runtable--header { text-style: bold; background: $panel; }
    RunTable > .runtable--cursor { background: $accent 40%; }
    RunTable:focus > .runtable--cursor { background: $accent; }
    RunTable > .runtable--group { text-style: bold; color: $text-muted; }
    """
    COMPONENT_CLASSES = {"runtable--header", "runtable--cursor", "runtable--group"}
    BINDINGS = [
        Binding("up", "move(-1)", show=False),
        Binding("down", "move(1)", show=False),
        Binding("pageup", "move(-20)", show=False),
        Binding("pagedown", "move(20)", show=False),
        Binding("home", "move(-1000000)", show=False),
        Binding("end", "move(1000000)", show=False),
        Binding("left", "columns(-1)", show=False),
        Binding("right", "columns(1)", show=False),
        Binding("enter", "choose", "open", show=False),
    ]

    class Chosen(Message):
        """Enter (or a double click) on a run."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, seen: SeenAlerts | None = None) -> None:
        super().__init__(id="runs")
        self.seen = seen if seen is not None else SeenAlerts()
        self.rows: dict[str, RunRow] = {}
        self.items: list[Item] = []
        self.index: dict[str, int] = {}
        self.marks: set[str] = set()
        self.collapsed: set[str] = set()
        self.needle = ""
        self.cursor = 0
        self.name_w = NAME_MIN
        self._cache: dict[tuple[object, ...], tuple[Strip, Strip]] = {}
        self._scroll_w = sum(c.width + GAP for c in RUN_COLUMNS)
        self._styles: dict[str, Style] = {}  # computing a widget's style walks its ancestors

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._cache.clear()

    def _style(self, part: str) -> Style:
        if part not in self._styles:
            self._styles[part] = (self.rich_style if part == "base"
                                  else self.get_component_rich_style(part))
        return self._styles[part]

    # -- data ----------------------------------------------------------------------------

    def update_rows(self, rows: Mapping[str, RunRow]) -> None:
        """Take the new state of every run; redraw only the lines whose run changed.

        The order only changes when a run comes, goes, starts or ends: most updates (a live
        run's new step) redraw one line and skip the layout."""
        old, self.rows = self.rows, dict(rows)
        changed = [p for p, r in self.rows.items() if old.get(p) != r]
        if old.keys() != self.rows.keys() or any(_shape(old[p]) != _shape(self.rows[p])
                                                 for p in changed):
            self._relayout()
            return
        for path in changed:
            i = self.index.get(path)
            if i is not None:
                self.items[i] = replace(self.items[i], row=self.rows[path])
                self.refresh_line(i + 1)

    def _relayout(self, items: list[Item] | None = None) -> None:
        keep = self.selected_key()
        self.items = items if items is not None else layout(self.rows, self.needle,
                                                            self.collapsed)
        self.index = {it.key: i for i, it in enumerate(self.items)}
        if keep in self.index:
            self.cursor = self.index[keep]
        self.cursor = max(0, min(self.cursor, len(self.items) - 1))
        self._resize()
        self.refresh()

    def set_filter(self, needle: str) -> None:
        self.needle = needle
        self._relayout()

    def toggle_mark(self, path: str) -> None:
        self.marks.symmetric_difference_update({path})
        if path in self.index:
            self.refresh_line(self.index[path] + 1)

    # -- what is selected / visible -------------------------------------------------------

    def selected_key(self) -> str | None:
        return self.items[self.cursor].key if 0 <= self.cursor < len(self.items) else None

    def selected_path(self) -> str | None:
        """The run under the cursor (None on a sweep header or an empty table)."""
        if 0 <= self.cursor < len(self.items) and self.items[self.cursor].row is not None:
            return self.items[self.cursor].key
        return None

    def visible_paths(self) -> list[str]:
        """Runs in the viewport (and a few beyond it)."""
        first = max(0, int(self.scroll_offset.y) - 4)
        chunk = self.items[first:first + max(1, self.size.height) + 8]
        return [it.key for it in chunk if it.row is not None]

    # -- sizes ----------------------------------------------------------------------------

    def on_resize(self) -> None:
        self._resize()

    def _resize(self) -> None:
        avail = self.scrollable_content_region.width or self.size.width
        name_w = max(NAME_MIN, avail - MARK_W - self._scroll_w)
        if name_w != self.name_w:
            self.name_w = name_w
            self._cache.clear()
        self.virtual_size = Size(MARK_W + self.name_w + self._scroll_w, len(self.items) + 1)

    # -- drawing --------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        fixed_w = MARK_W + self.name_w
        if y == 0:
            fixed, rest = self._header()
        else:
            i = int(self.scroll_offset.y) + y - 1
            if i >= len(self.items):
                return Strip.blank(width, self._style("base"))
            fixed, rest = self._line(self.items[i], i == self.cursor)
        x = int(self.scroll_offset.x)
        right = rest.crop(x, x + max(0, width - fixed_w))
        return Strip.join([fixed, right]).extend_cell_length(width, self._style("base"))

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        text.truncate(width, overflow="ellipsis", pad=True)
        segments = [Segment(s.text, style + s.style if s.style else style)
                    for s in text.render(self.app.console) if s.text != "\n"]
        return Strip(segments, width)

    def _cells(self, texts: Iterable[Text], style: Style) -> Strip:
        line = Text(no_wrap=True)
        for col, text in zip(RUN_COLUMNS, texts, strict=True):
            cell = text.copy()
            cell.truncate(col.width, overflow="ellipsis")
            pad = col.width - cell.cell_len
            if col.right:
                line.append(" " * pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                line.append(" " * pad)
            line.append(" " * GAP)
        return self._strip(line, self._scroll_w, style)

    def _header(self) -> tuple[Strip, Strip]:
        style = self._style("runtable--header")
        key = ("header", self.name_w, style)
        if key not in self._cache:
            fixed = self._strip(Text(" " * MARK_W + "run"), MARK_W + self.name_w, style)
            heads = [Text(c.header, justify="right" if c.right else "left") for c in RUN_COLUMNS]
            self._cache[key] = (fixed, self._cells(heads, style))
        return self._cache[key]

    def _line(self, item: Item, cursor: bool) -> tuple[Strip, Strip]:
        marked = item.key in self.marks
        style = self._style("base")
        if cursor:
            style = style + self._style("runtable--cursor")
        seen = self.seen.seen(item.row) if item.row is not None and item.row.alerts else 0
        key = (item, marked, seen, cursor, self.name_w, style)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        fixed_w = MARK_W + self.name_w
        if item.row is None:
            arrow = "▸" if item.collapsed else "▾"
            live = f", {item.live} live" if item.live else ""
            text = Text(f"{arrow} {item.label}/", style="bold")
            text.append(f"  {item.members} run{'s' if item.members != 1 else ''}{live}",
                        style="dim")
            out = (self._strip(text, fixed_w, style), Strip.blank(self._scroll_w, style))
        else:
            row = item.row
            out = (self._strip(name_cell(item, marked, seen), fixed_w, style),
                   self._cells((c.cell(row) for c in RUN_COLUMNS), style))
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = out
        return out

    # -- moving ---------------------------------------------------------------------------

    def move_to(self, index: int) -> None:
        old = self.cursor
        self.cursor = max(0, min(index, len(self.items) - 1))
        if old != self.cursor:
            self.refresh_line(old + 1)
            self.refresh_line(self.cursor + 1)
        top = int(self.scroll_offset.y)
        rows = max(1, self.scrollable_content_region.height - 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False)

    def action_move(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_columns(self, delta: int) -> None:
        """Scroll sideways one column at a time (the name column stays)."""
        edges = [0]
        for col in RUN_COLUMNS:
            edges.append(edges[-1] + col.width + GAP)
        x = int(self.scroll_offset.x)
        if delta > 0:
            target = next((e for e in edges if e > x), x)
        else:
            target = max((e for e in edges if e < x), default=0)
        self.scroll_to(x=target, animate=False)

    def action_choose(self) -> None:
        if not self.items:
            return
        item = self.items[self.cursor]
        if item.row is not None:
            self.post_message(self.Chosen(item.key))
            return
        folder = item.key.partition(":")[2]
        self.collapsed.symmetric_difference_update({folder})
        self._relayout()

    def on_click(self, event: events.Click) -> None:
        i = int(self.scroll_offset.y) + event.y - 1
        if event.y >= 1 and 0 <= i < len(self.items):
            self.move_to(i)
            if event.chain >= 2:
                self.action_choose()
