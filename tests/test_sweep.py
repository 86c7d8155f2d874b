"""`clipdash sweep`: grid expansion, names, parallel runs, ranking, resume, broken combinations."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
import textwrap
import tomllib
from pathlib import Path

import pytest

from clipdash.cli import main
from clipdash.engine.errors import ConfigError
from clipdash.engine.sweep import flatten, labels, plan_sweep, safe_name, short_keys
from clipdash.store import RunReader, find_runs

BASE = """
seed = 0
device = "cpu"
[model]
kind = "mlp"
hidden = [8]
[data]
kind = "classification"
n_samples = 160
batch_size = 16
[optimizer]
name = "SGD"
lr = 0.1
[train]
max_steps = 8
eval_every = 4
"""
GRID = """
[sweep]
"clip.max_norm" = [0.05, 5.0]
scheduler = [ { name = "StepLR", step_size = 1, gamma = 0.5, interval = "step" },
              { name = "ExponentialLR", gamma = 0.9, interval = "step" } ]
"""
NAMES = {
    (0.05, "StepLR"): "max_norm=0.05,scheduler=StepLR",
    (0.05, "ExponentialLR"): "max_norm=0.05,scheduler=ExponentialLR",
    (5.0, "StepLR"): "max_norm=5,scheduler=StepLR",
    (5.0, "ExponentialLR"): "max_norm=5,scheduler=ExponentialLR",
}
GAMMA = {"StepLR": 0.5, "ExponentialLR": 0.9}


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("sweep")
    config = root / "grid.toml"
    config.write_text(BASE + GRID)
    runs = root / "runs"
    code, out, err = cli("sweep", str(config), "--runs-dir", str(runs), "--jobs", "2", "--json")
    assert code == 0, err
    return config, runs, json.loads(out)


def test_every_combination_is_an_ordinary_run_with_its_values(swept):
    _, runs, results = swept
    folder = runs / "grid"
    assert sorted(p.name for p in find_runs(runs)) == sorted(NAMES.values())
    assert all(p.parent == folder for p in find_runs(runs))  # `clipdash watch` finds them
    for (max_norm, sched), name in NAMES.items():
        run_dir = folder / name
        cfg = tomllib.loads((run_dir / "config.toml").read_text())
        assert "sweep" not in cfg
        assert cfg["clip"]["max_norm"] == max_norm
        assert cfg["scheduler"]["name"] == sched
        with RunReader(run_dir) as reader:
            assert reader.status() == "finished"
            rows = reader.steps_after(-1, ("step", "lr", "max_norm", "clipped"))
            meta = reader.meta()
        assert rows["step"] == list(range(8))
        assert rows["max_norm"] == [pytest.approx(max_norm)] * 8
        want_lr = [0.1 * GAMMA[sched] ** k for k in range(8)]
        assert rows["lr"] == [pytest.approx(v, rel=1e-6) for v in want_lr]
        # 0.05 is far below these gradient norms (~0.5), 5 far above: all or nothing clipped
        assert sum(rows["clipped"]) == (8 if max_norm == 0.05 else 0)
        assert meta["sweep"] == "grid"
        assert meta["hparams"] == {"clip.max_norm": max_norm, "scheduler": sched}


def test_results_are_ranked_by_validation_accuracy(swept):
    _, runs, results = swept
    assert results["metric"] == "val_accuracy"
    ranked = results["runs"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    accs = [r["val_accuracy"] for r in ranked]
    assert accs == sorted(accs, reverse=True)
    for r in ranked:
        with RunReader(r["path"]) as reader:
            _, values = reader.eval_series("accuracy")
            clipped = reader.steps_after(-1, ("clipped",))["clipped"]
            losses = reader.steps_after(-1, ("loss",))["loss"]
        assert r["val_accuracy"] == values[-1]
        assert r["clip_rate"] == pytest.approx(sum(clipped) / 8)
        assert r["train_loss"] == pytest.approx(losses[-1])  # last 10% of 8 steps = 1 step
        assert r["diverged"] is False
    saved = json.loads((runs / "grid" / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == [r["name"] for r in ranked]


def test_rerun_skips_finished_runs(swept):
    config, runs, _ = swept
    folder = runs / "grid"
    before = {p.name: (p / "clipdash.sqlite").stat().st_mtime_ns for p in find_runs(runs)}
    code, out, err = cli("sweep", str(config), "--runs-dir", str(runs))
    assert code == 0, err
    assert "(0 to run, 4 already done" in out
    assert out.count("skipped") == 4
    assert "results, ranked by val_accuracy" in out
    assert {p.name: (p / "clipdash.sqlite").stat().st_mtime_ns for p in find_runs(runs)} == before
    assert len(list((folder / ".sweep" / "logs").iterdir())) == 4


def test_unfinished_runs_are_resumed_or_restarted(swept, tmp_path):
    config, runs, _ = swept
    copy_runs = tmp_path / "runs"
    shutil.copytree(runs / "grid", copy_runs / "grid")
    stopped = copy_runs / "grid" / NAMES[(5.0, "StepLR")]
    failed = copy_runs / "grid" / NAMES[(0.05, "StepLR")]
    for run_dir, state in ((stopped, "stopped"), (failed, "failed")):
        with sqlite3.connect(run_dir / "clipdash.sqlite") as conn:
            conn.execute("UPDATE status SET state = ?", (state,))
    (stopped / "checkpoints").mkdir()
    (stopped / "checkpoints" / "step-000000004.pt").write_bytes(b"")
    plan = plan_sweep(config, copy_runs)
    actions = {c.name: c.action for c in plan.combos}
    assert actions[stopped.name] == "resume"
    assert actions[failed.name] == "restart"
    assert sorted(actions.values()) == ["restart", "resume", "skip", "skip"]


def test_a_changed_base_config_is_refused(swept):
    config, runs, _ = swept
    code, _, err = cli("sweep", str(config), "--runs-dir", str(runs), "--set",
                       "train.max_steps=9")
    assert code == 2
    assert "exists with a different config" in err


def test_hparams_reach_tensorboard(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    _, runs, _ = swept
    acc = EventAccumulator(str(runs / "grid" / NAMES[(5.0, "ExponentialLR")]))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    info = metadata.parse_session_start_info_plugin_data(content)
    assert info.hparams["clip.max_norm"].number_value == 5.0
    assert info.hparams["scheduler"].string_value == "ExponentialLR"
    assert "loss/train" in acc.Tags()["scalars"]


BOOM = '''
import torch
from torch import nn


class Boom(nn.Module):
    def __init__(self, fail_at):
        super().__init__()
        self.fail_at, self.calls, self.lin = fail_at, 0, nn.Linear(20, 4)

    def forward(self, x):
        self.calls += 1
        if self.training and self.calls > self.fail_at:
            raise RuntimeError("boom at call %d" % self.calls)
        return self.lin(x)


def make(fail_at=1000):
    return Boom(fail_at)
'''


def test_broken_combinations_fail_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the model plug-in is imported from the current directory
    (tmp_path / "boom_model.py").write_text(BOOM)
    config = tmp_path / "broken.toml"
    config.write_text(BASE.replace('kind = "mlp"\nhidden = [8]', 'kind = "boom_model:make"')
                      + textwrap.dedent("""
        [sweep]
        "model.fail_at" = [1000, 2]
        scheduler = [ { name = "StepLR", step_size = 1 }, { name = "StepLR", step_sze = 1 } ]
        """))
    code, out, err = cli("sweep", str(config), "--runs-dir", "runs", "--jobs", "2", "--json")
    assert code == 1
    runs = {r["name"]: r for r in json.loads(out)["runs"]}
    assert set(runs) == {"fail_at=1000,scheduler=StepLR-step_size1",
                         "fail_at=1000,scheduler=StepLR-step_sze1",
                         "fail_at=2,scheduler=StepLR-step_size1",
                         "fail_at=2,scheduler=StepLR-step_sze1"}
    ok = runs["fail_at=1000,scheduler=StepLR-step_size1"]
    assert ok["status"] == "finished" and ok["steps"] == 8 and ok["rank"] == 1
    crashed = runs["fail_at=2,scheduler=StepLR-step_size1"]
    assert crashed["status"] == "failed" and "boom at call 3" in crashed["error"]
    assert crashed["steps"] == 2  # the two steps before the crash are on record
    for name in ("fail_at=1000,scheduler=StepLR-step_sze1", "fail_at=2,scheduler=StepLR-step_sze1"):
        assert runs[name]["status"] == "invalid"
        assert "StepLR has no argument step_sze" in runs[name]["error"]
        assert not (tmp_path / "runs" / "broken" / name).exists()
    assert "invalid: scheduler.step_sze" in err


@pytest.mark.parametrize(("text", "problem"), [
    ("", "no [sweep] table"),
    ('[sweep]\n"clip.max_norm" = 1.0\n', "expected a non-empty list"),
    ('[sweep]\n"clips.max_norm" = [1.0]\n', "is not a config section"),
    ('[sweep]\n"clip.max_nrom" = [1.0, 2.0]\n', "no valid combination"),
])
def test_problems_no_combination_escapes_exit_2(tmp_path, text: str, problem: str):
    config = tmp_path / "bad.toml"
    config.write_text(BASE + text)
    code, _, err = cli("sweep", str(config), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert problem in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_names_and_labels():
    assert flatten({"clip": {"max_norm": [1]}, "seed": [0, 1]}, "f") == [
        ("clip.max_norm", [1]), ("seed", [0, 1])]
    assert short_keys(["clip.max_norm", "optimizer.lr", "scheduler.max_lr", "seed"]) == [
        "max_norm", "lr", "max_lr", "seed"]
    assert short_keys(["optimizer.lr", "scheduler.lr"]) == ["optimizer.lr", "scheduler.lr"]
    assert labels([0.1, 1e-05, 2, True, [64, 64]]) == ["0.1", "1e-05", "2", "true", "64-64"]
    assert labels([{"name": "StepLR", "gamma": 0.1}, {"name": "StepLR", "gamma": 0.5},
                   {"name": "CyclicLR"}, {}]) == [
        "StepLR-gamma0.1", "StepLR-gamma0.5", "CyclicLR", "none"]
    assert labels([{"name": "A"}, {"name": "A"}]) == ["A-1", "A-2"]
    assert safe_name("max_norm=1,model=a/b c") == "max_norm=1,model=a_b_c"


def test_empty_table_removes_a_section(tmp_path):
    config = tmp_path / "none.toml"
    config.write_text(BASE + '[scheduler]\nname = "StepLR"\nstep_size = 1\n'
                      '[sweep]\nscheduler = [{}, { name = "ExponentialLR", gamma = 0.5 }]\n')
    plan = plan_sweep(config, tmp_path / "runs")
    assert [c.name for c in plan.combos] == ["scheduler=none", "scheduler=ExponentialLR"]
    assert plan.combos[0].config is not None and "scheduler" not in plan.combos[0].config
    assert plan.combos[1].config["scheduler"]["gamma"] == 0.5
    with pytest.raises(ConfigError):
        plan_sweep(tmp_path / "missing.toml", tmp_path / "runs")
