"""Every column the dashboard reads or shows, declared here once.

The step columns come from the store's declaration (`clipdash.store.schema.STEP_COLUMNS`); this
module picks which of them each view reads and draws (checked against that declaration when it
loads), and lays out the run list's columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

from clipdash.store.schema import STEP_COLUMNS
from clipdash.tui.buckets import Num
from clipdash.tui.messages import RunRow
from clipdash.tui.render import fmt_num, fmt_step, sparkline


def step_selection(*names: str) -> tuple[str, ...]:
    """Step columns a view picks by name, checked against the store's declaration when this
    module loads: a typo, or a field the store no longer records, fails at import (and in
    every test) instead of drawing an empty plot."""
    unknown = [n for n in names if n not in STEP_COLUMNS]
    if unknown:
        raise ValueError(f"not step columns of the store: {', '.join(unknown)} "
                         f"(declared: {', '.join(STEP_COLUMNS)})")
    return names


@dataclass(frozen=True)
class Series:
    """One step column drawn in a plot of the run view."""

    column: str
    style: str
    label: str


# The run view's plots: id -> (title, what it draws). What the view reads follows from it.
DETAIL_PLOTS: dict[str, tuple[str, tuple[Series, ...]]] = {
    "loss": ("loss", (Series("loss", "cyan", "train"),)),
    "grad": ("grad norm", (Series("grad_norm_pre", "yellow", "pre"),
                           Series("grad_norm_post", "cyan", "post"),
                           Series("max_norm", "red", "max_norm"))),
    "lr": ("learning rate", (Series("lr", "green", "group 0"),)),
    "coef": ("clip coef", (Series("clip_coef", "bright_blue", "post/pre"),)),
}
# `finite` marks the buckets with a non-finite step above the loss and grad plots.
DETAIL_COLUMNS = step_selection(*dict.fromkeys(
    [s.column for _, series in DETAIL_PLOTS.values() for s in series] + ["finite"]))
# The run list's whole-run sparklines and what they draw: the mean loss and the largest grad
# norm of each bucket (so only these aggregates are read).
SPARK_AGGREGATES = {"loss": ("sum", "count"), "grad_norm_pre": ("max",)}
SPARK_COLUMNS = step_selection(*SPARK_AGGREGATES)
# The compare view, column -> plot title: the first is the top plot, the lower plot cycles
# through the others (n).
COMPARE_TITLES = {"loss": "loss", "grad_norm_pre": "pre-clip grad norm",
                  "max_norm": "max_norm", "lr": "learning rate", "clip_coef": "clip coef",
                  "grad_norm_post": "post-clip grad norm"}
COMPARE_TOP, *_lower = step_selection(*COMPARE_TITLES)
COMPARE_SECOND = tuple(_lower)

SPARK_W = 8
STATUS_STYLES = {
    "running": "bold green",
    "paused": "bold yellow",
    "finished": "blue",
    "stopped": "magenta",
    "failed": "bold red",
    "lost": "bold red",
    "error": "red",
    "unknown": "dim",
}
LIVE = ("running", "paused")


def _right(text: str, style: str = "") -> Text:
    return Text(text, style=style, justify="right")


def _clip(row: RunRow) -> Text:
    text = "-" if row.clip_rate is None else f"{row.clip_rate * 100:.0f}%"
    return _right(text, "bold red" if (row.clip_rate or 0) >= 0.5 else "")


def _spark(values: tuple[Num, ...], how: str, style: str) -> Text:
    # A run whose every value is non-finite still shows something: a row of ✖.
    line = sparkline(values, SPARK_W, how)
    if not line.strip() and values:
        return Text("✖" * min(SPARK_W, len(values)), style="red")
    return Text(line, style=style)


@dataclass(frozen=True)
class Column:
    """A column of the run list after the (fixed) name column."""

    key: str
    header: str
    width: int
    cell: Callable[[RunRow], Text]
    right: bool = True


RUN_COLUMNS: tuple[Column, ...] = (
    Column("status", "status", 8, lambda r: Text(r.status, style=STATUS_STYLES.get(r.status, "")),
           right=False),
    Column("step", "step", 11, lambda r: _right(fmt_step(r.step, r.total))),
    Column("loss", "loss", 7, lambda r: _right(fmt_num(r.loss))),
    Column("grad", "grad norm", 9, lambda r: _right(fmt_num(r.grad_norm))),
    Column("max_norm", "max_norm", 8, lambda r: _right(fmt_num(r.max_norm))),
    Column("clip", "clip%", 5, _clip),
    Column("grad_spark", "grad ~", SPARK_W, lambda r: _spark(r.norm_spark, "max", "yellow"),
           right=False),
    Column("loss_spark", "loss ~", SPARK_W, lambda r: _spark(r.loss_spark, "mean", "cyan"),
           right=False),
    Column("lr", "lr", 7, lambda r: _right(fmt_num(r.lr))),
    Column("rate", "it/s", 5, lambda r: _right(fmt_num(r.rate, 5))),
)
COLUMN_KEYS = ("name", *(c.key for c in RUN_COLUMNS))
NAME_MIN = 24  # at 80 columns: name, status, step, loss, grad norm and max_norm fit
