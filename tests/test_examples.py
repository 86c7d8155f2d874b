"""The example configs: every one loads, each runs end to end, and exploding_rnn.toml shows what
its header promises (unclipped gradients explode; clipped ones stay bounded)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clipdash.cli import main
from clipdash.engine.config import load_config
from clipdash.store import RunReader

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALL_CONFIGS = sorted(EXAMPLES.glob("*.toml"))
# The single-run examples these tests train (the sweep configs have their own tests).
RUN_EXAMPLES = ["exploding_rnn", "batchnorm_mlp", "step_decay", "exponential_decay",
                "cyclic_lr", "clip_by_value"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # These models are tiny: a second intra-op thread only adds spin-waiting, which turns into
    # seconds per run on a busy machine. Restore the setting for the other test modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_examples_exist() -> None:
    names = {p.stem for p in ALL_CONFIGS}
    assert set(RUN_EXAMPLES) <= names, f"missing: {set(RUN_EXAMPLES) - names}"


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.source == str(path)


def _train(tmp_path: Path, example: str, name: str, *overrides: str) -> Path:
    args = ["run", str(EXAMPLES / f"{example}.toml"), "--runs-dir", str(tmp_path),
            "--name", name, "--no-progress"]
    for kv in overrides:
        args += ["--set", kv]
    assert main(args) == 0
    return tmp_path / name


@pytest.mark.parametrize("example", RUN_EXAMPLES)
def test_example_runs(tmp_path: Path, example: str) -> None:
    run_dir = _train(tmp_path, example, example, "train.max_steps=20")
    with RunReader(run_dir) as reader:
        assert reader.status() == "finished"
        assert reader.step_count() == 20
        assert reader.last_step() == 19


def _column(run_dir: Path, name: str) -> list[float]:
    """A step column with NaN for the NULLs that SQLite stores in place of NaN."""
    with RunReader(run_dir) as reader:
        values = reader.steps_after(-1, columns=[name])[name]
    return [math.nan if v is None else float(v) for v in values]


def test_exploding_rnn_explodes_without_clipping_and_not_with(tmp_path: Path) -> None:
    # 60 steps are enough: unclipped, the pre-clip norm goes from ~30 to inf within ~20 steps
    # for seeds 0, 1 and 2 alike (see docs/examples.md for the full-length figures).
    short = ("train.max_steps=60", "data.n_samples=1024")
    unclipped = _train(tmp_path, "exploding_rnn", "unclipped", *short, 'clip.mode="none"')
    clipped = _train(tmp_path, "exploding_rnn", "clipped", *short)
    max_norm = load_config(EXAMPLES / "exploding_rnn.toml").clip.max_norm

    # Unclipped: the largest pre-clip norm (inf and NaN count as exploded) is orders of
    # magnitude above the clipped run's threshold and above where it started (~30 at step 0),
    # and the run ends with a blown-up loss.
    pre = [math.inf if math.isnan(v) else v for v in _column(unclipped, "grad_norm_pre")]
    assert max(pre) > 1e3 * max_norm
    assert max(pre) > 1e3 * pre[0]
    tail = [math.inf if math.isnan(v) else v for v in _column(unclipped, "loss")[-10:]]
    assert min(tail) > 1e3

    # Clipped: every step finite, every post-clip norm within max_norm, clipping actually fired,
    # and the loss is back to the scale of the targets.
    finite = _column(clipped, "finite")
    assert all(f == 1.0 for f in finite)
    post = _column(clipped, "grad_norm_post")
    assert len(post) == 60 and all(v <= max_norm + 1e-4 for v in post)
    assert max(_column(clipped, "grad_norm_pre")) > max_norm
    assert sum(_column(clipped, "clipped")) >= 10
    loss = _column(clipped, "loss")[-10:]
    assert all(math.isfinite(v) for v in loss) and sum(loss) / len(loss) < 1.0
