"""`clipdash lr-find`: the exponential ramp's closed form, early stop, suggestions, the record."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from clipdash.analysis.lr_find import DivergenceWatch, lr_at, smooth, suggest
from clipdash.cli import main
from clipdash.store import RunReader

CONFIG = """
seed = 0
device = "cpu"
[model]
kind = "mlp"
hidden = [16]
[data]
kind = "regression"
n_samples = 640
batch_size = 32
[optimizer]
name = "SGD"
lr = 0.01
[scheduler]
name = "StepLR"
step_size = 1
[clip]
max_norm = 1000.0
[train]
epochs = 5
"""


def run_cli(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return json.loads(out.getvalue())


def test_lr_at_is_the_closed_form():
    start, end, steps = 1e-7, 10.0, 100
    for i in (0, 1, 37, 99):
        assert lr_at(i, start, end, steps) == pytest.approx(start * (end / start) ** (i / 99))
    assert lr_at(0, start, end, steps) == start
    assert lr_at(99, start, end, steps) == pytest.approx(end)
    ratios = [lr_at(i + 1, 1e-3, 1.0, 10) / lr_at(i, 1e-3, 1.0, 10) for i in range(9)]
    assert ratios == pytest.approx([1000 ** (1 / 9)] * 9)  # constant ratio: exponential


def test_range_test_records_the_ramp_and_stops_on_divergence(tmp_path: Path):
    config = tmp_path / "reg.toml"
    config.write_text(CONFIG)
    start, end, steps = 1e-4, 1e3, 60
    data = run_cli("lr-find", str(config), "--start-lr", str(start), "--end-lr", str(end),
                   "--steps", str(steps), "--runs-dir", str(tmp_path / "runs"),
                   "--name", "lr", "--json")
    n = len(data["lrs"])
    assert data["stopped_early"] is True and 10 < n < steps  # SGD at lr ~1e2 diverges
    assert data["lrs"] == pytest.approx([lr_at(i, start, end, steps) for i in range(n)],
                                        rel=1e-12)
    run_dir = tmp_path / "runs" / "lr"
    with RunReader(run_dir) as reader:
        rows = reader.steps_after(-1, ("step", "lr", "loss"))
        assert reader.status() == "finished"
        assert reader.meta()["lr_find"] == {"start_lr": start, "end_lr": end, "steps": steps}
        assert any(e["kind"] == "lr_find" for e in reader.events_after())
    assert rows["step"] == list(range(n))
    assert rows["lr"] == pytest.approx(data["lrs"], rel=1e-6)
    finite = [v for v in data["losses"] if v is not None]
    assert rows["loss"][: len(finite)] == pytest.approx(finite, rel=1e-6)
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    assert "scheduler" not in cfg and cfg["train"]["max_steps"] == steps
    assert cfg["optimizer"]["lr"] == start
    s = data["suggestion"]
    assert s["base_lr"] < s["steepest"] <= s["max_lr"] < data["lrs"][-1]
    assert s["min_loss_div10"] == pytest.approx(s["max_lr"] / 10)


def test_divergence_watch_rule():
    watch = DivergenceWatch(factor=4.0, beta=0.5)
    assert not any(watch.update(v) for v in [1.0, 0.8, 0.6, 0.5])
    # the bias-corrected EMA must exceed 4x its best; one moderate spike does not do it
    assert not watch.update(1.5)
    assert watch.update(50.0)
    assert DivergenceWatch().update(math.nan)


def test_suggestions_on_a_known_curve():
    lrs = np.geomspace(1e-5, 1.0, 101)
    x = np.log10(lrs)  # -5 .. 0
    # flat at 2, falls steepest at 1e-3 (a logistic step down to 1), minimum near 1e-1, then up
    loss = 1.0 + 1.0 / (1.0 + np.exp(4 * (x + 3))) + 0.5 * np.maximum(0, x + 1) ** 2 * 8
    s = suggest(lrs.tolist(), loss.tolist())
    assert s.steepest == pytest.approx(1e-3, rel=0.15)
    assert 0.05 < s.max_lr <= 0.11
    assert 1e-4 < s.base_lr < 1e-3
    assert s.min_loss_div10 == pytest.approx(s.max_lr / 10)
    flat = suggest(lrs.tolist(), [1.0] * 101)
    assert flat.max_lr is None and "never fell" in flat.note


def test_smooth_is_a_centred_mean_that_skips_nan():
    out = smooth([1.0, 2.0, math.nan, 4.0, 5.0], window=3)
    assert out.tolist() == pytest.approx([1.5, 1.5, 3.0, 4.5, 4.5])
