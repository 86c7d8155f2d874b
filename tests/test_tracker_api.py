"""Misuse is an error with a message; options are checked; the start line; the observer hook."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from clipdash import Tracker, control
from clipdash.store import RunReader
from clipdash.track.options import ClipOptions, ClipOptionsError
from clipdash.track.tracker import TrackerError

DEADLINE_S = 20.0


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def one_step(model: nn.Module, tracker: Tracker, clip: bool = True) -> None:
    model.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    if clip:
        tracker.clip()
    tracker.step(loss)


def test_clip_twice_in_a_step_is_an_error_not_a_wrong_record(tmp_path: Path) -> None:
    model, opt = make()
    with Tracker(model, opt, run_dir=tmp_path / "r", tensorboard=False, quiet=True,
                 max_norm=0.1) as tracker:
        model(torch.randn(8, 4)).pow(2).mean().mul(100).backward()
        pre = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        tracker.clip()
        with pytest.raises(TrackerError, match="clip\\(\\) called twice for step 0"):
            tracker.clip()
        tracker.step(1.0)
    with RunReader(tmp_path / "r") as r:
        row = next(r.iter_steps())
    assert row["grad_norm_pre"] == pytest.approx(pre, rel=1e-5)  # not the clipped 0.1


@pytest.mark.parametrize("call", ["step", "flush", "log_eval", "event", "clip"])
def test_calls_after_close_raise_and_never_hang(tmp_path: Path, call: str) -> None:
    model, opt = make()
    with Tracker(model, opt, run_dir=tmp_path / "r", tensorboard=False, quiet=True) as tracker:
        one_step(model, tracker)
    args = {"step": (1.0,), "flush": (), "log_eval": ({"loss": 1.0},), "event": ("x", "y"),
            "clip": ()}[call]
    with pytest.raises(TrackerError, match=f"{call}\\(\\) after close"):
        getattr(tracker, call)(*args)
    tracker.close()  # a second close is harmless
    with RunReader(tmp_path / "r") as r:
        assert r.step_count() == 1
        assert r.status() == "finished"


@pytest.mark.parametrize(("key", "value", "words"), [
    ("max_norm", 0.0, "> 0"), ("max_norm", -1.0, "> 0"), ("max_norm", math.nan, "finite"),
    ("max_norm", math.inf, "finite"), ("max_norm", 1e39, "float32"),
    ("max_norm", 1e-39, "float32"), ("max_value", 0.0, "> 0"), ("max_value", 4e38, "float32"),
])
def test_thresholds_are_checked(tmp_path: Path, key: str, value: float, words: str) -> None:
    model, opt = make()
    with pytest.raises(ValueError, match=f"{key}: .*{words}"):
        Tracker(model, opt, run_dir=tmp_path / "r", quiet=True, **{key: value})
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("*.sqlite"))


def test_float32_range_limits_are_accepted(tmp_path: Path) -> None:
    assert ClipOptions(max_norm=3.4e38).max_norm == 3.4e38
    assert ClipOptions(max_norm=1.2e-38).max_norm == 1.2e-38


@pytest.mark.parametrize("bad", [0, -3])
def test_buffer_steps_below_one_is_refused(tmp_path: Path, bad: int) -> None:
    model, opt = make()
    with pytest.raises(ValueError, match="buffer_steps must be >= 1"):
        Tracker(model, opt, run_dir=tmp_path / "r", buffer_steps=bad, quiet=True)


def test_options_object_and_unknown_options(tmp_path: Path) -> None:
    model, opt = make()
    opts = ClipOptions(mode="zscore", z_threshold=3.0, warmup_steps=2, max_norm=0.7)
    with Tracker(model, opt, run_dir=tmp_path / "z", clip=opts, tensorboard=False,
                 quiet=True) as tracker:
        assert tracker.clipper.mode == "zscore"
        assert tracker.options.max_norm == 0.7  # not overridden by the keyword defaults
        one_step(model, tracker)
    with RunReader(tmp_path / "z") as r:
        assert r.meta()["settable"] == ["z_threshold", "lr"]
    with pytest.raises(ClipOptionsError, match="unknown clip option.*bogus"):
        ClipOptions.build("norm", {"bogus": 1})
    with pytest.raises(ClipOptionsError, match="mode: must be one of"):
        ClipOptions(mode="sometimes")


def test_start_line_once_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, opt = make()
    with Tracker(model, opt, run_dir=tmp_path / "runs" / "a", tensorboard=False):
        pass
    err = capsys.readouterr().err
    assert err.count("clipdash: recording to") == 1
    assert f"clipdash watch {tmp_path / 'runs'}" in err
    with Tracker(model, opt, run_dir=tmp_path / "runs" / "b", tensorboard=False, quiet=True):
        pass
    assert "recording to" not in capsys.readouterr().err
    with Tracker(model, opt, run_dir=tmp_path / "runs" / "c", record=False):
        pass
    assert "recording to" not in capsys.readouterr().err


def test_observer_sees_control_messages(tmp_path: Path) -> None:
    model, opt = make()
    seen: list[tuple[str, str | None]] = []
    run_dir = tmp_path / "obs"
    with Tracker(model, opt, run_dir=run_dir, tensorboard=False, quiet=True) as tracker:
        tracker.on_control(lambda state, message: seen.append((state, message)))
        assert tracker.state == "running" and tracker.last_control_message is None
        one_step(model, tracker)
        control.set_value(run_dir, "max_norm", 0.25, wait=False)
        deadline = time.monotonic() + DEADLINE_S
        while not seen:
            assert time.monotonic() < deadline, "the command was never applied"
            time.sleep(0.02)
            one_step(model, tracker)
        assert tracker.last_control_message is not None
        assert tracker.last_control_message.startswith("max_norm 1 -> 0.25 from step")
        assert tracker.last_control_message.endswith("(api)")
        assert seen == [("running", tracker.last_control_message)]
        tracker.request_stop()
        assert tracker.state == "stopping"


def test_clip_options_are_torch_free() -> None:
    """The engine's config and commands import ClipOptions without paying for torch."""
    import subprocess
    import sys

    code = ("import sys; from clipdash.track.options import ClipOptions; "
            "ClipOptions(mode='percentile', percentile=5); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../b", "x\x1b]0;t\x07"])
def test_a_name_outside_the_runs_dir_is_refused_and_nothing_is_written(tmp_path: Path,
                                                                       name: str) -> None:
    model, opt = make()
    runs = tmp_path / "runs"
    with pytest.raises(ValueError):
        Tracker(model, opt, name=name, runs_dir=runs, quiet=True)
    assert list(tmp_path.rglob("*")) == []


def test_a_pending_checkpoint_is_written_after_its_event_and_every_step_before_it(
        tmp_path: Path) -> None:
    from clipdash import PendingCheckpoint

    run_dir = tmp_path / "ck"
    seen: list[tuple[str, list[tuple[int, str]], int]] = []

    def write(reason: str) -> None:
        # What the record holds the moment before the file exists.
        with RunReader(run_dir) as reader:
            events = [(e["step"], e["kind"]) for e in reader.events_after()
                      if e["kind"] == "checkpoint"]
            seen.append((reason, events, reader.last_step()))

    def hook(reason: str) -> PendingCheckpoint:
        return PendingCheckpoint(run_dir / "ck.pt", 3, lambda: write(reason))

    model, opt = make()
    with Tracker(model, opt, run_dir=run_dir, tensorboard=False, quiet=True,
                 checkpoint=hook) as tracker:
        for _ in range(3):
            one_step(model, tracker)
        tracker.checkpoint()
    assert seen == [("periodic", [(3, "checkpoint")], 2)]
    with RunReader(run_dir) as reader:
        (event,) = [e for e in reader.events_after() if e["kind"] == "checkpoint"]
    assert event["data"] == {"path": "ck.pt", "reason": "periodic"}
    assert event["message"] == "periodic checkpoint after 3 steps"
