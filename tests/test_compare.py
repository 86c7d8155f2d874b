"""`clipdash compare` and the metrics behind the results table, on runs with known numbers."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdash.analysis.compare import metric_vs_max_norm, series_name
from clipdash.analysis.metrics import RunMetrics, rank, run_metrics, table
from clipdash.analysis.textplot import plot
from clipdash.cli import main
from clipdash.engine.config import dump_toml
from clipdash.track.tracker import Tracker


def make_run(run_dir: Path, losses: list[float], norms: list[float], max_norm: float,
             scheduler: str | None = "StepLR", evals: dict[str, float] | None = None,
             hparams: dict | None = None) -> Path:
    """A recorded run whose every loss and pre-clip norm is chosen by the test."""
    cfg: dict = {"optimizer": {"name": "SGD", "lr": 0.1}, "clip": {"max_norm": max_norm}}
    if scheduler:
        cfg["scheduler"] = {"name": scheduler}
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dump_toml(cfg))
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    meta = {"hparams": hparams} if hparams else None
    with Tracker(None, opt, run_dir=run_dir, max_norm=max_norm, tensorboard=False,
                 nonfinite="continue", meta=meta) as tracker:
        for loss, norm in zip(losses, norms, strict=True):
            p.grad = torch.tensor([0.6, 0.8]) * norm
            tracker.clip()
            tracker.step(loss)
        if evals:
            tracker.log_eval(evals)
    return run_dir


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small "sweep": 2 schedulers x 2 max_norms, val accuracy known per run."""
    rng = np.random.default_rng(0)
    sweep = tmp_path / "runs" / "grid"
    acc = {("StepLR", 0.5): 0.6, ("StepLR", 2.0): 0.8, ("CyclicLR", 0.5): 0.7,
           ("CyclicLR", 2.0): 0.5}
    for (sched, mn), a in acc.items():
        norms = rng.uniform(0.2, 3.0, 40).tolist()
        losses = np.linspace(1.0, 0.4, 40).tolist()
        make_run(sweep / f"max_norm={mn:g},scheduler={sched}", losses, norms, mn, sched,
                 {"accuracy": a, "loss": 1 - a},
                 {"clip.max_norm": mn, "scheduler": sched})
    return sweep


def test_run_metrics_are_the_recorded_numbers(tmp_path: Path):
    rng = np.random.default_rng(1)
    norms = rng.uniform(0.1, 2.0, 40)
    losses = np.linspace(2.0, 1.0, 40)
    run = make_run(tmp_path / "a", losses.tolist(), norms.tolist(), 1.0, "ExponentialLR",
                   {"loss": 0.9})
    m = run_metrics(run)
    assert m.status == "finished" and m.steps == 40
    assert m.train_loss == pytest.approx(losses[-4:].mean())  # last 10% of the steps
    assert m.clip_rate == pytest.approx(np.mean(norms + 1e-6 > 1.0))
    assert m.grad_norm == pytest.approx(norms.mean(), rel=1e-6)
    assert m.val_loss == pytest.approx(0.9) and m.val_accuracy is None
    assert m.max_norm == 1.0 and m.scheduler == "ExponentialLR" and m.lr == 0.1
    assert m.diverged is False


def test_divergence_is_a_nonfinite_loss_or_a_blowup(tmp_path: Path):
    norms = [1.0] * 60
    flat = np.full(60, 0.5)
    nan = flat.copy()
    nan[30] = math.nan
    blowup = np.concatenate([np.linspace(1.0, 0.1, 50), np.full(10, 5.0)])
    spike = flat.copy()
    spike[20] = 50.0  # one spike, recovered from: not a divergence
    got = {name: run_metrics(make_run(tmp_path / name, losses.tolist(), norms, 1.0)).diverged
           for name, losses in (("flat", flat), ("nan", nan), ("blowup", blowup),
                                ("spike", spike))}
    assert got == {"flat": False, "nan": True, "blowup": True, "spike": False}


def test_rank_prefers_accuracy_then_loss():
    a = RunMetrics("a", "", "finished", val_loss=0.3, val_accuracy=0.7)
    b = RunMetrics("b", "", "finished", val_loss=0.2, val_accuracy=0.9)
    c = RunMetrics("c", "", "failed")
    metric, order = rank([a, c, b])
    assert metric == "val_accuracy" and [r.name for r in order] == ["b", "a", "c"]
    assert [r.rank for r in order] == [1, 2, None]
    metric, order = rank([RunMetrics("x", "", "finished", val_loss=0.5),
                          RunMetrics("y", "", "finished", val_loss=0.25)])
    assert metric == "val_loss" and [r.name for r in order] == ["y", "x"]
    metric, order = rank([a, b], "clip_rate")
    assert metric == "clip_rate"
    with pytest.raises(ValueError):
        rank([a], "bogus")
    lines = table(order, "val_loss")
    assert lines[0].split()[:3] == ["#", "RUN", "VAL_LOSS"]


def test_compare_cli_on_a_sweep_folder(folder: Path):
    runs_dir = folder.parent
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "grid", "--runs-dir", str(runs_dir), "--json"]) == 0
    data = json.loads(out.getvalue())
    assert data["metric"] == "val_accuracy"
    assert [r["name"] for r in data["runs"]] == [
        "grid/max_norm=2,scheduler=StepLR", "grid/max_norm=0.5,scheduler=CyclicLR",
        "grid/max_norm=0.5,scheduler=StepLR", "grid/max_norm=2,scheduler=CyclicLR"]
    assert [r["val_accuracy"] for r in data["runs"]] == pytest.approx([0.8, 0.7, 0.6, 0.5])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", str(folder / "max_norm=2,scheduler=StepLR"),
                     str(folder / "max_norm=0.5,scheduler=StepLR"), "--metric", "val_loss"]) == 0
    text = out.getvalue()
    assert "2 runs, ranked by val_loss" in text
    assert "val_loss (lower is better)" in text and "max_norm" in text


def test_metric_vs_max_norm_plot_places_points(folder: Path):
    runs = [run_metrics(p) for p in sorted(folder.iterdir())]
    assert {series_name(r) for r in runs} == {"StepLR", "CyclicLR"}
    lines = metric_vs_max_norm(runs, "val_accuracy", width=21, height=4)
    assert lines[0] == "val_accuracy (higher is better)"
    rows = [ln.split("|", 1)[1] for ln in lines[1:5]]
    # CyclicLR (o): 0.7 @ 0.5, 0.5 @ 2; StepLR (x): 0.6 @ 0.5, 0.8 @ 2 -> rows 0.8, 0.7, 0.6, 0.5
    assert rows[0].endswith("x") and rows[3].endswith("o")
    assert rows[1].startswith("o") and rows[2].startswith("x")
    assert lines[-1].split() == ["o", "CyclicLR", "x", "StepLR"]
    same = metric_vs_max_norm(runs[:1], "val_accuracy")
    assert same[0].startswith("no plot of val_accuracy against max_norm: the only run with")


def test_textplot_axes_and_log_scale():
    lines = plot({"s": [(1.0, 1.0), (10.0, 2.0), (100.0, 3.0)]}, width=11, height=3, logx=True)
    rows = [ln.split("|", 1)[1] for ln in lines[:3]]
    assert rows == ["          o", "     o", "o"]  # log x: 10 sits in the middle
    assert lines[4].split() == ["1", "10", "100"]


def test_table_has_a_max_norm_column(folder: Path):
    runs = [run_metrics(p, p.name) for p in sorted(folder.iterdir())]
    metric, ordered = rank(runs, "val")
    lines = table(ordered, metric)
    header = lines[0].split()
    col = header.index("MAX_NORM")
    assert {ln.split()[1]: ln.split()[col] for ln in lines[1:]} == {
        r.name: f"{r.max_norm:g}" for r in ordered}
    value = RunMetrics(name="v", path="v", status="finished", clip_mode="value", max_norm=1.0)
    lines = table([value], "train_loss")
    assert lines[1].split()[lines[0].split().index("MAX_NORM")] == "value"


def test_no_plot_line_says_why(folder: Path, tmp_path: Path):
    runs = [run_metrics(p) for p in sorted(folder.iterdir()) if "max_norm=2" in p.name]
    assert metric_vs_max_norm(runs, "val_accuracy") == [
        "no plot of val_accuracy against max_norm: all 2 runs with a val_accuracy value use "
        "max_norm 2; compare runs with different max_norm values to see a trend"]
    none = [RunMetrics(name="a", path="a", status="failed", max_norm=1.0)]
    assert metric_vs_max_norm(none, "val_loss") == [
        "no plot of val_loss against max_norm: none of the 1 runs has a val_loss value"]


def test_legend_lists_only_what_is_drawn():
    lines = plot({"drawn": [(1.0, 1.0), (2.0, 2.0)], "nan only": [(1.0, math.nan)],
                  "also": [(1.5, 3.0)]}, width=10, height=4,
                 vlines={"m max_lr": 1.5, "o off-range": 50.0})
    legend = lines[-1]
    assert legend.strip().split("   ") == ["o drawn", "+ also", "m| max_lr"]
    assert "nan only" not in legend and "off-range" not in legend
