"""The config-driven training loop behind `clipdash run`.

It drives the same public `Tracker` a hand-written loop uses; the only things it adds are building
the pieces from the config, evaluation, periodic checkpoints, resume, and the progress display.
Everything is built (and every config error raised) before the run directory is created.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from clipdash.engine import checkpoint, fsdp, ranks
from clipdash.engine.batches import Batches
from clipdash.engine.config import ClipConfig, Config, check_device
from clipdash.engine.data import DataBundle, build_data
from clipdash.engine.distconfig import check_backend_device
from clipdash.engine.errors import CheckpointError, ConfigError
from clipdash.engine.models import build_model
from clipdash.engine.optim import build_optimizer, build_scheduler
from clipdash.engine.progress import RunProgress
from clipdash.track.tracker import PendingCheckpoint, Tracker

DEFAULT_MAX_THREADS = 4  # past this, small models get slower, not faster
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Setup:
    """Everything a run needs, built from a config before anything touches the disk."""

    cfg: Config
    device: torch.device
    data: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    driver: Any  # ScheduleDriver | None
    loss_fn: nn.Module
    train: Batches
    val: Batches | None
    steps_per_epoch: int
    total_steps: int
    net: nn.Module | None = None
    """What the loop calls forward on: the model, or its DistributedDataParallel wrapper."""


def _batches(dataset: Any, tensors: Any, batch_size: int, seed: int, device: torch.device,
             shuffle: bool, rank: int = 0, world: int = 1) -> Batches:
    if tensors is not None:
        tensors = tuple(t.to(device) for t in tensors)  # one copy up front, not one per step
    return Batches(dataset, batch_size, seed, tensors, shuffle, rank, world)


def threads_for(cfg: Config) -> int:
    """CPU threads for this run: `[train] threads`, else $OMP_NUM_THREADS, else a fair share.

    The fair share is min(4, cores / ranks on this machine): N ranks (or N sweep jobs, which
    set OMP_NUM_THREADS for their children) each taking every core would thrash.
    """
    if cfg.train.threads is not None:
        return cfg.train.threads
    with_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if with_env.isdigit() and int(with_env) > 0:
        return int(with_env)
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(DEFAULT_MAX_THREADS, (os.cpu_count() or 1) // local_ranks))


def _built(cfg: Config, key: str, what: str, make: Callable[[], T]) -> T:
    """`make()`, with what torch raises for impossible sizes or data made a ConfigError."""
    try:
        return make()
    except ConfigError:
        raise
    except (RuntimeError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        text = " ".join(str(exc).split())
        if isinstance(exc, MemoryError) or "alloc" in text.lower():
            text = f"not enough memory ({text or 'MemoryError'}); make it smaller"
        raise ConfigError(cfg.source, key, f"cannot build the {what}: "
                                           f"{type(exc).__name__}: {text[:300]}") from None


def setup(cfg: Config) -> Setup:
    """Build everything from `cfg`; every failure here is a ConfigError (nothing is on disk)."""
    check_device(cfg)
    torch.set_num_threads(threads_for(cfg))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    check_backend_device(cfg.distributed, device, cfg.source)
    # Under torchrun: join the group, this rank's device.
    device = ranks.init(device, cfg.distributed.backend)
    rank, world = ranks.rank(), ranks.world_size()
    data = _built(cfg, "data", "data", lambda: build_data(cfg))
    model = _built(cfg, "model", "model", lambda: build_model(cfg, data).to(device))
    # With more than one rank: DDP, or the model sharded in place (fsdp2).
    net = ranks.wrap(model, device, cfg.distributed.strategy)
    optimizer = build_optimizer(cfg, model)
    bs = cfg.data.batch_size
    train = _built(cfg, "data", "training batches", lambda: _batches(
        data.train, data.train_tensors, bs, cfg.seed, device, shuffle=True, rank=rank,
        world=world))
    val_tensors = getattr(data, "val_tensors", None)
    val = (_built(cfg, "data", "validation batches", lambda: _batches(
        data.val, val_tensors, bs, cfg.seed, device, shuffle=False))
        if data.val is not None else None)
    steps_per_epoch = len(train)
    total_steps = cfg.train.total_steps(steps_per_epoch)
    driver = build_scheduler(cfg, optimizer, steps_per_epoch, total_steps)
    loss_name = cfg.train.loss or data.default_loss
    loss_fn: nn.Module = nn.CrossEntropyLoss() if loss_name == "cross_entropy" else nn.MSELoss()
    return Setup(cfg, device, data, model, optimizer, driver, loss_fn, train, val,
                 steps_per_epoch, total_steps, net)


def tracker_options(clip: ClipConfig) -> dict[str, Any]:
    """The Tracker's keyword arguments for a `[clip]` table: the one mapping of the two."""
    return dict(clip=clip.options(), per_param_scalars=clip.per_param_scalars)


class LoopHooks:
    """Where a variant of the run (lr-find's LR ramp) plugs into the one loop; no-ops here."""

    final_eval = True
    """Evaluate once more at the end when the last step was not evaluated."""

    def before_step(self, trainer: Trainer, step: int) -> None:
        """Before the forward pass of `step` (e.g. write this step's LR into the groups)."""

    def after_step(self, trainer: Trainer, step: int, loss: Tensor) -> bool:
        """After `step` is recorded; True ends training here (the run still finishes)."""
        return False


class Trainer:
    def __init__(self, s: Setup, run_dir: Path, resume: bool = False, progress: bool = True,
                 meta: dict[str, Any] | None = None, controls: Mapping[str, float] | None = None,
                 hooks: LoopHooks | None = None) -> None:
        self.s = s
        self.run_dir = run_dir
        self.step = 0
        self.position = (0, 0)  # (epoch, next batch index)
        self.last_val: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval_step = -1
        self.tracker_state: dict[str, Any] | None = None
        self.restored_from: Path | None = None  # the checkpoint a resumed run continues from
        self.rewound = False  # a rewind restored a checkpoint inside tracker.step()
        self.lead = ranks.is_leader()  # records, checkpoints and shows progress
        self.hooks = hooks or LoopHooks()
        self.ended_early = False  # a hook ended training before total_steps
        if resume:
            self._restore()
        self.tracker = Tracker(
            s.model, s.optimizer, s.driver.scheduler if s.driver else None,
            run_dir=run_dir, total_steps=s.total_steps, checkpoint=self._checkpoint,
            start_step=self.step, resume=resume, meta=meta, alerts=s.cfg.alerts,
            on_rewind=self._rewind, **tracker_options(s.cfg.clip))
        if self.tracker_state:
            self.tracker.load_state_dict(self.tracker_state)
        if resume and self.restored_from is not None:
            self.tracker.event("resume", f"resumed from the checkpoint at step {self.step}",
                               {"path": str(self.restored_from.relative_to(run_dir))})
        elif resume:
            self.tracker.event("resume", "no checkpoint to resume from: started over")
        for key, value in (controls or {}).items():
            self._apply_control(key, value)
        self.progress = RunProgress(run_dir.name, s.total_steps, self.step,
                                    enabled=progress and self.lead)
        # Steering shows on the progress line at once (a paused loop never reaches update()).
        self.tracker.on_control(self.progress.set_state)

    def _apply_control(self, key: str, value: float) -> None:
        """A `--set` on resume: the same change `clipdash ctl set` makes, from this step."""
        from clipdash.track.steering import Command

        # The same Steering.apply that `clipdash ctl set` commands go through, at this step.
        outcome = self.tracker.steering.apply(
            Command(0, "resume", "set", key, repr(value)), self.step)
        if not outcome.applied:
            raise CheckpointError(f"--set {key}={value:g} on resume: {outcome.message}")
        data = dict(outcome.event or {}, source="resume")
        self.tracker.event("control", f"{outcome.message} (--set on resume)", data)

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, reason: str) -> PendingCheckpoint | None:
        """The Tracker's checkpoint hook: it has flushed every rank's steps, and records the
        checkpoint's event before calling `write`."""
        s = self.s
        path = checkpoint.path_for(self.run_dir, self.step)
        shards = (fsdp.save_shards(path, s.model, s.optimizer)  # every rank its own shards
                  if fsdp.is_sharded(s.model) else None)
        if not self.lead:  # under DDP rank 0 holds the same state as every rank
            return None
        weights = ({"shards": shards} if shards is not None else
                   {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict()})
        state = {
            "step": self.step,
            "position": self.position,
            "last_val": self.last_val,
            "last_eval_step": self.last_eval_step,
            **weights,
            "scheduler": s.driver.state_dict() if s.driver else None,
            "tracker": self.tracker.state_dict(),
        }
        step = self.step
        return PendingCheckpoint(path, step, lambda: checkpoint.save(self.run_dir, state, step))

    def _restore(self) -> None:
        """Load the latest checkpoint; without one the run starts over in the same directory."""
        path = checkpoint.latest(self.run_dir)
        if path is not None:
            self._load(path)

    def _rewind(self, before: int, skip: int) -> int | None:
        """Tracker(on_rewind=...): back to the newest checkpoint after at most `before` steps,
        in this process, then `skip` batches further; the loop restarts its data there."""
        path = checkpoint.latest(self.run_dir, at_most=before)
        if path is None:
            return None
        self._load(path)
        if self.tracker_state:
            self.tracker.load_state_dict(self.tracker_state)
        epoch, batch = self.position
        per_epoch = self.s.steps_per_epoch
        self.position = (epoch + (batch + skip) // per_epoch, (batch + skip) % per_epoch)
        self.rewound = True
        return self.step

    def _load(self, path: Path) -> None:
        s = self.s
        state = checkpoint.load(path)  # CheckpointError (one line) if unsafe or unreadable
        try:
            if "shards" in state:
                fsdp.load_shards(path, state["shards"], s.model, s.optimizer)
            else:
                s.model.load_state_dict(state["model"])
                s.optimizer.load_state_dict(state["optimizer"])
            if s.driver and state.get("scheduler") is not None:
                s.driver.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            epoch, batch = state["position"]
            self.position = (int(epoch), int(batch))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot resume from this"
            raise CheckpointError(
                f"{path}: cannot resume from it ({type(exc).__name__}: {exc}); was the config "
                "changed?") from exc
        self.restored_from = path
        self.last_val = state.get("last_val")
        self.last_eval_step = int(state.get(
            "last_eval_step", self.step - 1 if self.last_val is not None else -1))
        self.tracker_state = state.get("tracker")

    # -- training --------------------------------------------------------------------------

    def run(self) -> str:
        """Train to the end (or until stopped); returns the final status word."""
        self.tracker.handle_signals()
        try:
            with self.tracker:
                self._train()
                if (self.hooks.final_eval and self.last_eval_step != self.step - 1
                        and self.step > 0):
                    self._evaluate()
        finally:
            self.progress.close()
        return "stopped" if self.tracker.should_stop else "finished"

    def _train(self) -> None:
        s, tracker = self.s, self.tracker
        cfg = s.cfg.train
        epoch, start = self.position
        hooks = self.hooks
        first = self.step + 1  # flushed at once, so `watch` and `ls` see the run start
        while self.step < s.total_steps and not tracker.should_stop and not self.ended_early:
            for batch_idx, (x, y) in enumerate(s.train.epoch(epoch, start), start=start):
                hooks.before_step(self, self.step)
                loss = self._forward_backward(x, y)
                if tracker.clip():
                    s.optimizer.step()
                if s.driver:
                    s.driver.after_step(self.step)
                self.step += 1
                if self.step % cfg.eval_every == 0:
                    self._evaluate()
                last_in_epoch = batch_idx == s.steps_per_epoch - 1
                if last_in_epoch and s.driver:
                    s.driver.after_epoch(epoch, self.last_val)
                self.position = (epoch + 1, 0) if last_in_epoch else (epoch, batch_idx + 1)
                tracker.step(loss, epoch)
                if self.step == first:
                    tracker.flush(wait=False)
                if self.rewound:  # tracker.step() restored a checkpoint: new data position
                    self.rewound = False
                    break
                if hooks.after_step(self, self.step - 1, loss):
                    self.ended_early = True
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    tracker.checkpoint("periodic")
                if self.progress.due():
                    self.progress.update(self.step, tracker.latest())
                if tracker.should_stop or self.step >= s.total_steps:
                    break
            epoch, start = self.position

    def _forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.s
        s.optimizer.zero_grad(set_to_none=True)
        loss = s.loss_fn((s.net or s.model)(x), y)
        loss.backward()
        return loss

    @torch.no_grad()
    def _evaluate(self) -> None:
        s = self.s
        if s.val is None:
            return
        s.model.eval()
        total, correct, count = 0.0, 0, 0
        classify = isinstance(s.loss_fn, nn.CrossEntropyLoss)
        for x, y in s.val.epoch(0):
            out = s.model(x)
            total += float(s.loss_fn(out, y)) * len(y)
            if classify:
                correct += int((out.argmax(-1) == y).sum())
            count += len(y)
        s.model.train()
        metrics = {"loss": total / max(1, count)}
        if classify:
            metrics["accuracy"] = correct / max(1, count)
        self.last_val = metrics["loss"] if math.isfinite(metrics["loss"]) else None
        self.last_metrics = metrics
        self.last_eval_step = self.step - 1
        if s.driver is not None and hasattr(s.driver, "on_eval"):
            s.driver.on_eval(metrics["loss"])
        self.tracker.log_eval(metrics, step=self.step - 1)
