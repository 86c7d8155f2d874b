"""Pure text renderers: sparklines, min/max downsampling, braille plots, compact numbers.

No Textual and no I/O here: every function is unit-tested by looking at the characters it returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

from clipdash.tui.buckets import Band, Num

SPARK_CHARS = "▁▂▃▄▅▆▇█"
BRAILLE_BASE = 0x2800
# Bit of each dot in a braille cell, indexed [row][col] (rows 0..3 top to bottom, cols 0..1).
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
GUTTER = 8  # y labels (7) and the axis character
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from a run directory (names, messages) with control characters escaped: an escape
    code in a run name is shown as `\x1b[2J`, never obeyed by the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


# -- numbers ------------------------------------------------------------------------------


def fmt_num(value: Num, width: int = 7) -> str:
    """A number in at most `width` characters ("-" when unknown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    for digits in (4, 3, 2, 1):
        text = f"{value:.{digits}g}"
        if len(text) <= width:
            return text
    text = f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return text if len(text) <= width else text[:width]


def fmt_count(n: int | None) -> str:
    """Step counts: exact below 100,000, then 123.4k / 1.2M (rounded down, so never ahead)."""
    if n is None:
        return "-"
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 100 / 10:g}k"
    return f"{n // 100_000 / 10:g}M"


def fmt_step(step: int | None, total: int | None) -> str:
    """Steps done out of the total (a finished 1500-step run reads 1500/1500), else the step."""
    if total and step is not None:
        return f"{fmt_count(step + 1)}/{fmt_count(total)}"
    return fmt_count(step)


# -- sparklines ---------------------------------------------------------------------------


def reduce_to(values: Sequence[Num], width: int, how: str = "max") -> list[Num]:
    """`values` cut into `width` consecutive groups, each reduced by max, min or mean."""
    n = len(values)
    if n <= width:
        return list(values)
    out: list[Num] = []
    for i in range(width):
        group = [v for v in values[i * n // width:(i + 1) * n // width] if v is not None]
        if not group:
            out.append(None)
        elif how == "max":
            out.append(max(group))
        elif how == "min":
            out.append(min(group))
        else:
            out.append(sum(group) / len(group))
    return out


def sparkline(values: Sequence[Num], width: int | None = None, how: str = "max",
              lo: float | None = None, hi: float | None = None) -> str:
    """Block characters, one per value (or per group of values when `width` is smaller).

    None draws a blank. Grouping keeps the max by default, so one spiking step still shows.
    The result is padded to `width` so that table columns do not jump.
    """
    vals = reduce_to(values, width, how) if width is not None else list(values)
    present = [v for v in vals if v is not None and math.isfinite(v)]
    if not present:
        return " " * (width if width is not None else len(vals))
    lo = min(present) if lo is None else lo
    hi = max(present) if hi is None else hi
    top = len(SPARK_CHARS) - 1
    chars = []
    for v in vals:
        if v is None or not math.isfinite(v):
            chars.append(" ")
        elif hi <= lo:
            chars.append(SPARK_CHARS[top // 2])
        else:
            level = round((min(max(v, lo), hi) - lo) / (hi - lo) * top)
            chars.append(SPARK_CHARS[level])
    text = "".join(chars)
    return text.ljust(width) if width is not None else text


# -- downsampling -------------------------------------------------------------------------


def column_span(x_lo: int, x_hi: int, x0: int, x1: int, n: int) -> tuple[int, int]:
    """The pixel columns [first, last] that steps x_lo..x_hi cover when x0..x1 spans n columns."""
    span = x1 - x0 + 1
    first = (x_lo - x0) * n // span
    last = max(first, (x_hi + 1 - x0) * n // span - 1)
    return max(0, first), min(n - 1, last)


def downsample_minmax(x_lo: Sequence[int], x_hi: Sequence[int], ymin: Sequence[Num],
                      ymax: Sequence[Num], n: int, x0: int | None = None,
                      x1: int | None = None) -> list[tuple[float, float] | None]:
    """Per pixel column, the (min, max) of every bucket that touches it; None where no data.

    The extremes of all buckets are kept, so a one-step spike among a million steps still
    reaches its column's max.
    """
    out: list[tuple[float, float] | None] = [None] * n
    if not x_lo or n <= 0:
        return out
    x0 = x_lo[0] if x0 is None else x0
    x1 = x_hi[-1] if x1 is None else x1
    for lo, hi, vmin, vmax in zip(x_lo, x_hi, ymin, ymax, strict=True):
        if vmin is None or vmax is None or hi < x0 or lo > x1:
            continue
        first, last = column_span(max(lo, x0), min(hi, x1), x0, x1, n)
        for c in range(first, last + 1):
            cur = out[c]
            out[c] = (vmin, vmax) if cur is None else (min(cur[0], vmin), max(cur[1], vmax))
    return out


# -- braille plots ------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One series of a plot: a band of buckets drawn as a line (or as separate dots)."""

    band: Band
    style: str
    label: str = ""
    points: bool = False


@dataclass(frozen=True)
class Marker:
    """Something that happened at a step (an event), drawn under the plot's x axis."""

    step: int
    char: str
    style: str


def _finite(v: Num, log: bool) -> bool:
    return v is not None and math.isfinite(v) and (v > 0 or not log)


def y_range(lines: Sequence[Line], log: bool | None) -> tuple[float, float, bool] | None:
    """(lo, hi, log) covering every value; log is chosen when asked, or (None) when all values
    are positive and span more than two decades."""
    values = [float(v) for ln in lines for v in (*ln.band.ymin, *ln.band.ymax)
              if v is not None and math.isfinite(v)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    if log is None:
        log = lo > 0 and hi / lo > 100
    if log:
        positive = [v for v in values if v > 0]
        if positive:
            lo, hi = min(positive), max(positive)
        else:
            log = False
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = (hi / 10, hi * 10) if log else (lo - pad, hi + pad)
    return lo, hi, bool(log)


def nonfinite_columns(band: Band | None, x0: int, x1: int, cols: int) -> set[int]:
    """Cell columns holding a step whose gradients were not finite (`band`: the `finite`
    column; a bucket whose min is 0 has one)."""
    out: set[int] = set()
    if band is None:
        return out
    for lo, hi, vmin in zip(band.x_lo, band.x_hi, band.ymin, strict=True):
        if vmin is not None and vmin < 1 and hi >= x0 and lo <= x1:
            first, last = column_span(max(lo, x0), min(hi, x1), x0, x1, cols)
            out.update(range(first, last + 1))
    return out


def render_plot(lines: Sequence[Line], width: int, height: int, *, log: bool | None = None,
                x_range: tuple[int, int] | None = None, markers: Sequence[Marker] = (),
                nonfinite: Band | None = None) -> list[Text]:
    """`height` rows of `width` cells: y labels, a braille canvas, and an x axis with markers.

    Values are scaled to the finite ones; where `nonfinite` (the `finite` column's band) says
    a bucket had a non-finite step, a row of ✖ above the canvas marks it at its place."""
    cols, rows = width - GUTTER, height - 1
    if cols < 4 or rows < 1:
        return [Text("(too small)", style="dim")]
    bands = [ln.band for ln in lines] + ([nonfinite] if nonfinite is not None else [])
    xs = [x for b in bands if len(b) for x in (b.x_lo[0], b.x_hi[-1])]
    if not xs:
        blank = [Text(" " * width) for _ in range(height)]
        blank[rows // 2] = Text("no data yet".center(width), style="dim")
        return blank
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    flagged = nonfinite_columns(nonfinite, x0, x1, cols)
    head: list[Text] = []
    if flagged and rows >= 2:
        rows -= 1
        head = [_flag_row(flagged, cols)]
    yr = y_range(lines, log)
    if yr is None:
        blank = [Text(" " * width) for _ in range(rows)]
        blank[rows // 2] = Text(("no finite values" if flagged else "no data yet").center(width),
                                style="dim")
        return head + blank + [_x_axis(x0, x1, cols, markers, False)]
    lo, hi, use_log = yr
    dots_w, dots_h = cols * 2, rows * 4
    f = math.log10 if use_log else (lambda v: v)
    flo, fhi = f(lo), f(hi)

    def to_dot(v: float) -> int:
        v = min(max(v, lo), hi)
        return (dots_h - 1) - round((f(v) - flo) / (fhi - flo) * (dots_h - 1))

    bits = [[0] * cols for _ in range(rows)]
    owner = [[-1] * cols for _ in range(rows)]

    def dot(dx: int, dy: int, k: int) -> None:
        r, c = dy // 4, dx // 2
        bits[r][c] |= BRAILLE_BITS[dy % 4][dx % 2]
        owner[r][c] = k

    for k, ln in enumerate(lines):
        b = ln.band
        ymin = [v if _finite(v, use_log) else None for v in b.ymin]
        ymax = [v if _finite(v, use_log) else None for v in b.ymax]
        per_col = downsample_minmax(b.x_lo, b.x_hi, ymin, ymax, dots_w, x0, x1)
        prev: tuple[int, int] | None = None
        for dx, mm in enumerate(per_col):
            if mm is None:
                prev = None
                continue
            top, bot = to_dot(mm[1]), to_dot(mm[0])
            if prev is not None and not ln.points:
                # Join the previous column's span so that a line has no gaps.
                top, bot = min(top, prev[1]), max(bot, prev[0])
            span = (to_dot(mm[1]), to_dot(mm[0]))
            for dy in range(top, bot + 1):
                dot(dx, dy, k)
            prev = span

    out: list[Text] = list(head)
    labels = {0: fmt_num(hi), rows - 1: fmt_num(lo)}
    if rows >= 5:
        mid = rows // 2
        centre = (mid * 4 + 1.5) / (dots_h - 1)
        value = fhi - centre * (fhi - flo)
        labels[mid] = fmt_num(10 ** value if use_log else value)
    for r in range(rows):
        line = Text(no_wrap=True)
        label = labels.get(r)
        line.append((label or "").rjust(GUTTER - 1), style="dim")
        line.append("┤" if label else "│", style="dim")
        _append_runs(line, [
            (chr(BRAILLE_BASE + bits[r][c]), lines[owner[r][c]].style) if bits[r][c]
            else (" ", "") for c in range(cols)])
        out.append(line)
    out.append(_x_axis(x0, x1, cols, markers, use_log))
    return out


def _flag_row(flagged: set[int], cols: int) -> Text:
    row = Text(no_wrap=True)
    row.append("nonfin".rjust(GUTTER - 1) + "│", style="dim")
    _append_runs(row, [("✖", "bold red") if c in flagged else (" ", "") for c in range(cols)])
    return row


def _x_axis(x0: int, x1: int, cols: int, markers: Sequence[Marker], log: bool) -> Text:
    cells: list[tuple[str, str]] = [("─", "dim")] * cols
    left, right = fmt_count(x0), fmt_count(x1)
    for i, ch in enumerate(left[:cols]):
        cells[i] = (ch, "dim")
    if len(left) + len(right) + 1 < cols:
        for i, ch in enumerate(right):
            cells[cols - len(right) + i] = (ch, "dim")
    for m in markers:
        if x0 <= m.step <= x1:
            c, _ = column_span(m.step, m.step, x0, x1, cols)
            cells[c] = (m.char, m.style)
    axis = Text(no_wrap=True)
    axis.append(("log" if log else "").rjust(GUTTER - 1) + "└", style="dim")
    _append_runs(axis, cells)
    return axis


def _append_runs(text: Text, cells: Sequence[tuple[str, str]]) -> None:
    """Append characters, one span per run of equal style (not one per character)."""
    run: list[str] = []
    style = None
    for ch, st in cells:
        if st != style and run:
            text.append("".join(run), style=style or None)
            run = []
        style = st
        run.append(ch)
    if run:
        text.append("".join(run), style=style or None)
