"""`clipdash run / ls / export` through the real entry point: exit codes, messages, columns."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from clipdash.cli import main
from clipdash.store import RunReader

BASE = """
seed = 0
[model]
kind = "mlp"
hidden = [16]
[data]
kind = "regression"
n_samples = 256
batch_size = 32
[optimizer]
name = "SGD"
lr = 0.05
[scheduler]
name = "StepLR"
step_size = 3
gamma = 0.5
interval = "step"
[clip]
mode = "norm"
max_norm = 0.5
[train]
max_steps = 12
eval_every = 5
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("[clip]", "[clp]"), "clp: unknown section (did you mean clip?)"),
        (lambda t: t.replace("max_norm = 0.5", "max_nrom = 0.5"),
         "clip.max_nrom: unknown key (did you mean max_norm?)"),
        (lambda t: t.replace("max_norm = 0.5", "max_norm = 0"), "clip.max_norm"),
        (lambda t: t.replace("max_norm = 0.5", "max_norm = -1.0"), "clip.max_norm"),
        (lambda t: t.replace("max_norm = 0.5", "max_norm = nan"), "clip.max_norm"),
        (lambda t: t.replace("max_norm = 0.5", "max_norm = \"big\""), "clip.max_norm"),
        (lambda t: t.replace("lr = 0.05", "lr = -0.1"), "optimizer.lr"),
        (lambda t: t.replace("max_norm = 0.5", "max_norm = 0.5\nnorm_type = 0"), "clip.norm_type"),
        (lambda t: t.replace("max_steps = 12", "max_steps = \"ten\""), "train.max_steps"),
        (lambda t: t.replace('name = "SGD"', 'name = "SGDX"'), "optimizer.name"),
        (lambda t: t.replace('name = "StepLR"', 'name = "StepLRR"'), "scheduler.name"),
        (lambda t: t.replace("gamma = 0.5", "gamma = 0.5\ngama = 1"), "scheduler.gama"),
        (lambda t: t.replace('kind = "mlp"', 'kind = "no_such_module:make"'), "model.kind"),
        (lambda t: t + "\n[[[", "exp.toml"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               edit, expected: str) -> None:
    cfg = write(tmp_path, edit(BASE))
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "run", str(cfg), "--runs-dir", str(runs), "--no-progress")
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert str(cfg.name) in line and expected in line
    assert not runs.exists() or not any(runs.iterdir())


def test_bad_override_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, BASE)
    code, _, err = run_cli(capsys, "run", str(cfg), "--runs-dir", str(tmp_path / "r"),
                           "--set", "clip.max_norm")
    assert code == 2 and "clip.max_norm" in err
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write(tmp, BASE)
    assert main(["run", str(cfg), "--runs-dir", str(tmp / "runs"), "--name", "r1",
                 "--set", "clip.max_norm=0.25", "--no-progress"]) == 0
    return tmp / "runs"


def test_run_records_overrides_and_every_step(finished_run: Path) -> None:
    with RunReader(finished_run / "r1") as reader:
        steps = reader.steps_after(-1)
        assert steps["step"] == list(range(12))
        assert set(steps["max_norm"]) == {0.25}
        assert all(p <= 0.25 + 1e-5 for p in steps["grad_norm_post"])
        # StepLR(step_size=3, gamma=0.5) stepped per step: the closed form.
        assert steps["lr"] == pytest.approx([0.05 * 0.5 ** (s // 3) for s in range(12)])
        assert reader.summary().status == "finished"
        assert [s for s, m, _ in reader.evals_after() if m == "loss"] == [4, 9, 11]
    assert "max_norm = 0.25" in (finished_run / "r1" / "config.toml").read_text()


def test_existing_run_name_is_refused(finished_run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, BASE)
    code, _, err = run_cli(capsys, "run", str(cfg), "--runs-dir", str(finished_run),
                           "--name", "r1")
    assert code == 2 and "already exists" in err


def test_ls_text_and_json(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "ls", str(finished_run))
    assert code == 0 and "r1" in out and "finished" in out
    code, out, _ = run_cli(capsys, "ls", str(finished_run), "--json")
    (entry,) = json.loads(out)
    assert entry["name"] == "r1" and entry["status"] == "finished" and entry["step"] == 11
    assert entry["max_norm"] == 0.25


def test_export_csv_columns_match_store(finished_run: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "export", "r1", "--runs-dir", str(finished_run), "--params")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    required = ["step", "epoch", "wall_time", "loss", "lr", "grad_norm_pre", "grad_norm_post",
                "max_norm", "clip_coef", "clipped", "finite"]
    assert list(rows[0])[: len(required)] == required
    with RunReader(finished_run / "r1") as reader:
        names = [n for n, _ in reader.params()]
        steps = reader.steps_after(-1)
    assert names[:1] and all(n in rows[0] for n in names), (names, list(rows[0]))
    assert len(rows) == 12
    for row, pre, post in zip(rows, steps["grad_norm_pre"], steps["grad_norm_post"], strict=True):
        assert float(row["grad_norm_pre"]) == pytest.approx(pre)
        assert float(row["grad_norm_post"]) == pytest.approx(post)
        assert row["clipped"] in ("0", "1") and row["finite"] == "1"
        per = torch.tensor([float(row[n]) for n in names])
        assert math.isclose(float(torch.linalg.vector_norm(per)), pre, rel_tol=1e-5)


def test_export_jsonl(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "export", str(finished_run / "r1"), "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 12
    assert lines[0]["clipped"] in (True, False) and lines[0]["finite"] is True


def test_unknown_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "export", "nope", "--runs-dir", str(tmp_path))
    assert code == 2 and "nope" in err


@pytest.mark.parametrize("command", [["export", "broken"], ["ctl", "broken", "pause"],
                                     ["suggest", "broken"]])
def test_damaged_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           command: list[str]) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "clipdash.sqlite").write_text("not sqlite")
    code, _, err = run_cli(capsys, *command, "--runs-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "clipdash.sqlite" in err and "not a clipdash store" in err


@pytest.mark.parametrize("command", ["ls", "watch"])
def test_missing_or_file_runs_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          command: str) -> None:
    code, out, err = run_cli(capsys, command, str(tmp_path / "runz"))
    assert (code, out, err) == (2, "", f"clipdash {command}: {tmp_path / 'runz'}: does not exist\n")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, command, str(tmp_path / "file"))
    assert code == 2 and "is not a directory of runs" in err
    (tmp_path / "empty").mkdir()
    if command == "ls":  # an existing, empty directory is not an error
        assert run_cli(capsys, "ls", str(tmp_path / "empty"))[:2] == (
            0, f"no runs in {tmp_path / 'empty'}/\n")


def test_watch_without_a_terminal_refuses_at_once(tmp_path: Path) -> None:
    """Piped or cron'd, the dashboard used to write escape codes into the pipe forever."""
    import subprocess
    import sys

    from trainer_proc import ENV

    (tmp_path / "runs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "clipdash", "watch", str(tmp_path / "runs")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ENV,
                          timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs a terminal" in proc.stderr
