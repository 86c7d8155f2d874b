"""TensorBoard sees what the store holds: read back with TensorBoard's own reader and server."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from clipdash import Tracker
from clipdash.store import RunReader
from clipdash.track.tensorboard import TensorBoardSink, histograms

STEPS = 30
SCALARS = {  # TensorBoard tag -> store column
    "loss/train": "loss",
    "grad_norm/pre_clip": "grad_norm_pre",
    "grad_norm/post_clip": "grad_norm_post",
    "clip/max_norm": "max_norm",
    "clip/coef": "clip_coef",
    "clip/clipped": "clipped",
}


def f32(value: float | None) -> float:
    return float(np.float32(math.nan if value is None else value))


def accumulator(path: Path, **kwargs: Any) -> EventAccumulator:
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0,
                                                    "tensors": 0}, **kwargs)
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-step run with two param groups, three evaluations and a control event."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.02}], momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen) * 3, torch.randint(0, 3, (64,), generator=gen)
    path = tmp_path_factory.mktemp("runs") / "tb-run"
    with Tracker(model, opt, sched, run_dir=path, max_norm=0.05, buffer_steps=8) as tracker:
        for step in range(STEPS):
            if step == 15:
                old = tracker.clipper.set("max_norm", 2.0)
                tracker.event("control", f"max_norm {old:g} -> 2 from step 15 (test)")
            opt.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            if tracker.clip():
                opt.step()
            tracker.step(loss, epoch=step // 10)
            sched.step()
            if step % 10 == 9:
                accuracy = (logits.argmax(1) == y).float().mean()
                tracker.log_eval({"loss": loss.item() * 1.1, "accuracy": accuracy})
    return path


def test_scalars_equal_the_store(run_dir: Path) -> None:
    ea = accumulator(run_dir)
    with RunReader(run_dir) as reader:
        rows = list(reader.iter_steps(with_params=True))
        evals = reader.evals_after()
    assert len(rows) == STEPS
    assert any(r["clipped"] for r in rows) and not all(r["clipped"] for r in rows)
    tags = ea.Tags()["scalars"]
    for tag, column in SCALARS.items():
        assert tag in tags
        events = ea.Scalars(tag)
        assert [e.step for e in events] == list(range(STEPS)), tag
        assert [e.value for e in events] == [f32(r[column]) for r in rows], tag
    for group in (0, 1):
        events = ea.Scalars(f"lr/group_{group}")
        assert [e.value for e in events] == [f32(r["lr_groups"][group]) for r in rows]
    assert [e.value for e in ea.Scalars("lr/group_1")][9:11] == [f32(0.02), f32(0.01)]
    assert [e.value for e in ea.Scalars("clip/max_norm")][14:16] == [f32(0.05), 2.0]
    for metric in ("loss", "accuracy"):
        events = ea.Scalars(f"{metric}/val")
        stored = [(s, v) for s, m, v in evals if m == metric]
        assert [(e.step, e.value) for e in events] == [(s, f32(v)) for s, v in stored]
        assert [e.step for e in events] == [9, 19, 29]
    wall = [e.wall_time for e in ea.Scalars("loss/train")]
    assert wall == pytest.approx([r["wall_time"] for r in rows], abs=1e-6)


def test_per_param_histogram(run_dir: Path) -> None:
    ea = accumulator(run_dir)
    assert "grad_norm/per_param" in ea.Tags()["histograms"]
    with RunReader(run_dir) as reader:
        rows = list(reader.iter_steps(with_params=True))
    events = ea.Histograms("grad_norm/per_param")
    assert [e.step for e in events] == list(range(STEPS))
    for e, r in zip(events, rows, strict=True):
        h, norms = e.histogram_value, r["param_norms"].astype(np.float64)
        assert h.num == len(norms) == 4
        assert (h.min, h.max) == (norms.min(), norms.max())
        assert h.sum == pytest.approx(norms.sum(), rel=1e-12)
        assert h.sum_squares == pytest.approx((norms ** 2).sum(), rel=1e-12)
        counts, edges = np.histogram(norms, bins=len(h.bucket))
        assert list(h.bucket) == counts.tolist() and list(h.bucket_limit) == edges[1:].tolist()


def test_events_as_text(run_dir: Path) -> None:
    ea = accumulator(run_dir)
    assert "events" in ea.Tags()["tensors"]
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in ea.Tensors("events")]
    assert (15, "[control] max_norm 0.05 -> 2 from step 15 (test)") in texts


def test_histograms_match_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=(40, 9)).astype(np.float32)
    values[3] = np.nan
    values[4, :2] = [np.inf, np.nan]
    values[5] = 0.25  # a single distinct value: numpy widens the range by 0.5 each side
    h = histograms(values, 9)
    for i, row in enumerate(values.astype(np.float64)):
        finite = row[np.isfinite(row)]
        assert h["num"][i] == finite.size
        if finite.size:
            counts, edges = np.histogram(finite, bins=9)
            assert h["bucket"][i].tolist() == counts.tolist()
            assert h["bucket_limit"][i].tolist() == edges[1:].tolist()


def _rename_to_earlier(path: Path, seconds: int) -> None:
    """Event files sort by the timestamp in their name; make `path` older than a later file."""
    parts = path.name.split(".")
    parts[3] = f"{int(parts[3]) - seconds:010d}"
    path.rename(path.with_name(".".join(parts)))


def _steps_cols(steps: range, loss: float) -> dict[str, np.ndarray]:
    n = len(steps)
    ones = np.ones(n)
    return {"step": np.asarray(steps, np.int64), "wall_time": time.time() + np.arange(n),
            "loss": loss * ones, "grad_norm_pre": ones, "grad_norm_post": ones,
            "clip_coef": ones, "clipped": np.zeros(n, bool), "max_norm": ones,
            "lr_groups": np.full((n, 1), 0.1), "param_norms": np.ones((n, 3), np.float32)}


def test_resume_purges_steps_after_the_checkpoint(tmp_path: Path) -> None:
    first = TensorBoardSink(tmp_path, ["a", "b", "c"])
    first.write_steps(_steps_cols(range(0, 20), loss=1.0))  # a crash after step 19...
    first.close()
    _rename_to_earlier(next(tmp_path.iterdir()), 10)
    resumed = TensorBoardSink(tmp_path, ["a", "b", "c"], purge_from=10)  # ...resumed at 10
    resumed.write_steps(_steps_cols(range(10, 30), loss=2.0))
    resumed.close()
    ea = accumulator(tmp_path)  # purge_orphaned_data=True, TensorBoard's default
    events = ea.Scalars("loss/train")
    assert [e.step for e in events] == list(range(30))
    assert [e.value for e in events] == [1.0] * 10 + [2.0] * 20
    assert [e.step for e in ea.Histograms("grad_norm/per_param")] == list(range(30))


def test_nan_max_norm_is_left_out_and_steps_stay_in_order(tmp_path: Path) -> None:
    cols = _steps_cols(range(120, 140), loss=1.0)  # crosses the 1- to 2-byte step encoding
    cols["max_norm"][::3] = math.nan
    cols["param_norms"][5] = np.nan
    sink = TensorBoardSink(tmp_path, ["a", "b", "c"], per_param_scalars=True)
    sink.write_steps(cols)
    sink.close()
    ea = accumulator(tmp_path)
    assert [e.step for e in ea.Scalars("loss/train")] == list(range(120, 140))
    kept = [s for i, s in enumerate(range(120, 140)) if i % 3]
    assert [e.step for e in ea.Scalars("clip/max_norm")] == kept
    assert [e.step for e in ea.Histograms("grad_norm/per_param")] == [
        s for s in range(120, 140) if s != 125]
    assert len(ea.Scalars("grad_norm/param/c")) == 20


# -- the real TensorBoard server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def test_tensorboard_server_lists_the_run(run_dir: Path) -> None:
    binary = Path(sys.executable).with_name("tensorboard")
    if not binary.exists():
        binary = Path(shutil.which("tensorboard") or "tensorboard")
    port = _free_port()
    try:
        proc = subprocess.Popen(
            [str(binary), "--logdir", str(run_dir.parent), "--port", str(port),
             "--host", "127.0.0.1", "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        pytest.skip(f"tensorboard cannot start: {exc}")
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    tags: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        answered = False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.skip(f"tensorboard exited with {proc.returncode}: {err[-500:]}")
            try:
                tags = _get_json(f"{base}/tags")
                answered = True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if tags.get(run_dir.name, {}).keys() >= set(SCALARS) | {"loss/val"}:
                break
            time.sleep(0.3)
        if not answered:
            pytest.skip("tensorboard did not answer within 30 s")
        assert run_dir.name in tags, tags
        assert tags[run_dir.name].keys() >= {*SCALARS, "loss/val", "accuracy/val", "lr/group_0",
                                             "lr/group_1"}
        series = _get_json(f"{base}/scalars?run={run_dir.name}&tag=loss/train")
        assert [point[1] for point in series] == list(range(STEPS))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
