"""The dashboard's pure parts, tested by what they render: sparklines, plots, buckets, the reader
thread's bookkeeping, and the rule that the dashboard never imports torch."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_fixtures import make_run, step_columns

from clipdash.store.reader import RunReader
from clipdash.store.schema import STEP_COLUMNS
from clipdash.tui.buckets import Band, Buckets, width_for
from clipdash.tui.columns import (
    COMPARE_SECOND,
    COMPARE_TOP,
    DETAIL_COLUMNS,
    DETAIL_PLOTS,
    RUN_COLUMNS,
    SPARK_COLUMNS,
    step_selection,
)
from clipdash.tui.feed import RUNS
from clipdash.tui.messages import ParamInfo, ParamPanel, RunRow, RunsUpdated
from clipdash.tui.poller import Poller
from clipdash.tui.render import (
    BRAILLE_BASE,
    SPARK_CHARS,
    Line,
    Marker,
    downsample_minmax,
    fmt_count,
    fmt_num,
    render_plot,
    sparkline,
)
from clipdash.tui.runtable import layout, member_labels
from clipdash.tui.widgets import elide, param_table


def test_dashboard_never_imports_torch() -> None:
    code = ("import sys, clipdash.tui.app, clipdash.commands.watch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- sparklines and numbers ---------------------------------------------------------------


def test_sparkline_levels_blanks_and_padding() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == SPARK_CHARS
    assert sparkline([None, 2.0, 2.0], 5) == " ▄▄  "  # constant: mid level; padded to width
    assert sparkline([], 4) == "    "
    assert sparkline([float("nan"), 1.0, 3.0]) == " ▁█"


def test_sparkline_grouping_keeps_a_spike() -> None:
    values: list[float | None] = [1.0] * 1000
    values[637] = 50.0
    line = sparkline(values, 10)  # groups of 100 reduced by max
    assert line == "▁▁▁▁▁▁█▁▁▁"
    assert sparkline(values, 10, how="mean").count("█") == 1


def test_numbers_fit_their_columns() -> None:
    assert fmt_num(None) == "-"
    assert fmt_num(0.123456) == "0.1235"
    assert fmt_num(1.5e-7) == "1.5e-07"
    assert all(len(fmt_num(v)) <= 7 for v in (1e-300, -1.234567e-12, 123456789.0, 0.5))
    assert fmt_count(99_999) == "99999"
    assert fmt_count(99_999_9) == "999.9k"
    assert fmt_count(12_345_678) == "12.3M"


def test_elide_keeps_the_informative_end() -> None:
    assert elide("encoder.layers.11.attn.out_proj.weight", 20) == "…ttn.out_proj.weight"
    assert len(elide("x" * 50, 12, keep="middle")) == 12


# -- downsampling and plots ---------------------------------------------------------------


def test_downsample_minmax_keeps_a_one_step_spike() -> None:
    n = 100_000
    ys: list[float | None] = [1.0 + random.random() * 0.01 for _ in range(n)]
    ys[54_321] = 500.0
    steps = list(range(n))
    cols = downsample_minmax(steps, steps, ys, ys, 60)
    tops = [c[1] for c in cols if c is not None]
    assert len(tops) == 60 and max(tops) == 500.0
    assert sum(t > 2 for t in tops) == 1
    spike_col = cols[54_321 * 60 // n]
    assert spike_col is not None and spike_col[1] == 500.0


def test_downsample_spreads_few_buckets_over_all_columns() -> None:
    cols = downsample_minmax([0, 1, 2], [0, 1, 2], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 9)
    assert cols == [(1.0, 1.0)] * 3 + [(2.0, 2.0)] * 3 + [(3.0, 3.0)] * 3


def _band(ys: list[float]) -> Band:
    xs = tuple(range(len(ys)))
    return Band(xs, xs, tuple(ys), tuple(ys), tuple(ys))


def test_plot_draws_a_spike_in_its_top_row_and_markers_on_the_axis() -> None:
    ys = [1.0] * 10_000
    ys[7_000] = 10.0
    rows = render_plot([Line(_band(ys), "yellow", "pre")], 48, 10, log=False,
                       markers=[Marker(2_500, "▲", "cyan")])
    assert len(rows) == 10 and all(r.cell_len == 48 for r in rows)
    top = rows[0].plain
    assert top.startswith("     10┤")
    braille = [i for i, ch in enumerate(top) if ord(ch) > BRAILLE_BASE]
    assert len(braille) == 1 and braille[0] == 8 + 7_000 * 40 // 10_000
    assert rows[-2].plain.startswith("      1┤")
    assert "▲" in rows[-1].plain and rows[-1].plain.endswith("9999")


def test_plot_log_scale_and_empty_data() -> None:
    ys = [10.0 ** (i / 100) for i in range(500)]  # 1 .. 1e5
    rows = render_plot([Line(_band(ys), "green")], 40, 8)  # auto: five decades -> log
    assert "log" in rows[-1].plain
    # On a log axis a straight exponential is a straight line: the middle row holds its middle.
    mid = rows[3].plain[8:]
    assert any(ord(ch) > BRAILLE_BASE for ch in mid[12:20])
    empty = render_plot([Line(Band.empty(), "green")], 40, 8)
    assert any("no data yet" in r.plain for r in empty)
    assert render_plot([], 6, 3)[0].plain == "(too small)"


def test_two_series_keep_their_own_colours() -> None:
    rows = render_plot([Line(_band([1.0] * 50), "yellow"), Line(_band([3.0] * 50), "red")],
                       30, 6, log=False)
    styles = {str(span.style) for r in rows for span in r.spans}
    assert {"yellow", "red"} <= styles


# -- buckets ------------------------------------------------------------------------------


def test_buckets_fold_like_sql_and_keep_extremes(tmp_path: Path) -> None:
    writer = make_run(tmp_path / "r", 0, state="running")
    writer.append_steps(step_columns(0, 3000, spike_at=1234))
    reader = RunReader(tmp_path / "r")
    live = Buckets(("grad_norm_pre",), 32)
    for start in range(0, 3000, 250):  # what the reader thread sees, in pieces
        rows = reader.steps_after(start - 1, ("step", "grad_norm_pre"), limit=250)
        live.add(rows["step"], [rows["grad_norm_pre"]])
    width = width_for(0, 2999, 32)
    sql = Buckets(("grad_norm_pre",), 32)
    sql.load(reader.bucket_stats(("grad_norm_pre",), width, 0), 0, width)
    a, b = live.band("grad_norm_pre"), sql.band("grad_norm_pre")
    assert 16 <= len(a) <= 32 and live.width == sql.width
    assert a.x_lo == b.x_lo and a.x_hi == b.x_hi and a.ymax == b.ymax and a.ymin == b.ymin
    assert a.ymean == pytest.approx(b.ymean)
    assert max(v for v in a.ymax if v is not None) == 1000.0
    reader.close()
    writer.close()


def test_reader_rate_and_bucket_stats(tmp_path: Path) -> None:
    make_run(tmp_path / "r", 500).close()
    with RunReader(tmp_path / "r") as reader:
        assert reader.step_rate(100) == pytest.approx(100.0)  # fixture: 0.01 s a step
        rows = reader.bucket_stats(("loss", "clipped"), 128, 0)
        assert [r[0] for r in rows] == [0, 1, 2, 3]
        assert rows[0][1:3] == (0, 127) and rows[-1][1:3] == (384, 499)
        assert rows[0][6] == 128  # count of non-NULL losses in the first bucket
        assert reader.first_step() == 0
        lean = reader.bucket_stats(("loss", "clipped"), 128, 0,
                                   only={"loss": ("sum", "count"), "clipped": ("max",)})
        for full, part in zip(rows, lean, strict=True):
            assert part[:3] == full[:3] and part[5:7] == full[5:7] and part[8] == full[8]
            assert part[3] is part[4] is part[7] is part[9] is part[10] is None


# -- the reader thread, without a UI ------------------------------------------------------


class Inbox:
    """Stands in for a widget: keeps what the reader posts to it."""

    def __init__(self) -> None:
        self.messages: list[object] = []

    def post_message(self, message: object) -> bool:
        self.messages.append(message)
        return True


def subscribed(poller: Poller) -> Inbox:
    inbox = Inbox()
    poller.hub.subscribe(inbox, RUNS)  # type: ignore[arg-type]
    return inbox


def _tick(poller: Poller, inbox: Inbox) -> dict[str, RunRow] | None:
    """One pass (until the sparkline backlog is done): the rows it published, by name."""
    inbox.messages.clear()
    while poller.tick():
        pass
    updates = [m for m in inbox.messages if isinstance(m, RunsUpdated)]
    return {r.name: r for r in updates[-1].rows.values()} if updates else None


def test_poller_reads_only_what_changed(tmp_path: Path) -> None:
    make_run(tmp_path / "done", 300, spike_at=100).close()
    live = make_run(tmp_path / "live", 50, state="running")
    poller = Poller(tmp_path)
    inbox = subscribed(poller)
    rows = _tick(poller, inbox)
    assert rows is not None and set(rows) == {"done", "live"}
    assert rows["done"].status == "finished" and rows["done"].step == 299
    assert max(v for v in rows["done"].norm_spark if v is not None) == 1000.0
    done = poller.watches[str(tmp_path / "done")]
    assert done.reader is None  # a finished run gives back its connection
    # Nothing changed: the finished run is not even stat'ed again, nothing is published.
    stated = done.stated
    assert _tick(poller, inbox) is None
    assert done.stated == stated
    # One new step on the live run: an update with it.
    live.append_steps(step_columns(50, 1, loss=123.4))
    time.sleep(0.01)
    rows = _tick(poller, inbox)
    assert rows is not None and rows["live"].loss == 123.4 and rows["live"].step == 50
    # A new run appears by itself (discovery runs at most once a second).
    make_run(tmp_path / "sweep" / "new", 10).close()
    poller._discovered = -1e9
    rows = _tick(poller, inbox)
    assert rows is not None and "sweep/new" in rows
    live.close()
    for w in poller.watches.values():
        w.close()


def test_finished_runs_cost_no_reads_per_update(tmp_path: Path) -> None:
    """Beside 30 finished runs, a pass reads the one live run only: no SQL on the others."""
    for i in range(30):
        make_run(tmp_path / f"done{i:02d}", 50).close()
    live = make_run(tmp_path / "live", 50, state="running")
    poller = Poller(tmp_path)
    inbox = subscribed(poller)
    _tick(poller, inbox)
    queries: list[str] = []
    for w in poller.watches.values():
        assert (w.reader is None) == (w.name != "live")
    live_watch = poller.watches[str(tmp_path / "live")]
    assert live_watch.reader is not None
    live_watch.reader.conn.set_trace_callback(queries.append)
    for step in range(50, 55):
        live.append_steps(step_columns(step, 1))
        time.sleep(0.01)
        rows = _tick(poller, inbox)
        assert rows is not None and rows["live"].step == step
    assert all(w.reader is None for w in poller.watches.values() if w.name != "live")
    assert 0 < len(queries) <= 5 * 4  # status, latest, new rows: a few queries a step
    live.close()
    for w in poller.watches.values():
        w.close()


def test_poller_follows_a_truncated_run(tmp_path: Path) -> None:
    writer = make_run(tmp_path / "r", 400, state="running")
    poller = Poller(tmp_path)
    inbox = subscribed(poller)
    _tick(poller, inbox)
    writer.truncate_after(99)  # a resume from a checkpoint at step 99
    writer.append_steps(step_columns(100, 5, loss=7.0))
    time.sleep(0.01)
    rows = _tick(poller, inbox)
    assert rows is not None and rows["r"].step == 104 and rows["r"].loss == 7.0
    w = poller.watches[str(tmp_path / "r")]
    assert w.spark.last_step == 104
    writer.close()
    w.close()


def test_run_row_and_param_panel_text() -> None:
    row = RunRow(path="/x/a", name="a", status="running", step=12, total=100, rate=3.5,
                 loss=0.25, grad_norm=2.0, clip_rate=0.75, max_norm=1.0, lr=0.01,
                 loss_spark=(3.0, 2.0, 1.0), norm_spark=(1.0, 9.0))
    cells = [c.cell(row).plain.strip() for c in RUN_COLUMNS]
    assert cells[:6] == ["running", "13/100", "0.25", "2", "1", "75%"]
    assert all(len(c.cell(row).plain) <= c.width for c in RUN_COLUMNS)
    panel = ParamPanel(300, (900, 2899), tuple(
        ParamInfo(f"model.blocks.{i}.mlp.fc{i % 2}.weight", 1.0 / (i + 1), 2.0, (1.0, 2.0))
        for i in range(50)))
    text = param_table(panel, 78).plain.splitlines()
    assert text[0].startswith("top 50 of 300 parameters")
    assert len(text) == 52 and all(len(line) <= 78 for line in text)


def test_watch_refuses_a_file_for_a_runs_directory(tmp_path: Path) -> None:
    from clipdash.tui.app import main

    (tmp_path / "f").write_text("")
    assert main(tmp_path / "f") == 2


def test_poller_reads_sparklines_of_visible_rows_only_and_spots_lost_runs(
        tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        make_run(tmp_path / name, 50).close()
    stale = make_run(tmp_path / "d", 50, state="running")
    stale.conn.execute("UPDATE status SET heartbeat = heartbeat - 60")  # its trainer died
    poller = Poller(tmp_path)
    inbox = subscribed(poller)
    poller.set_visible([str(tmp_path / "b")])
    rows = _tick(poller, inbox)
    assert rows is not None
    assert rows["b"].norm_spark and not rows["a"].norm_spark and not rows["c"].norm_spark
    assert rows["d"].status == "lost"
    stale.close()
    for w in poller.watches.values():
        w.close()


# -- the exploding run --------------------------------------------------------------------


def test_exploding_run_scales_to_the_largest_finite_value_and_marks_nonfinite_steps(
        tmp_path: Path) -> None:
    """Steps 0-99 finite and growing to 3.3e18; every 10th step from 100 on is inf/NaN."""
    import numpy as np

    writer = make_run(tmp_path / "r", 0)
    cols = step_columns(0, 200)
    pre = np.geomspace(1.0, 3.3e18, 200)
    finite = np.ones(200, bool)
    finite[100::10] = False
    pre[100::10] = np.inf
    pre[105::10] = np.nan
    cols.update(grad_norm_pre=pre, finite=finite)
    writer.append_steps(cols)
    writer.close()
    with RunReader(tmp_path / "r") as reader:
        sql = Buckets(("grad_norm_pre", "finite"), 20)
        sql.load(reader.bucket_stats(("grad_norm_pre", "finite"), 10, 0), 0, 10)
    grad, flags = sql.band("grad_norm_pre"), sql.band("finite")
    finite_max = max(float(v) for v, ok in zip(pre, finite, strict=True) if ok and v == v)
    assert max(v for v in grad.ymax if v is not None) == pytest.approx(finite_max)
    assert all(m is not None and m < 1e300 for m in grad.ymean)  # no inf means
    rows = render_plot([Line(grad, "yellow")], 48, 10, nonfinite=flags)
    top = rows[0].plain
    assert top.startswith(" nonfin") and top.count("✖") > 0
    cells = top[8:]
    # The marks sit in the right half (steps 100-199), none in the left half.
    assert "✖" not in cells[:20] and "✖" in cells[22:]
    assert fmt_num(finite_max) in rows[1].plain  # the y scale tops out at the largest finite
    # Live folding agrees with SQL on finite-only aggregates.
    live = Buckets(("grad_norm_pre",), 20)
    live.add(list(range(200)), [list(pre)])
    assert max(v for v in live.band("grad_norm_pre").ymax if v is not None) == finite_max


def test_a_sparkline_of_only_nonfinite_values_still_shows() -> None:
    row = RunRow(path="/x", name="x", status="failed", norm_spark=(None, None, None))
    spark = next(c for c in RUN_COLUMNS if c.key == "grad_spark").cell(row).plain
    assert spark.strip() == "✖✖✖"


# -- the run list's layout -----------------------------------------------------------------


def test_sweep_members_are_named_by_what_varies() -> None:
    names = ["max_norm=0.5,scheduler=CyclicLR", "max_norm=1,scheduler=CyclicLR",
             "max_norm=0.5,scheduler=StepLR"]
    assert member_labels(names) == {names[0]: "max_norm=0.5 CyclicLR",
                                    names[1]: "max_norm=1 CyclicLR",
                                    names[2]: "max_norm=0.5 StepLR"}
    same = ["lr=0.1,seed=0", "lr=0.2,seed=0"]
    assert member_labels(same) == {same[0]: "lr=0.1", same[1]: "lr=0.2"}
    assert member_labels(["solo"]) == {"solo": "solo"}


def test_layout_puts_live_runs_first_and_groups_sweeps() -> None:
    def row(name: str, status: str, started: float = 0.0) -> RunRow:
        return RunRow(path=f"/r/{name}", name=name, status=status, started=started)

    rows = {r.path: r for r in (row("a", "finished"), row("b", "running", 10.0),
                                row("sw/x=1", "finished"), row("sw/x=2", "running", 5.0),
                                row("z-new", "running", 20.0))}
    items = layout(rows, "", set())
    assert [i.label for i in items] == ["z-new", "b", "sw", "x=2", "x=1", "a"]
    assert items[2].row is None and items[2].members == 2 and items[2].live == 1
    shut = layout(rows, "", {"sw"})
    assert [i.label for i in shut] == ["z-new", "b", "sw", "a"] and shut[2].collapsed
    assert [i.label for i in layout(rows, "x=1", set())] == ["sw", "x=1"]


def test_names_with_terminal_escapes_are_shown_escaped() -> None:
    from clipdash.tui.render import printable

    assert printable("run\x1b]0;pwned\x07\n") == "run\\x1b]0;pwned\\x07\\n"
    rows = {"/r/e": RunRow(path="/r/e", name="e\x1b[2J", status="finished")}
    assert layout(rows, "", set())[0].label == "e\\x1b[2J"


def test_the_reader_takes_its_clock(tmp_path: Path) -> None:
    """A frozen clock one minute ahead: a live run's heartbeat is stale, so it reads "lost"."""
    writer = make_run(tmp_path / "r", 10, state="running")
    ahead = time.time() + 60
    poller = Poller(tmp_path, clock=lambda: ahead)
    rows = _tick(poller, subscribed(poller))
    assert rows is not None and rows["r"].status == "lost"
    now = Poller(tmp_path)
    rows = _tick(now, subscribed(now))
    assert rows is not None and rows["r"].status == "running"
    writer.close()
    for p in (poller, now):
        for w in p.watches.values():
            w.close()


def test_finished_runs_sparklines_come_from_the_cache_the_second_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdash.tui.sparkcache import SparkCache

    runs = tmp_path / "runs"
    make_run(runs / "done", 300, spike_at=100).close()
    live = make_run(runs / "live", 30, state="running")
    first = Poller(runs, cache=SparkCache(tmp_path / "cache.sqlite"))
    rows = _tick(first, subscribed(first))
    assert rows is not None and max(v for v in rows["done"].norm_spark if v) == 1000.0
    for w in first.watches.values():
        w.close()
    first.cache.close()  # type: ignore[union-attr]

    scans: list[str] = []
    real = RunReader.bucket_stats

    def counting(self: RunReader, *args: object, **kwargs: object) -> object:
        scans.append(self.run_dir.name)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RunReader, "bucket_stats", counting)
    second = Poller(runs, cache=SparkCache(tmp_path / "cache.sqlite"))
    inbox = subscribed(second)
    second.tick()  # one pass: the finished run's sparkline is there at once
    published = [m for m in inbox.messages if isinstance(m, RunsUpdated)]
    done = {r.name: r for r in published[-1].rows.values()}["done"]
    assert done.norm_spark == rows["done"].norm_spark and done.loss_spark == rows["done"].loss_spark
    while second.tick():
        pass
    assert scans == ["live"]  # only the live run was scanned
    live.close()
    for w in second.watches.values():
        w.close()
    # A changed file is not taken from the cache: a resumed and finished-again run is rescanned.
    from clipdash.store.writer import RunWriter

    writer = RunWriter(runs / "done", resume=True)
    writer.append_steps(step_columns(300, 5))
    writer.set_state("finished")
    writer.close()
    scans.clear()
    third = Poller(runs, cache=SparkCache(tmp_path / "cache.sqlite"))
    rows = _tick(third, subscribed(third))
    assert "done" in scans and rows is not None and rows["done"].step == 304
    for w in third.watches.values():
        w.close()


def test_the_views_pick_step_columns_the_store_declares() -> None:
    """A typo or a field the store dropped fails when the selection is made, naming it."""
    with pytest.raises(ValueError, match="grad_norm_prf"):
        step_selection("loss", "grad_norm_prf")
    assert step_selection("loss", "lr") == ("loss", "lr")
    picked = {*SPARK_COLUMNS, *DETAIL_COLUMNS, COMPARE_TOP, *COMPARE_SECOND}
    assert picked <= set(STEP_COLUMNS)
    drawn = {s.column for _, series in DETAIL_PLOTS.values() for s in series}
    assert set(DETAIL_COLUMNS) == drawn | {"finite"}  # the run view reads what it draws


def test_the_help_is_the_keymap_and_a_legend_of_every_mark() -> None:
    from clipdash.keymap import DASHBOARD_KEYS
    from clipdash.tui.dialogs import help_text
    from clipdash.tui.widgets import EVENT_MARKS, OTHER_EVENT

    lines = help_text().plain.splitlines()
    for key, what in DASHBOARD_KEYS:
        assert any(ln.split() and ln.startswith(f"  {key} ") and ln.endswith(what)
                   for ln in lines), key
    for mark in (*EVENT_MARKS.values(), OTHER_EVENT):
        assert f"  {mark.char}  {mark.meaning}" in lines
    assert EVENT_MARKS["alert"].char == "!" and EVENT_MARKS["rewind"].char == "↺"
    assert sum(ln.startswith("  !2 ") for ln in lines) == 2  # unseen and seen
