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
from clipdash.tui.buckets import Band, Buckets, width_for
from clipdash.tui.messages import ParamInfo, ParamPanel, RunsUpdated
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
from clipdash.tui.widgets import elide, param_table, row_cells


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


# -- the reader thread, without a UI ------------------------------------------------------


def _tick(poller: Poller, posted: list[object]) -> list[object]:
    posted.clear()
    while poller.tick():  # until the sparkline backlog is done
        pass
    return [m for m in posted if isinstance(m, RunsUpdated)]


def test_poller_reads_only_what_changed(tmp_path: Path) -> None:
    make_run(tmp_path / "done", 300, spike_at=100).close()
    live = make_run(tmp_path / "live", 50, state="running")
    posted: list[object] = []
    poller = Poller(posted.append, tmp_path)
    first = _tick(poller, posted)
    rows = {r.name: r for m in first for r in m.rows}  # type: ignore[attr-defined]
    assert set(rows) == {"done", "live"}
    assert rows["done"].status == "finished" and rows["done"].step == 299
    assert max(v for v in rows["done"].norm_spark if v is not None) == 1000.0
    done = poller.watches[str(tmp_path / "done")]
    assert done.reader is None  # a finished run gives back its connection
    # Nothing changed: nothing is read, nothing is posted.
    checked = done.checked
    assert _tick(poller, posted) == []
    assert done.checked == checked
    # One new step on the live run: one row update with it.
    live.append_steps(step_columns(50, 1, loss=123.4))
    time.sleep(0.01)
    update = _tick(poller, posted)
    assert [r.loss for m in update for r in m.rows] == [123.4]  # type: ignore[attr-defined]
    # A new run appears by itself (discovery runs at most once a second).
    make_run(tmp_path / "sweep" / "new", 10).close()
    poller._discovered = -1e9
    names = [r.name for m in _tick(poller, posted) for r in m.rows]  # type: ignore[attr-defined]
    assert "sweep/new" in names
    live.close()
    for w in poller.watches.values():
        w.close()


def test_poller_follows_a_truncated_run(tmp_path: Path) -> None:
    writer = make_run(tmp_path / "r", 400, state="running")
    posted: list[object] = []
    poller = Poller(posted.append, tmp_path)
    _tick(poller, posted)
    writer.truncate_after(99)  # a resume from a checkpoint at step 99
    writer.append_steps(step_columns(100, 5, loss=7.0))
    time.sleep(0.01)
    rows = [r for m in _tick(poller, posted) for r in m.rows]  # type: ignore[attr-defined]
    assert rows[-1].step == 104 and rows[-1].loss == 7.0
    w = poller.watches[str(tmp_path / "r")]
    assert w.spark.last_step == 104
    writer.close()
    w.close()


def test_run_row_and_param_panel_text() -> None:
    from clipdash.tui.messages import RunRow

    row = RunRow(path="/x/a", name="a", status="running", step=12, total=100, rate=3.5,
                 loss=0.25, grad_norm=2.0, clip_rate=0.75, max_norm=1.0, lr=0.01,
                 loss_spark=(3.0, 2.0, 1.0), norm_spark=(1.0, 9.0))
    cells = [c.plain.strip() for c in row_cells(row, marked=True)]
    assert cells[:7] == ["● a", "running", "13/100", "0.25", "2", "1", "75%"]
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
    posted: list[object] = []
    poller = Poller(posted.append, tmp_path)
    poller.set_visible([str(tmp_path / "b")])
    rows = {r.name: r for m in _tick(poller, posted) for r in m.rows}  # type: ignore[attr-defined]
    assert rows["b"].norm_spark and not rows["a"].norm_spark and not rows["c"].norm_spark
    assert rows["d"].status == "lost"
    stale.close()
    for w in poller.watches.values():
        w.close()
