"""Hostile input to `clipdash run`, `lr-find` and `sweep`: one line, exit 2, nothing written.

Every case is a class of input (issue 14), not one example: values a float32 device cannot hold,
integers past 64 bits, TOML that is not UTF-8 or nested without end, CUDA that is not there,
sizes that cannot be allocated, data that is not numbers, schedules that cannot run the whole
run, and run names that would leave the runs directory or rewrite the terminal.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from clipdash.cli import main
from clipdash.engine import checkpoint
from clipdash.store.names import check_run_name, default_run_name

BASE = """\
seed = 0
device = "cpu"
[model]
kind = "mlp"
hidden = [8]
[data]
kind = "regression"
batch_size = 16
n_samples = 64
[optimizer]
name = "SGD"
lr = 0.05
[train]
max_steps = 8
eval_every = 4
"""


def config(tmp_path: Path, text: str = BASE, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def refused(capsys: pytest.CaptureFixture[str], *argv: str, runs: Path) -> str:
    """Run the CLI; assert exit 2, one line on stderr, nothing in the runs dir. The line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))
    return lines[0]


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("override, key", [
    ("clip.max_norm=1e300", "clip.max_norm"),
    ("clip.max_norm=1e-300", "clip.max_norm"),
    ("clip.max_value=1e300", "clip.max_value"),
    ("clip.max_value=1e-40", "clip.max_value"),
    ("optimizer.lr=1e300", "optimizer.lr"),
    ("optimizer.lr=1e-300", "optimizer.lr"),
])
def test_values_a_float32_device_cannot_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             override: str, key: str) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path)), "--runs-dir", str(runs), "--set",
                   override, runs=runs)
    assert f"{key}: " in line and "float32" in line
    # The bounds themselves are exact: what float32 holds passes (torch agrees).
    finfo = torch.finfo(torch.float32)
    from clipdash.engine.builtins import F32_MAX, F32_TINY, check_f32

    assert (finfo.max, finfo.tiny) == (F32_MAX, F32_TINY)
    check_f32(finfo.max)
    check_f32(finfo.tiny)
    with pytest.raises(ValueError):
        check_f32(finfo.tiny / 2)  # a subnormal: the device would flush or lose it


@pytest.mark.parametrize("override, key", [
    ("seed=18446744073709551616", "seed"),  # 2**64: torch.manual_seed's range ends below
    ("train.max_steps=9223372036854775808", "train.max_steps"),  # 2**63
    ("data.n_samples=9223372036854775808", "data.n_samples"),
    ("model.hidden=[9223372036854775808]", "model.hidden"),
])
def test_integers_past_64_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               override: str, key: str) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path)), "--runs-dir", str(runs), "--set",
                   override, runs=runs)
    assert f"cfg.toml: {key}: must be" in line


def test_the_largest_seed_torch_takes_is_accepted(tmp_path: Path) -> None:
    from clipdash.engine.config import load_config

    assert load_config(config(tmp_path), ["seed=18446744073709551615"]).seed == 2**64 - 1
    torch.manual_seed(2**64 - 1)  # the bound is torch's own


@pytest.mark.parametrize("override, where", [
    ("data.n_samples=100000000000000", "data: cannot build the data"),
    ("model.hidden=[100000000000]", "model: cannot build the model"),
])
def test_sizes_that_cannot_be_allocated(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        override: str, where: str) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path)), "--runs-dir", str(runs), "--set",
                   override, runs=runs)
    assert where in line and "not enough memory" in line


def test_a_dataset_of_strings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "strdata.py").write_text("def make():\n    return [('a', 'b')] * 10, None\n")
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    text = BASE.replace('kind = "regression"', 'kind = "strdata:make"').replace(
        "n_samples = 64\n", "")
    line = refused(capsys, "run", str(config(tmp_path, text)), "--runs-dir", str(runs),
                   runs=runs)
    assert "data.kind: samples must be (input, target) pairs" in line and "(str, str)" in line


# --------------------------------------------------------------------------- files


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    path = config(tmp_path, BASE.encode() + b'\n# caf\xe9 in latin-1\n')  # type: ignore[arg-type]
    line = refused(capsys, "run", str(path), "--runs-dir", str(runs), runs=runs)
    assert "cfg.toml: not UTF-8 text (byte 0xe9" in line


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
])
def test_deeply_nested_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            text: str) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path, BASE + text)), "--runs-dir", str(runs),
                   runs=runs)
    assert "nested more than" in line


def test_deeply_nested_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path)), "--runs-dir", str(runs), "--set",
                   "model.hidden=" + "[" * 3000 + "]" * 3000, runs=runs)
    assert "nested more than" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("extra", [[], ["--nproc-per-node", "2"]])
def test_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           extra: list[str]) -> None:
    runs = tmp_path / "runs"
    line = refused(capsys, "run", str(config(tmp_path, BASE.replace('"cpu"', '"cuda"'))),
                   "--runs-dir", str(runs), *extra, runs=runs)
    assert 'device: "cuda" but CUDA is not available' in line


# --------------------------------------------------------------------------- schedules


def test_one_cycle_shorter_than_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    runs = tmp_path / "runs"
    text = BASE + '[scheduler]\nname = "OneCycleLR"\nmax_lr = 0.1\ntotal_steps = 5\n'
    line = refused(capsys, "run", str(config(tmp_path, text)), "--runs-dir", str(runs),
                   runs=runs)
    assert "scheduler.total_steps: OneCycleLR covers 5 steps but the run steps it 8" in line
    # Exactly long enough is fine: torch steps it total_steps times without complaint.
    ok = BASE + '[scheduler]\nname = "OneCycleLR"\nmax_lr = 0.1\ntotal_steps = 8\n'
    assert main(["run", str(config(tmp_path, ok, "ok.toml")), "--runs-dir", str(runs),
                 "--no-progress", "--name", "ok"]) == 0


def test_cyclic_lr_upside_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    text = BASE + '[scheduler]\nname = "CyclicLR"\nbase_lr = 0.5\nmax_lr = 0.1\n'
    line = refused(capsys, "run", str(config(tmp_path, text)), "--runs-dir", str(runs),
                   runs=runs)
    assert "scheduler.base_lr: base_lr (0.5) is above max_lr (0.1)" in line


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, problem", [
    ("../../escape", "'..' path component"),
    ("a/../../b", "'..' path component"),
    ("/abs/path", "absolute path"),
    ("", "empty"),
    ("a//b/./c", "path component"),
    ("./x", "'.' path component"),
    ("evil\x1b]0;title\x07", "control character (U+001B)"),
    ("two\nlines", "control character (U+000A)"),
    ("rtl\u202eoverride", "control character (U+202E)"),
    ("x" * 256, "longer than the file system allows"),
    ("a\\b", "backslash"),
])
def test_unsafe_run_names(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match="run name") as info:
        check_run_name(name)
    assert problem in str(info.value)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_safe_run_names() -> None:
    assert check_run_name("exp1") == "exp1"
    assert check_run_name("sweep/lr=0.1,max_norm=1") == "sweep/lr=0.1,max_norm=1"
    assert check_run_name("trailing/") == "trailing"
    assert check_run_name("ünïcödé-ок") == "ünïcödé-ок"
    assert check_run_name("x" * 255) == "x" * 255
    assert check_run_name(default_run_name("cfg")).startswith("cfg-")


@pytest.mark.parametrize("command", ["run", "lr-find", "sweep"])
@pytest.mark.parametrize("name", ["../escape", "/tmp/abs-escape", "..", "bad\x1b[2J"])
def test_every_command_refuses_unsafe_names(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            command: str, name: str) -> None:
    runs = tmp_path / "work" / "runs"
    text = BASE + ('[sweep]\n"clip.max_norm" = [0.5, 1.0]\n' if command == "sweep" else "")
    line = refused(capsys, command, str(config(tmp_path, text)), "--runs-dir", str(runs),
                   "--name", name, runs=runs)
    assert "run name" in line and "\x1b" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.toml"]  # nothing escaped
    assert not Path("/tmp/abs-escape").exists()


def test_runs_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    runs.write_text("not a directory")
    code = main(["run", str(config(tmp_path)), "--runs-dir", str(runs), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--runs-dir {runs} is not a directory" in err
    assert runs.read_text() == "not a directory"


def test_a_name_component_that_is_a_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "f").write_text("x")
    code = main(["run", str(config(tmp_path)), "--runs-dir", str(runs), "--name", "f/run"])
    assert code == 2 and "is not a directory inside" in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoints


class _Plant:
    """Unpickling this runs `touch <path>`: what a planted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_a_planted_pickle_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "step-999999999.pt"
    torch.save({"step": 1, "model": _Plant(marker)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="refused to unpickle .*system"):
        checkpoint.load(path)
    assert not marker.exists()
    # The plant is live: a full unpickle would have run it (so the test can fail).
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_a_raw_pickle_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "step-000000001.pt"
    path.write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume from it"):
        checkpoint.load(path)
    assert not marker.exists()
