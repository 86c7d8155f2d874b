"""LR sequences produced through ScheduleDriver match closed forms, per step and per epoch."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from clipdash.engine.config import Config, config_from_dict
from clipdash.engine.errors import ConfigError
from clipdash.engine.optim import ScheduleDriver, build_optimizer, build_scheduler

LR = 0.1


def make_cfg(scheduler: dict[str, Any] | None, optimizer: dict[str, Any] | None = None,
             train: dict[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = {
        "model": {"kind": "mlp"},
        "data": {"kind": "regression"},
        "optimizer": optimizer or {"name": "SGD", "lr": LR, "momentum": 0.9},
        "train": train or {"epochs": 4},
    }
    if scheduler is not None:
        raw["scheduler"] = scheduler
    return config_from_dict(raw, "sched.toml")


def setup(cfg: Config, steps_per_epoch: int,
          total_steps: int) -> tuple[torch.optim.Optimizer, ScheduleDriver]:
    optimizer = build_optimizer(cfg, nn.Linear(2, 1))
    driver = build_scheduler(cfg, optimizer, steps_per_epoch, total_steps)
    assert driver is not None
    return optimizer, driver


def lrs_used(cfg: Config, steps_per_epoch: int, epochs: int,
             total_steps: int | None = None) -> list[float]:
    """The LR each optimizer step used, with the hooks called the way the loop calls them."""
    total = total_steps if total_steps is not None else steps_per_epoch * epochs
    optimizer, driver = setup(cfg, steps_per_epoch, total)
    out: list[float] = []
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            driver.after_step(step)
            step += 1
            if step == total:
                return out
        driver.after_epoch(epoch, None)
    return out


def expand(per_epoch: list[float], steps_per_epoch: int) -> list[float]:
    return [lr for lr in per_epoch for _ in range(steps_per_epoch)]


def triangular(t: int, base: float, peak: float, half: int, mode: str) -> float:
    """Smith (2017), "Cyclical Learning Rates", eq. for the triangular policies."""
    cycle = math.floor(1 + t / (2 * half))
    x = abs(t / half - 2 * cycle + 1)
    scale = 1.0 if mode == "triangular" else 1 / 2 ** (cycle - 1)
    return base + (peak - base) * max(0.0, 1 - x) * scale


def one_cycle(t: int, total: int, max_lr: float, pct_start: float = 0.3, div: float = 25.0,
              final_div: float = 1e4) -> float:
    """Smith & Topin (2018) 1cycle, cosine annealed: warm up to max_lr, then anneal to
    initial/final_div, the phases ending at steps pct_start*total - 1 and total - 1."""
    initial = max_lr / div
    low = initial / final_div
    up_end = pct_start * total - 1

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))

    if t <= up_end:
        return cos(initial, max_lr, t / up_end)
    return cos(max_lr, low, (t - up_end) / (total - 1 - up_end))


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
                                    for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_step_lr(interval: str) -> None:
    cfg = make_cfg({"name": "StepLR", "step_size": 2, "gamma": 0.5, "interval": interval})
    got = lrs_used(cfg, steps_per_epoch=3, epochs=6)
    if interval == "step":
        want = [LR * 0.5 ** (t // 2) for t in range(18)]
    else:
        want = expand([LR * 0.5 ** (e // 2) for e in range(6)], 3)
    assert close(got, want)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_exponential_lr(interval: str) -> None:
    cfg = make_cfg({"name": "ExponentialLR", "gamma": 0.9, "interval": interval})
    got = lrs_used(cfg, steps_per_epoch=4, epochs=5)
    want = ([LR * 0.9**t for t in range(20)] if interval == "step"
            else expand([LR * 0.9**e for e in range(5)], 4))
    assert close(got, want)


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_cyclic_lr(mode: str, interval: str) -> None:
    sched: dict[str, Any] = {"name": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1,
                             "step_size_up": 3, "mode": mode}
    if interval == "epoch":
        sched["interval"] = "epoch"
    cfg = make_cfg(sched)
    assert cfg.scheduler is not None and cfg.scheduler.interval == interval
    got = lrs_used(cfg, steps_per_epoch=2, epochs=15)
    if interval == "step":
        want = [triangular(t, 0.01, 0.1, 3, mode) for t in range(30)]
    else:
        want = expand([triangular(e, 0.01, 0.1, 3, mode) for e in range(15)], 2)
    assert close(got, want)
    assert max(got) == pytest.approx(0.1)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_one_cycle_fills_total_steps(interval: str) -> None:
    cfg = make_cfg({"name": "OneCycleLR", "max_lr": 0.5, "interval": interval})
    spe, epochs = 5, 8
    got = lrs_used(cfg, steps_per_epoch=spe, epochs=epochs)  # must not overrun the schedule
    if interval == "step":
        want = [one_cycle(t, spe * epochs, 0.5) for t in range(spe * epochs)]
    else:
        want = expand([one_cycle(e, epochs, 0.5) for e in range(epochs)], spe)
    assert close(got, want)
    assert got[0] == pytest.approx(0.5 / 25)
    assert min(got[-spe:]) == pytest.approx(0.5 / 25 / 1e4)


def test_one_cycle_length_follows_max_steps() -> None:
    cfg = make_cfg({"name": "OneCycleLR", "max_lr": 0.5},
                   train={"epochs": 10, "max_steps": 23})
    total = cfg.train.total_steps(steps_per_epoch=5)
    assert total == 23
    got = lrs_used(cfg, steps_per_epoch=5, epochs=10, total_steps=total)
    assert close(got, [one_cycle(t, 23, 0.5) for t in range(23)])
    _, driver = setup(cfg, 5, total)
    assert driver.scheduler.total_steps == 23


def test_sequential_lr_from_nested_tables() -> None:
    cfg = make_cfg({"name": "SequentialLR", "interval": "step", "milestones": [5],
                    "schedulers": [{"name": "LinearLR", "start_factor": 0.1, "total_iters": 4},
                                   {"name": "ExponentialLR", "gamma": 0.9}]})
    got = lrs_used(cfg, steps_per_epoch=4, epochs=3)
    want = [LR * (0.1 + 0.9 * min(t, 4) / 4) if t < 5 else LR * 0.9 ** (t - 5)
            for t in range(12)]
    assert close(got, want)


def test_sequential_lr_warmup_then_one_cycle_gets_its_segment_length() -> None:
    cfg = make_cfg({"name": "SequentialLR", "milestones": [4],
                    "schedulers": [{"name": "ConstantLR", "factor": 0.5, "total_iters": 4},
                                   {"name": "OneCycleLR", "max_lr": 0.5}]})
    assert cfg.scheduler is not None and cfg.scheduler.interval == "step"  # nested OneCycleLR
    got = lrs_used(cfg, steps_per_epoch=5, epochs=4)
    # (OneCycleLR rewrites the group's initial_lr, so the warm-up's level is torch's business.)
    assert len(set(got[:4])) == 1
    assert close(got[4:], [one_cycle(t, 16, 0.5) for t in range(16)])
    _, driver = setup(cfg, 5, 20)
    assert driver.scheduler._schedulers[1].total_steps == 16


def test_chained_scheduler() -> None:
    cfg = make_cfg({"name": "ChainedScheduler", "interval": "step",
                    "schedulers": [{"name": "ConstantLR", "factor": 0.5, "total_iters": 3},
                                   {"name": "ExponentialLR", "gamma": 0.9}]})
    got = lrs_used(cfg, steps_per_epoch=4, epochs=2)
    assert close(got, [LR * 0.9**t * (0.5 if t < 3 else 1.0) for t in range(8)])


def test_reduce_on_plateau_steps_only_on_eval() -> None:
    cfg = make_cfg({"name": "ReduceLROnPlateau", "patience": 1, "factor": 0.5})
    optimizer, driver = setup(cfg, 4, 16)
    for step in range(8):
        driver.after_step(step)
    driver.after_epoch(0, 1.0)
    assert optimizer.param_groups[0]["lr"] == LR
    seen = []
    for _ in range(5):
        driver.on_eval(1.0)  # never improves after the first evaluation
        seen.append(optimizer.param_groups[0]["lr"])
    assert close(seen, [LR, LR, LR / 2, LR / 2, LR / 4])


def test_other_schedulers_ignore_on_eval() -> None:
    cfg = make_cfg({"name": "ExponentialLR", "gamma": 0.5})
    optimizer, driver = setup(cfg, 4, 16)
    driver.on_eval(3.0)
    assert optimizer.param_groups[0]["lr"] == LR


def test_state_dict_resumes_the_sequence() -> None:
    cfg = make_cfg({"name": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3})
    full = lrs_used(cfg, steps_per_epoch=10, epochs=1)
    optimizer, driver = setup(cfg, 10, 10)
    for step in range(4):
        optimizer.step()
        driver.after_step(step)
    state = {"optimizer": optimizer.state_dict(), "driver": driver.state_dict()}
    assert state["driver"]["interval"] == "step"
    optimizer2, driver2 = setup(cfg, 10, 10)
    optimizer2.load_state_dict(state["optimizer"])
    driver2.load_state_dict(state["driver"])
    rest = []
    for step in range(4, 10):
        rest.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        driver2.after_step(step)
    assert close(rest, full[4:])


def test_no_scheduler_gives_none() -> None:
    cfg = make_cfg(None)
    assert build_scheduler(cfg, build_optimizer(cfg, nn.Linear(1, 1)), 5, 50) is None


def test_construction_errors_are_config_errors() -> None:
    cfg = make_cfg({"name": "SequentialLR", "milestones": [3],
                    "schedulers": [{"name": "ConstantLR"}, {"name": "ExponentialLR",
                                                            "gamma": 0.9}]})
    assert cfg.scheduler is not None
    cfg.scheduler.kwargs["milestones"] = [3, 6]  # mutated after validation: torch rejects it
    optimizer = build_optimizer(cfg, nn.Linear(1, 1))
    with pytest.raises(ConfigError, match=r"^sched\.toml: scheduler: SequentialLR rejected"):
        build_scheduler(cfg, optimizer, 5, 50)
    cfg = make_cfg(None, optimizer={"name": "Adam", "lr": 0.1, "betas": [0.8, 0.95]})
    optimizer = build_optimizer(cfg, nn.Linear(1, 1))
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    cfg.optimizer.kwargs["betas"] = [2.0, 0.9]
    with pytest.raises(ConfigError, match=r"^sched\.toml: optimizer: Adam rejected its arguments"):
        build_optimizer(cfg, nn.Linear(1, 1))
