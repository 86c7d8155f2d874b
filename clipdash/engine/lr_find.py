"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; 2017 revision).

A short run of the configured model, data, optimizer and clipping with the LR ramped
exponentially from `start_lr` to `end_lr` over `steps` optimizer steps (the config's scheduler
is dropped; the LR is written into every param group before each step). It is recorded as an
ordinary run, so `clipdash watch` and TensorBoard show it; it stops early once the loss diverges
(see clipdash/analysis/lr_find.py for the rule and for the suggestions made from the curve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdash.analysis.lr_find import DivergenceWatch, LrSuggestion, lr_at, suggest
from clipdash.engine.config import Config, dump_toml
from clipdash.store.layout import CONFIG_NAME


@dataclass
class LrFindResult:
    run_dir: Path
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False
    steps_per_epoch: int = 0
    suggestion: LrSuggestion | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.suggestion
        return {"run": str(self.run_dir), "lrs": self.lrs,
                "losses": [v if math.isfinite(v) else None for v in self.losses],
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


def lr_find(cfg: Config, run_dir: Path, start_lr: float, end_lr: float, steps: int,
            progress: bool = True) -> LrFindResult:
    """Run the range test; `cfg` must already be `prepare_config`ed. Creates `run_dir`."""
    from clipdash.engine.loop import setup
    from clipdash.engine.progress import RunProgress
    from clipdash.track.tracker import Tracker

    s = setup(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_NAME).write_text(dump_toml(cfg.to_dict()))
    clip = cfg.clip
    tracker = Tracker(
        s.model, s.optimizer, None, run_dir=run_dir, clip=clip.mode, max_norm=clip.max_norm,
        norm_type=clip.norm_type, max_value=clip.max_value, nonfinite=clip.nonfinite,
        clip_options=clip.adaptive_options(), total_steps=steps,
        per_param_scalars=clip.per_param_scalars,
        meta={"kind": "lr_find", "lr_find": {"start_lr": start_lr, "end_lr": end_lr,
                                             "steps": steps}})
    result = LrFindResult(run_dir, steps_per_epoch=s.steps_per_epoch)
    watch = DivergenceWatch()
    bar = RunProgress(run_dir.name, steps, enabled=progress)
    tracker.handle_signals()
    step, epoch = 0, 0
    try:
        with tracker:
            while step < steps and not tracker.should_stop:
                for x, y in s.train.epoch(epoch):
                    lr = lr_at(step, start_lr, end_lr, steps)
                    for group in s.optimizer.param_groups:
                        group["lr"] = lr
                    s.optimizer.zero_grad(set_to_none=True)
                    loss = s.loss_fn(s.model(x), y)
                    loss.backward()
                    if tracker.clip():
                        s.optimizer.step()
                    tracker.step(loss, epoch)
                    value = float(loss.detach())  # one sync a step: fine for a test of ~100 steps
                    result.lrs.append(lr)
                    result.losses.append(value)
                    step += 1
                    if bar.due():
                        bar.update(step, tracker.latest())
                    if watch.update(value):
                        result.stopped_early = True
                        tracker.event("lr_find", f"loss diverged at step {step - 1} "
                                                 f"(lr {lr:.3g}): stopping the range test")
                        break
                    if step >= steps or tracker.should_stop:
                        break
                if result.stopped_early:
                    break
                epoch += 1
    finally:
        bar.close()
    result.suggestion = suggest(result.lrs, result.losses)
    return result
