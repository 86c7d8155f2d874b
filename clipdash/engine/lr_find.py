"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; 2017 revision).

A short run of the configured model, data, optimizer and clipping with the LR ramped
exponentially from `start_lr` to `end_lr` over `steps` optimizer steps (the config's scheduler
is dropped; the LR is written into every param group before each step). It is recorded as an
ordinary run, so `clipdash watch` and TensorBoard show it; it stops early once the loss diverges
(see clipdash/analysis/lr_find.py for the rule and for the suggestions made from the curve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from clipdash.analysis.lr_find import DivergenceWatch, LrSuggestion, lr_at, suggest
from clipdash.engine.config import Config
from clipdash.engine.loop import LoopHooks, Trainer


@dataclass
class LrFindResult:
    run_dir: Path
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False
    steps_per_epoch: int = 0
    suggestion: LrSuggestion | None = None
    failed: bool = False

    def to_json(self) -> dict[str, Any]:
        s = self.suggestion
        return {"run": str(self.run_dir), "lrs": self.lrs,
                "losses": self.losses,  # inf / nan as the strings of clipdash.jsonfmt
                "stopped_early": self.stopped_early, "steps_per_epoch": self.steps_per_epoch,
                "suggestion": s.__dict__ if s is not None else None}


def prepare_config(cfg: Config, start_lr: float, steps: int) -> Config:
    """The config of the test itself: no scheduler, `steps` steps, no periodic checkpoints."""
    cfg.scheduler = None
    cfg.sweep = None
    cfg.optimizer.lr = start_lr
    cfg.train.epochs = None
    cfg.train.max_steps = steps
    cfg.train.checkpoint_every = 0
    cfg.train.eval_every = max(cfg.train.eval_every, steps + 1)  # no evaluation: loss vs LR only
    return cfg


class _Ramp(LoopHooks):
    """The range test as hooks on the ordinary loop: set each step's LR, watch the loss."""

    final_eval = False  # loss vs LR only

    def __init__(self, result: LrFindResult, start_lr: float, end_lr: float, steps: int) -> None:
        self.result = result
        self.start_lr, self.end_lr, self.steps = start_lr, end_lr, steps
        self.watch = DivergenceWatch()
        self.lr = start_lr

    def before_step(self, trainer: Trainer, step: int) -> None:
        self.lr = lr_at(step, self.start_lr, self.end_lr, self.steps)
        for group in trainer.s.optimizer.param_groups:
            group["lr"] = self.lr

    def after_step(self, trainer: Trainer, step: int, loss: Tensor) -> bool:
        value = float(loss.detach())  # one sync a step: fine for a test of ~100 steps
        self.result.lrs.append(self.lr)
        self.result.losses.append(value)
        if not self.watch.update(value):
            return False
        self.result.stopped_early = True
        trainer.tracker.event("lr_find", f"loss diverged at step {step} "
                                              f"(lr {self.lr:.3g}): stopping the range test")
        return True


def lr_find(cfg: Config, run_dir: Path, start_lr: float, end_lr: float, steps: int,
            progress: bool = True) -> LrFindResult:
    """Run the range test; `cfg` must already be `prepare_config`ed. Creates `run_dir`.

    The test is an ordinary run of the engine's loop (same Tracker options, same lifecycle:
    nothing left behind when it cannot start, error.log when it fails); RunError or
    ConfigError when it cannot start, `result.failed` when it failed while training.
    """
    from clipdash.engine.lifecycle import train
    from clipdash.engine.loop import setup

    prepared = setup(cfg)
    result = LrFindResult(run_dir, steps_per_epoch=prepared.steps_per_epoch)
    ramp = _Ramp(result, start_lr, end_lr, steps)
    meta = {"kind": "lr_find", "lr_find": {"start_lr": start_lr, "end_lr": end_lr,
                                           "steps": steps}}
    code = train(cfg, prepared, run_dir, resume=False, progress=progress,
                 runs_dir=run_dir.parent, meta=meta, hooks=ramp, report=False)
    result.failed = code != 0
    result.suggestion = suggest(result.lrs, result.losses)
    return result
