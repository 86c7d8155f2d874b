"""`set lr=X` scales the whole schedule, for every scheduler, and survives a checkpoint.

The invariant: after a change by factor f at step k, every later LR of every param group is f
times what the unchanged schedule gives. Checked in-process for a broad set of schedulers (and
through a state_dict round trip), through the Tracker's command path for LambdaLR, and against
real `clipdash run` processes for CyclicLR and OneCycleLR (which also test SIGTERM / SIGINT).
"""

from __future__ import annotations

import math
import re
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched
from trainer_proc import (
    Trainer,
    clipdash,
    control_events,
    steps_table,
    wait_until,
    write_config,
)

from clipdash import control
from clipdash.track.lr import scale_lr
from clipdash.track.tracker import Tracker

N, AT, FACTOR = 60, 17, 2.5
LRS = (0.1, 0.03)  # two param groups with different LRs: they must scale together

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: sched.StepLR(o, 7, 0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, [5, 20, 40], 0.3),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, 0.95),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda t: 0.97),
    "LambdaLR": lambda o: sched.LambdaLR(o, [lambda t: 1 / (1 + t), lambda t: 0.99**t]),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=[0.01, 0.002], max_lr=[0.1, 0.05],
                                         step_size_up=5),
    "CyclicLR-exp_range": lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=4,
                                                   mode="exp_range", gamma=0.97),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=[0.1, 0.4], total_steps=N + 1),
    "OneCycleLR-3phase": lambda o: sched.OneCycleLR(o, 0.2, total_steps=N + 1, three_phase=True,
                                                    anneal_strategy="linear"),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, 20, eta_min=0.001),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, 10, 2, 0.001),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, 40, 2.0),
    "LinearLR": lambda o: sched.LinearLR(o, 0.1, 1.0, total_iters=30),
    "ConstantLR": lambda o: sched.ConstantLR(o, 0.25, total_iters=30),
    "SequentialLR": lambda o: sched.SequentialLR(o, [
        sched.LinearLR(o, 0.1, total_iters=10), sched.CosineAnnealingLR(o, 40, eta_min=0.001)],
        milestones=[AT + 5]),
    "ChainedScheduler": lambda o: sched.ChainedScheduler([
        sched.ConstantLR(o, 0.5, total_iters=25), sched.ExponentialLR(o, 0.95)]),
}


def make_optimizer(tensor_lr: bool = False) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    lr = (lambda v: torch.tensor(v)) if tensor_lr else (lambda v: v)
    return torch.optim.SGD([{"params": a.parameters(), "lr": lr(LRS[0])},
                            {"params": b.parameters(), "lr": lr(LRS[1])}], momentum=0.9)


def schedule(make: Callable[[torch.optim.Optimizer], Any], at: int | None = None,
             reload: bool = False, tensor_lr: bool = False, metrics: list[float] | None = None,
             factor: float = FACTOR) -> list[list[float]]:
    """LR of each group used at each step; scaled by `factor` before step `at` (optionally
    followed by a checkpoint round trip into a fresh optimizer and scheduler)."""
    opt = make_optimizer(tensor_lr)
    s = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(N):
            if t == at:
                scale_lr(opt, s, factor)
                if reload:
                    saved_opt, saved_sched = opt.state_dict(), s.state_dict()
                    opt = make_optimizer(tensor_lr)
                    s = make(opt)
                    opt.load_state_dict(saved_opt)
                    s.load_state_dict(saved_sched)
            out.append([float(g["lr"]) for g in opt.param_groups])
            opt.step()
            if metrics is not None:
                s.step(metrics[t])
            else:
                s.step()
    return out


def assert_scaled(reference: list[list[float]], changed: list[list[float]], at: int,
                  factor: float = FACTOR, rel: float = 1e-9) -> None:
    for t, (ref, got) in enumerate(zip(reference, changed, strict=True)):
        for g, (r, v) in enumerate(zip(ref, got, strict=True)):
            want = r * factor if t >= at else r
            assert math.isclose(v, want, rel_tol=rel, abs_tol=1e-15), (t, g, v, want)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("at", [0, 3, AT])
@pytest.mark.parametrize("reload", [False, True], ids=["live", "checkpointed"])
def test_a_change_scales_every_later_lr(name: str, at: int, reload: bool) -> None:
    make = SCHEDULERS[name]
    assert_scaled(schedule(make), schedule(make, at, reload), at)


@pytest.mark.parametrize("name", ["StepLR", "OneCycleLR", "CyclicLR", "LambdaLR"])
def test_tensor_lrs_scale_in_place(name: str) -> None:
    make = SCHEDULERS[name]
    # float32 tensors: the same schedule to float32 precision
    assert_scaled(schedule(make, tensor_lr=True), schedule(make, AT, tensor_lr=True), AT,
                  rel=1e-6)


def test_reduce_lr_on_plateau_keeps_a_lowered_lr() -> None:
    """Its floor is scaled too, or the next reduction would pull a lowered LR back up."""
    def make(o: torch.optim.Optimizer) -> Any:
        return sched.ReduceLROnPlateau(o, factor=0.5, patience=2, min_lr=0.02)

    metrics = [1.0] * N  # never improves: reduces every 3 steps down to the floor
    reference = schedule(make, metrics=metrics)
    assert_scaled(reference, schedule(make, AT, metrics=metrics), AT)
    lowered = schedule(make, AT, reload=True, metrics=metrics, factor=0.1)  # below the floor
    assert_scaled(reference, lowered, AT, factor=0.1)


def test_lambda_lr_change_through_the_command_path(tmp_path: Path) -> None:
    """A hand-written loop (scheduler stepped after tracker.step): "lr=X" makes the LR in
    effect at the boundary X and scales the rest of the schedule with it."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.02}])
    lam = sched.LambdaLR(opt, lambda t: 1 / (1 + 0.05 * t))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    tracker = Tracker(model, opt, lam, run_dir=tmp_path / "lambda", tensorboard=False)
    acked = None
    with tracker:
        for t in range(120):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if tracker.clip():
                opt.step()
            tracker.step(loss)
            lam.step()
            if t == 40:
                sent = control.set_value(tracker.run_dir, "lr", 0.5, wait=False)
                # The writer thread polls every 0.1 s.
                wait_until(lambda: bool(tracker.writer.inbox), 10, "the command in the inbox",
                           poll=0.005)
            if t == 41:
                tracker.flush()
                acked = control.wait_for(tracker.run_dir, sent.id, timeout=5)
    assert acked is not None and acked.step == 42
    rows = steps_table(tracker.run_dir, "step, lr_groups")
    groups = [np.frombuffer(blob, np.float64).tolist() for _, blob in rows]
    factor = 0.5 / (0.1 / (1 + 0.05 * 41))  # the LR in effect when the command was applied
    for t, lrs in enumerate(groups):
        f = factor if t >= 42 else 1.0
        want = [f * base / (1 + 0.05 * t) for base in (0.1, 0.02)]
        assert lrs == pytest.approx(want, rel=1e-9), t
    [event] = control_events(tracker.run_dir)
    assert event["step"] == 42 and event["key"] == "lr" and event["new"] == 0.5


# -- real processes ------------------------------------------------------------------------

CYCLIC = """[scheduler]
name = "CyclicLR"
base_lr = 0.01
max_lr = 0.1
step_size_up = 40
"""

ONECYCLE = """[scheduler]
name = "OneCycleLR"
max_lr = 0.1
"""
ONECYCLE_STEPS = 20_000


def cyclic(t: int) -> float:
    """torch's triangular CyclicLR, written out."""
    cycle = math.floor(1 + t / 80)
    x = 1.0 + t / 80 - cycle
    scale = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
    return 0.01 + (0.1 - 0.01) * scale


def one_cycle(t: int) -> float:
    """torch's OneCycleLR (cos, two phases, pct_start 0.3), written out."""
    initial, peak = 0.1 / 25, 0.1
    low = initial / 1e4
    up_end = 0.3 * ONECYCLE_STEPS - 1
    if t <= up_end:
        start, end, pct = initial, peak, t / up_end
    else:
        start, end, pct = peak, low, (t - up_end) / (ONECYCLE_STEPS - 1 - up_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def test_lr_change_in_real_runs_then_sigterm_and_sigint_stop_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cases = {
        "cyclic": (cyclic, write_config(tmp_path, "cyclic", scheduler=CYCLIC), signal.SIGTERM),
        "onecycle": (one_cycle, write_config(tmp_path, "onecycle", max_steps=ONECYCLE_STEPS,
                                             scheduler=ONECYCLE), signal.SIGINT),
    }
    trainers = {name: Trainer.start(cfg, runs, name) for name, (_, cfg, _) in cases.items()}
    acks: dict[str, tuple[int, float]] = {}
    try:
        for name, t in trainers.items():
            t.wait_for_step(100)
            r = clipdash("ctl", str(t.run_dir), "set", "lr=0.07")
            assert r.returncode == 0, r.stderr
            m = re.fullmatch(r"applied at step (\d+): lr (\S+) -> 0.07 from step \1\n", r.stdout)
            assert m, r.stdout
            acks[name] = (int(m[1]), 0.07 / cases[name][0](int(m[1])))
        for name, t in trainers.items():
            t.wait_for_step(acks[name][0] + 300)  # past CyclicLR's turning points
            t.signal(cases[name][2])
        for t in trainers.values():
            assert t.wait(30) == 0, t.output
    finally:
        for t in trainers.values():
            t.kill()

    for name, t in trainers.items():
        closed_form, _, sig = cases[name]
        at, factor = acks[name]
        rows = steps_table(t.run_dir, "step, lr")
        assert [s for s, _ in rows] == list(range(len(rows)))
        assert rows[at][1] == pytest.approx(0.07, rel=1e-9)
        for step, lr in rows:
            want = closed_form(step) * (factor if step >= at else 1.0)
            assert math.isclose(lr, want, rel_tol=1e-9), (name, step, lr, want)
        # The signal: the current step finishes, the run checkpoints, exits 0, "stopped".
        assert t.status() == "stopped"
        stop = len(rows)
        assert (t.run_dir / "checkpoints" / f"step-{stop:09d}.pt").is_file()
        assert f"stopped after {stop} steps" in t.output
        events = control_events(t.run_dir)
        assert events[-1]["action"] == "stop" and events[-1]["source"] == "signal"
        assert events[-1]["message"] == f"stopping before step {stop} ({sig.name})"
