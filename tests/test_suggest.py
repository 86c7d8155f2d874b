"""`clipdash suggest`: AutoClip's percentile of the recorded norms, histogram, clip fractions."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdash.analysis.suggest import log_histogram, render_histogram, suggest
from clipdash.cli import main
from clipdash.store import RunReader
from clipdash.track.tracker import Tracker


@pytest.fixture(scope="module")
def norms_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A run whose pre-clip norms are log-normal with spikes, plus a NaN and an inf step."""
    rng = np.random.default_rng(7)
    norms = np.exp(rng.normal(0.0, 0.5, 300))
    norms[::37] *= 25
    norms[5], norms[77] = math.nan, math.inf
    run_dir = tmp_path_factory.mktemp("suggest") / "norms"
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.0)
    with Tracker(None, opt, run_dir=run_dir, max_norm=2.0, tensorboard=False) as tracker:
        for n in norms.tolist():
            p.grad = torch.tensor([2.0, 1.0, 2.0]) / 3 * n  # unit direction times n
            tracker.clip()
            tracker.step(1.0)
    return run_dir, norms


def cli_json(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return json.loads(out.getvalue())


def test_suggestion_is_numpy_percentile_of_recorded_norms(norms_run):
    run_dir, norms = norms_run
    with RunReader(run_dir) as reader:
        recorded = reader.steps_after(-1, ("grad_norm_pre",))["grad_norm_pre"]
    finite_rec = np.array([v for v in recorded if v is not None and math.isfinite(v)])
    assert len(finite_rec) == 298
    finite_true = norms[np.isfinite(norms)]
    for p in (10.0, 33.0):
        data = cli_json("suggest", str(run_dir), "--percentile", str(p), "--json")
        assert data["max_norm"] == pytest.approx(float(np.percentile(finite_rec, p)), rel=1e-12)
        # and the recorded float32 norms are the ones the test fed in
        assert data["max_norm"] == pytest.approx(float(np.percentile(finite_true, p)), rel=1e-5)
        assert data["n_steps"] == 300 and data["n_finite"] == 298
        for c in data["candidates"]:
            threshold = float(np.percentile(finite_rec, c["percentile"]))
            assert c["max_norm"] == pytest.approx(threshold, rel=1e-12)
            assert c["clip_fraction"] == pytest.approx(np.mean(finite_rec > threshold))
        assert {c["percentile"] for c in data["candidates"]} == {10, 25, 50, 75, 90, p}
    assert data["actual_clip_rate"] == pytest.approx(np.mean(norms[np.isfinite(norms)] > 2.0),
                                                     abs=1 / 300 + 1e-9)


def test_text_output_has_histogram_and_table(norms_run):
    run_dir, _ = norms_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["suggest", str(run_dir), "--bins", "12"]) == 0
    text = out.getvalue()
    assert "298 finite pre-clip gradient norms (2 non-finite left out)" in text
    assert "<- p10" in text and "<- suggested" in text
    assert "suggested: [clip] max_norm = " in text
    bars = [ln for ln in text.splitlines() if " - " in ln and ln.strip()[0].isdigit()]
    assert len(bars) == 12
    assert sum(int(ln.split()[3]) for ln in bars) == 298


def test_log_histogram_bins():
    norms = np.array([0.0, 1.0, 10.0, 100.0, 100.0])
    edges, counts, zeros = log_histogram(norms, bins=2)
    np.testing.assert_allclose(edges, [1.0, 10.0, 100.0])
    assert counts.tolist() == [1, 3] and zeros == 1
    lines = render_histogram(norms, {"p50": 50.0}, bins=2, width=6)
    assert lines[2].endswith("###### <- p50") or lines[2].endswith("<- p50")
    assert lines[-1].split()[-1] == "1"  # the zero-norm steps, counted apart


def test_no_finite_norm_is_an_error():
    with pytest.raises(ValueError):
        suggest([None, math.inf])
    with pytest.raises(ValueError):
        suggest([1.0], percentile=0)


def test_mostly_nonfinite_run_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """23 finite norms out of 100: the suggestion stands, with a warning in every output."""
    from tui_fixtures import make_run, step_columns

    writer = make_run(tmp_path / "exploded", 23)
    cols = step_columns(23, 77)
    cols["grad_norm_pre"] = np.full(77, math.inf)
    cols["finite"] = np.zeros(77, bool)
    writer.append_steps(cols)
    writer.close()
    assert main(["suggest", str(tmp_path / "exploded")]) == 0
    out, err = capsys.readouterr()
    expected = ("77 of 100 steps (77.0%) had a non-finite gradient norm: this suggestion rests "
                "on only 23 finite steps")
    assert expected in err and f"warning: {expected}" in out
    data = cli_json("suggest", str(tmp_path / "exploded"), "--json")
    assert data["warning"].startswith(expected) and data["n_finite"] == 23
    assert data["max_norm"] == pytest.approx(np.percentile(step_columns(0, 23)["grad_norm_pre"],
                                                           10))


def test_a_mostly_finite_run_has_no_warning(norms_run):
    assert cli_json("suggest", str(norms_run[0]), "--json")["warning"] is None
