"""Plots as plain text: a scatter/line chart of a few series on a character grid.

Plain ASCII on purpose: it survives pipes, logs, CI output and copy-paste into an issue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MARKERS = "ox+*#%&="
OVERLAP = "@"  # two series in one cell


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _scale(v: float, lo: float, hi: float, n: int, log: bool) -> int:
    if log:
        v, lo, hi = math.log10(v), math.log10(lo), math.log10(hi)
    if hi <= lo:
        return n // 2
    return min(n - 1, max(0, round((v - lo) / (hi - lo) * (n - 1))))


def _usable(x: float, y: float, logx: bool, logy: bool) -> bool:
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return (x > 0 or not logx) and (y > 0 or not logy)


def plot(series: Mapping[str, Sequence[tuple[float, float]]], *, width: int = 60,
         height: int = 14, logx: bool = False, logy: bool = False, xlabel: str = "",
         ylabel: str = "", vlines: Mapping[str, float] | None = None,
         markers: Mapping[str, str] | None = None, connect: bool = False,
         overlap: bool = True) -> list[str]:
    """Lines of text: each series drawn with its own marker, a legend, axes with 3 labels.

    Non-finite points (and non-positive ones on a log axis) are left out. `vlines` draws a
    labelled vertical line (`{"m max_lr": 0.1}` puts a column of `|` topped by
    `m` at x = 0.1, and "m| max_lr" in the legend); `connect` draws `.`
    between consecutive points of a series. With `overlap`, a cell holding points of two series
    shows `@`; without, the later series is drawn over the earlier.
    """
    pts = {name: [(x, y) for x, y in s if _usable(x, y, logx, logy)]
           for name, s in series.items()}
    xs = [x for s in pts.values() for x, _ in s]
    ys = [y for s in pts.values() for _, y in s]
    if not xs:
        return ["(nothing to plot: no finite values)"]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    if ylo == yhi:
        pad = abs(ylo) * 0.1 or 1.0
        ylo, yhi = (ylo / 2, yhi * 2) if logy else (ylo - pad, yhi + pad)
    grid = [[" "] * width for _ in range(height)]
    drawn_vlines = []
    for label, x in (vlines or {}).items():
        if _usable(x, 1.0, logx, False) and xlo <= x <= xhi:
            col = _scale(x, xlo, xhi, width, logx)
            for row in grid:
                row[col] = "|"
            grid[0][col] = label[:1]
            drawn_vlines.append(label)
    chosen = dict(markers or {})
    placed: set[str] = {OVERLAP}
    for i, (name, s) in enumerate(pts.items()):
        mark = chosen.get(name, MARKERS[i % len(MARKERS)])
        cells = [(_scale(x, xlo, xhi, width, logx),
                  height - 1 - _scale(y, ylo, yhi, height, logy)) for x, y in s]
        if connect:
            for (c0, r0), (c1, r1) in zip(cells, cells[1:], strict=False):
                steps = max(abs(c1 - c0), abs(r1 - r0))
                for k in range(1, steps):
                    c = c0 + round((c1 - c0) * k / steps)
                    r = r0 + round((r1 - r0) * k / steps)
                    if grid[r][c] == " ":
                        grid[r][c] = "."
        for c, r in cells:
            clash = overlap and grid[r][c] in placed and grid[r][c] != mark
            grid[r][c] = OVERLAP if clash else mark
        placed.add(mark)
    labels = [_fmt(yhi), _fmt(math.sqrt(ylo * yhi) if logy else (ylo + yhi) / 2), _fmt(ylo)]
    pad = max(len(s) for s in labels)
    lines = [ylabel] if ylabel else []
    for r, row in enumerate(grid):
        tick = {0: labels[0], height // 2: labels[1], height - 1: labels[2]}.get(r, "")
        lines.append(f"{tick:>{pad}} |{''.join(row).rstrip()}")
    lines.append(" " * pad + " +" + "-" * width)
    mid = math.sqrt(xlo * xhi) if logx else (xlo + xhi) / 2
    left, centre, right = _fmt(xlo), _fmt(mid), _fmt(xhi)
    axis = [" "] * (width + 2)
    for text, col in ((left, 0), (centre, width // 2 - len(centre) // 2),
                      (right, width - len(right))):
        for k, ch in enumerate(text):
            if 0 <= col + k < len(axis):
                axis[col + k] = ch
    lines.append(" " * (pad + 2) + "".join(axis).rstrip())
    scale = " (log)" if logx else ""
    if xlabel:
        lines.append(" " * (pad + 2) + xlabel + scale)
    # The legend names only what is on the grid: a series whose points were all left out (or
    # all drawn over) and a vline outside the x range are not in it.
    on_grid = {ch for row in grid for ch in row}
    legend = [f"{mark} {n}" for i, n in enumerate(pts)
              if (mark := chosen.get(n, MARKERS[i % len(MARKERS)])) in on_grid]
    if OVERLAP in on_grid:
        legend.append(f"{OVERLAP} several")
    if len(legend) > 1 or drawn_vlines:
        extra = [f"{k[:1]}| {k[1:].strip() or k}" for k in drawn_vlines]
        lines.append(" " * (pad + 2) + "   ".join(legend + extra))
    return lines
