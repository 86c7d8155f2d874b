"""`clipdash.Tracker`: clip, record and steer from any PyTorch training loop.

    tracker = clipdash.Tracker(model, optimizer, scheduler, max_norm=1.0, name="my-run")
    with tracker:
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                if tracker.clip():          # norms, clipping; False: skip this step (non-finite)
                    optimizer.step()
                tracker.step(loss, epoch)   # record; apply commands; blocks while paused
                scheduler.step()
                if tracker.should_stop:
                    break
            tracker.log_eval({"loss": val_loss})

The hot path (`clip` and `step`) launches a handful of kernels and never reads a device value on
the host, except the one finiteness check that `nonfinite = "skip" | "stop"` needs.

The Tracker is three parts: this module (measure, clip, stage into the device buffer), the
recorder (`recorder.py`: run directory, lock, writer thread, sinks) and run control
(`runcontrol.py`: commands, pause, signals, the distributed exchange).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from clipdash.store.layout import DEFAULT_RUNS_DIR
from clipdash.store.names import check_run_name, default_run_name
from clipdash.track import distributed
from clipdash.track.alerts import AlertOptions
from clipdash.track.buffer import ROW_FIELDS, StepBuffer, row_values
from clipdash.track.clippers import Clipper, make_clipper
from clipdash.track.items import (
    Eval,
    Event,
    ParamsAdded,
    RejectPending,
    Resolve,
    Rewind,
    State,
    Steps,
)
from clipdash.track.nonfinite import NonfiniteGuard
from clipdash.track.norms import ShardedNorms, is_sharded, local_shards, per_param_norms
from clipdash.track.options import ALL_SETTABLE, ClipOptions
from clipdash.track.params import ParamSet
from clipdash.track.recorder import Recorder, RecordError, Setup, describe_start
from clipdash.track.runcontrol import Observer, RunControl
from clipdash.track.steering import Command, Outcome, Steering

NONFINITE_POLICIES = ("skip", "stop", "continue")
# Clip modes that measure the post-clip norm on the clipped gradients (not derived from the
# coefficient): under FSDP2 that measurement is local and needs its own reduction.
LOCAL_POST_MODES = ("value", "agc")


@dataclass(frozen=True)
class PendingCheckpoint:
    """What a checkpoint hook returns when the Tracker is to record the checkpoint: its event
    and every step before it reach the record before `write()` makes the file exist, so a crash
    at any moment leaves no gap before a checkpoint (and a resume replaces what came after)."""

    path: Path  # where `write()` puts it, inside the run directory
    steps: int  # steps done when it was taken
    write: Callable[[], object]  # its result is ignored


# Called with a reason ("periodic", "pause", "stop") and nothing else of the Tracker: a hook never
# records through the Tracker. It saves by itself (returns None) or hands back a PendingCheckpoint.
CheckpointFn = Callable[[str], "PendingCheckpoint | None"]
RewindFn = Callable[[int, int], int | None]

__all__ = ["AlertOptions", "ClipOptions", "PendingCheckpoint", "RecordError", "Tracker",
           "TrackerError"]


class TrackerError(RuntimeError):
    """The Tracker was used out of order (clip twice in a step, a call after close)."""


class Tracker:
    """Records every step of a training run and applies commands sent to it.

    Args:
        model: the module whose parameters are clipped and tracked (named for the record, and
            measured in its order, so the total norm is clip_grad_norm_(model.parameters())'s).
        optimizer: the optimizer stepped by the loop, or a list of them (clipped as one: one
            total norm over all their parameters). The recorded LRs are every group of every
            optimizer, numbered in the order first seen (lr_group_N).
        scheduler: the LR scheduler (or a list), if any, so an LR change survives its step.
        run_dir: where to record; default `runs_dir/name`.
        clip: "norm", "value", "none", an adaptive mode ("percentile", "zscore", "agc"), or a
            ClipOptions; max_norm, norm_type, max_value, nonfinite and clip_options given here
            override its fields (see ClipOptions for every mode's parameters and checks).
        checkpoint: called with a reason ("pause", "stop", or "periodic" from
            `tracker.checkpoint()`) so that pausing and stopping leave a checkpoint. It saves by
            itself, or returns a PendingCheckpoint for the Tracker to record first and then
            write (what `clipdash run` does). It must not record through the Tracker.
        start_step: first step index. A start_step > 0 resumes the run in `run_dir`: what it
            holds at or after start_step is replaced.
        resume: continue the run in `run_dir` (from start_step). overwrite: replace it. With
            neither, a run_dir that already holds a run is refused (RunExists).
        record: write the record and read commands. Default: True, except on the non-zero
            ranks of a torch.distributed job, which clip and obey but write nothing.
        sync_every: under torch.distributed, the ranks agree on the commands to apply every
            this many steps (see `clipdash.track.distributed`).
        quiet: do not print where the run records.
        alerts: spike alerts (`AlertOptions`, a dict of its fields, None for the defaults:
            6-sigma loss and gradient-norm spikes recorded as events; False: off).
        on_rewind: how this loop goes back to a saved state, for `action = "rewind"` and
            `clipdash ctl RUN rewind`: called as on_rewind(before, skip) at a step boundary, it
            restores the newest state saved after N <= before steps (model, optimizer,
            scheduler, data position; then skips `skip` batches) and returns N, or None when
            there is no such state (the run then pauses instead). The record from step N on is
            replaced. Without it a rewind is rejected ("not supported here"), and an alert with
            action "rewind" pauses instead.
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizer: Optimizer | Sequence[Optimizer],
        scheduler: Any = None,
        *,
        run_dir: str | Path | None = None,
        name: str | None = None,
        runs_dir: str | Path = DEFAULT_RUNS_DIR,
        clip: str | ClipOptions = "norm",
        max_norm: float | None = None,
        norm_type: float | str | None = None,
        max_value: float | None = None,
        nonfinite: str | None = None,
        clip_options: dict[str, Any] | None = None,
        total_steps: int | None = None,
        tensorboard: bool = True,
        per_param_scalars: bool = False,
        record_params: bool = True,
        flush_secs: float = 0.5,
        buffer_steps: int = 256,
        checkpoint: CheckpointFn | None = None,
        start_step: int = 0,
        resume: bool = False,
        overwrite: bool = False,
        record: bool | None = None,
        meta: dict[str, Any] | None = None,
        sync_every: int = distributed.DEFAULT_SYNC_EVERY,
        quiet: bool = False,
        alerts: AlertOptions | dict[str, Any] | bool | None = None,
        on_rewind: RewindFn | None = None,
    ) -> None:
        given = {k: v for k, v in (("max_norm", max_norm), ("norm_type", norm_type),
                                   ("max_value", max_value), ("nonfinite", nonfinite))
                 if v is not None}
        self.options = ClipOptions.build(clip, clip_options, **given).resolved()
        built = AlertOptions.build(alerts)
        self.alerts = built if built is not None and built.enabled else None
        self.on_rewind = on_rewind
        self._rewound_from: int | None = None  # the step the last alert's rewind left
        if int(buffer_steps) < 1:
            raise ValueError(f"buffer_steps must be >= 1, got {buffer_steps!r}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        optimizers: list[Optimizer] = (list(optimizer) if isinstance(optimizer, list | tuple)
                                       else [optimizer])  # type: ignore[list-item]
        if not optimizers:
            raise ValueError("Tracker needs at least one optimizer")
        self.optimizers = optimizers
        self.optimizer = optimizers[0]
        self.scheduler = scheduler
        self.norm_type = self.options.norm_value
        self.nonfinite = self.options.nonfinite
        self.flush_secs = flush_secs
        self.checkpoint_fn = checkpoint
        self.step_index = start_step
        self.epoch = 0
        self._staged = False  # clip() measured this step into the buffer's staging row
        self._present: tuple[tuple[int, ...], Tensor] | None = None
        self._lrs: list[float] = []
        self._latest_row: tuple[Tensor, float, int] | None = None
        self._closed = False
        self._closing = False
        # A name is one or more safe path components inside runs_dir (ValueError otherwise).
        self.run_dir = (Path(run_dir) if run_dir else
                        Path(runs_dir) / check_run_name(name or default_run_name(), runs_dir))
        sync = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sync = distributed.ControlSync(sync_every)
        if record is None:
            record = sync is None or sync.rank == 0
        # Everything that can be refused is checked before the run directory is touched.
        self.device = _first_device(optimizers)
        self.clipper: Clipper = make_clipper(
            self.options.mode, self.device, max_norm=self.options.max_norm,
            max_value=self.options.max_value, **self.options.adaptive())
        self.recorder = Recorder(Setup(
            self.run_dir, record, resume or start_step > 0, overwrite, start_step, total_steps,
            meta or {}, tensorboard, per_param_scalars, record_params, alerts=self.alerts))
        # A steering alert action needs each step's verdict one step later (see alerts.py).
        self._hand_each_step = bool(record and self.alerts and self.alerts.steers)
        try:
            self.param_set = ParamSet(model, optimizers, self.recorder.prior_names)
            cols = self.param_set.columns
            self.steering = Steering(self.clipper, optimizers,
                                     list(scheduler) if isinstance(scheduler, list | tuple)
                                     else scheduler)
            self.buffer = StepBuffer(self.device, len(cols), int(buffer_steps))
            self._n_groups = len(self.param_set.groups)
            self._sharded = self._sharded_norms()
            self.guard = NonfiniteGuard(self.nonfinite, optimizers, self.device,
                                        lambda kind, message: self.event(kind, message))
            # With the device skip only the record knows which steps were non-finite.
            self.recorder.setup.nonfinite_events = self.guard.on_device
            self.recorder.begin(self.param_set.names, [tuple(p.shape) for p in cols],
                                [None] * len(cols), self._run_meta())
        except BaseException:
            self.recorder.abort()
            raise
        self._sync = sync
        self._lone = False  # closing after a failure: no collective may be waited on
        self.control = RunControl(self.steering, self.recorder.inbox, _ControlHost(self), sync)
        if record and not quiet:
            print(describe_start(self.run_dir), file=sys.stderr)

    def _run_meta(self) -> dict[str, Any]:
        o = self.options
        return dict(name=self.run_dir.name, clip_mode=o.mode,
                    norm_type=self.norm_type if math.isfinite(self.norm_type) else "inf",
                    nonfinite=o.nonfinite, n_groups=self._n_groups,
                    optimizer=", ".join(type(opt).__name__ for opt in self.optimizers),
                    scheduler=type(self.scheduler).__name__ if self.scheduler else None,
                    settable=list(o.settable()), settings=list(ALL_SETTABLE),
                    clip=_json_safe(o.to_dict()), rewind=self.on_rewind is not None,
                    alerts=self.alerts.to_dict() if self.alerts else None)

    # -- the hot path ----------------------------------------------------------------------

    def clip(self) -> bool:
        """Measure and clip the gradients; False when the optimizer step must be skipped.

        The norms, the post-clip norm, the coefficient and the threshold are written with `out=`
        kernels into the buffer's staging row; nothing is read back to the host unless
        `nonfinite` is "skip" or "stop" (one read of the pre-clip norm: skipping is a host
        decision).
        """
        if self._staged or self._closed:
            self._misuse("clip")
        ps = self.param_set
        if (ps.pending and ps.scan_pending()) or ps.changed():
            self._relayout()  # the parameter set changed: rare, off the common path
        buf = self.buffer
        params = ps.order
        grads = [p.grad for p in params if p.grad is not None]
        if self._sharded is not None:  # FSDP2: measure and clip this rank's shards
            grads = local_shards(grads)
        whole = len(grads) == len(params) and ps.identity  # per is the buffer's row itself
        if whole:
            per = per_param_norms(grads, self.norm_type, out=buf.per_param)
        else:
            params, per = self._partial_norms(grads)
        measured: Sequence[Tensor] = params
        if self._sharded is not None:
            cols = None if whole or not grads else self._present_columns()
            per = self._global_norms(per, cols)
            measured = local_shards(measured)
        if grads:  # the norm of the norms of the present gradients, as clip_grad_norm_ does
            torch.linalg.vector_norm(per, self.norm_type, out=buf.pre)
        else:
            buf.pre.zero_()
        self.clipper.record(grads, measured, per, buf.pre, self.norm_type, buf.post, buf.coef,
                            buf.threshold)
        if self._sharded is not None and self.clipper.mode in LOCAL_POST_MODES:
            self._global_post(grads, None if whole or not grads else self._present_columns())
        self._lrs = ps.lrs()
        self._staged = True
        if self.guard.after_measure(buf.pre, grads, self.step_index):
            return True
        if self.guard.stop_requested:
            self.steering.stop_requested = True
        return False

    def _sharded_norms(self) -> ShardedNorms | None:
        cols = self.param_set.columns
        return ShardedNorms(cols, self.device) if is_sharded(cols) else None

    @property
    def nonfinite_steps(self) -> int:
        """Steps whose gradient norm was not finite (skip / stop). With the device skip this
        reads a device counter: call it at the end, not every step."""
        return self.guard.count

    @property
    def device_skip(self) -> bool:
        """True while non-finite steps are skipped by the optimizers (no host read)."""
        return self.guard.on_device

    def _partial_norms(self, grads: list[Tensor]) -> tuple[list[nn.Parameter], Tensor]:
        """Some parameters have no gradient this step (their recorded norm is 0), or the model
        order differs from the columns' order: norms in model order, scattered into columns."""
        order = self.param_set.order
        present = tuple(i for i, p in enumerate(order) if p.grad is not None)
        per = per_param_norms(grads, self.norm_type)
        full = self.buffer.per_param
        full.zero_()
        if grads:
            if self._present is None or self._present[0] != present:
                columns = [self.param_set.order_columns[i] for i in present]
                self._present = (present, torch.tensor(columns, device=full.device))
            full.index_copy_(0, self._present[1], per.to(full.device))
        return [order[i] for i in present], per

    def _present_columns(self) -> Tensor:
        assert self._present is not None  # set by _partial_norms for this step's gradients
        return self._present[1]

    def _global_norms(self, per: Tensor, cols: Tensor | None) -> Tensor:
        """FSDP2: every column's global norm from the local ones, in one all-reduce.

        `cols`: the columns of `per` when it is not the buffer's row (some gradients absent)."""
        assert self._sharded is not None
        self._sharded.reduce_(self.buffer.per_param, self.norm_type)
        if cols is None or per.numel() == 0:
            return per
        return self.buffer.per_param.index_select(0, cols)

    def _global_post(self, grads: list[Tensor], cols: Tensor | None) -> None:
        """Modes whose post-clip norm is measured on the clipped shards: make it global."""
        assert self._sharded is not None
        buf = self.buffer
        full = torch.zeros_like(buf.per_param)
        if grads:
            post = per_param_norms(grads, self.norm_type)
            if cols is None:
                full.copy_(post)
            else:
                full.index_copy_(0, cols, post.to(full.device))
        torch.linalg.vector_norm(self._sharded.reduce_(full, self.norm_type), self.norm_type,
                                 out=buf.post)
        torch.where(buf.pre > 0, buf.post / buf.pre, torch.ones_like(buf.pre), out=buf.coef)

    def _relayout(self) -> None:
        """The optimizers' parameters or groups changed: new columns, a new buffer width."""
        ps = self.param_set
        before = len(ps.columns)
        added = ps.refresh()
        self._present = None
        if not added and len(ps.groups) == self._n_groups:
            return
        self.flush(wait=False)  # rows of the old width go out as one batch
        self.guard.recheck()
        self.recorder.setup.nonfinite_events = self.guard.on_device
        if added:
            self.buffer = StepBuffer(self.device, len(ps.columns), self.buffer.capacity)
        self._n_groups = len(ps.groups)
        self._sharded = self._sharded_norms()
        self.recorder.put(ParamsAdded(list(ps.names), [tuple(ps.columns[i].shape)
                                                       for i in added],
                                      self.step_index, self._n_groups))
        if added:
            names = ", ".join(ps.names[before:][:5]) + (", ..." if len(added) > 5 else "")
            self.event("params", f"{len(added)} parameter(s) tracked from step "
                       f"{self.step_index}: {names}", {"names": ps.names[before:]})

    def step(self, loss: Tensor | float, epoch: int | None = None) -> None:
        """Record this step (loss and what `clip` measured), then apply pending commands."""
        if self._closed:
            self._misuse("step")
        if self.recorder.error is not None:
            self.recorder.check()
        if epoch is not None:
            self.epoch = epoch
        if not self._staged:  # recorded without clip(): nothing measured
            if self.param_set.changed():
                self._relayout()
            self.buffer.clear_measurements()
            self._lrs = self.param_set.lrs()
        buf = self.buffer
        if isinstance(loss, Tensor):
            buf.loss.copy_(loss.detach())
        else:
            buf.loss.fill_(float(loss))
        buf.commit(self.step_index, self.epoch, self._lrs, self._max_value(), self._max_norm())
        self._staged = False
        self.step_index += 1
        # Under torch.distributed a hand-over is a collective (the loss mean): age is decided
        # by rank 0 at an exchange; fullness and hand-each-step are the same on every rank.
        if buf.full or self._hand_each_step or (self._sync is None
                                                and buf.age() >= self.flush_secs):
            self.flush(wait=False)
        if self._hand_each_step:
            self.recorder.wait_checked(self.step_index - 2)
        self.control.boundary(self.step_index)

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested (command, signal, or a non-finite step with "stop")."""
        return self.steering.stop_requested

    # -- observers (a progress display) ---------------------------------------------------

    @property
    def state(self) -> str:
        """"running", "paused" (blocked in step() until resumed) or "stopping"."""
        return self.control.state

    @property
    def last_control_message(self) -> str | None:
        """The last applied command, as recorded: "max_norm 1 -> 0.5 from step 120 (cli)"."""
        return self.control.last_message

    def on_control(self, fn: Observer) -> None:
        """Call fn(state, message) after every applied command (on the training thread)."""
        self.control.on_control(fn)

    # -- records off the hot path ---------------------------------------------------------

    def log_eval(self, metrics: Mapping[str, float | Tensor], step: int | None = None) -> None:
        """Record evaluation metrics (e.g. {"loss": 0.3, "accuracy": 0.9}) at `step`.

        The default step is the last recorded one, so an eval drawn after step N sits at N.
        """
        if self._closed:
            self._misuse("log_eval")
        at = self.step_index - 1 if step is None else step
        values = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"log_eval: {key} = {value!r} is not a number") from None
        self._flush_local()
        self.recorder.put(Eval(at, values))

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None,
              step: int | None = None) -> None:
        if self._closed:
            self._misuse("event")
        at = self.step_index if step is None else step
        self._flush_local()
        self.recorder.put(Event(at, kind, message, data))

    def flush(self, wait: bool = True) -> None:
        """Hand buffered steps to the writer; with `wait`, return once they are on disk.

        Under torch.distributed the loss of the steps handed over is averaged over the ranks
        here (one all-reduce): while steps are buffered, every rank calls flush() at the same
        step (an empty buffer communicates nothing). Raises RecordError if writing the record
        failed."""
        if self._closed:
            self._misuse("flush")
        if self.buffer.n:
            self._latest_row = self.buffer.last_row()  # `latest()` works after the hand-over
            if self._sync is not None and not self._lone:
                distributed.mean_over_ranks_(_loss_column(self.buffer))
        batch = self.buffer.take()
        if batch is not None:
            self.recorder.put(Steps(batch))
        if wait:
            self.recorder.barrier()
            self.recorder.check()

    def _flush_local(self) -> None:
        """Before an event: the steps so far go first, unless that needs the other ranks (an
        event may be recorded by rank 0 alone); the next common hand-over writes them."""
        if self._sync is None:
            self.flush(wait=False)

    def latest(self) -> dict[str, Any]:
        """The most recent step's values, for a progress display.

        Reads one buffer row from the device: call it a few times a second, not every step.
        """
        if self.buffer.n:
            self._latest_row = self.buffer.last_row()
        if self._latest_row is None:
            return {}
        row, lr, step = self._latest_row
        return dict(row_values(row.tolist()), lr=lr, step=step)

    def state_dict(self) -> dict[str, Any]:
        """Control state for checkpoints: thresholds in effect and the next step."""
        return {"clipper": self.clipper.state_dict(), "step": self.step_index,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clipper.load_state_dict(state.get("clipper", {}))

    # -- compatibility and introspection ----------------------------------------------------

    @property
    def writer(self) -> Recorder:
        """The recorder (its `inbox` holds commands not applied yet)."""
        return self.recorder

    @property
    def params(self) -> list[nn.Parameter]:
        """Tracked parameters in the order of the recorded per-parameter norms."""
        return self.param_set.columns

    def _max_value(self) -> float:
        return self.clipper.get("max_value") if self.clipper.mode == "value" else math.nan

    def _max_norm(self) -> float:
        """The fixed max_norm as set on the host; NaN for modes whose threshold is computed."""
        return self.clipper.get("max_norm") if self.clipper.mode == "norm" else math.nan

    def _misuse(self, call: str) -> None:
        if self._closed:
            raise TrackerError(f"Tracker.{call}() after close(): the run in {self.run_dir} has "
                               "ended (make a new Tracker with resume=True to continue it)")
        raise TrackerError(f"Tracker.clip() called twice for step {self.step_index}: call "
                           "step() after each clip()")

    # -- control ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.steering.stop_requested = True

    def handle_signals(self) -> None:
        """SIGINT and SIGTERM finish the current step and stop cleanly; a second SIGINT aborts."""
        self.control.handle_signals()

    def checkpoint(self, reason: str = "periodic") -> None:
        """Take a checkpoint through the `checkpoint` hook, between steps (pause and stop take
        theirs by themselves). Under torch.distributed every rank calls it at the same step."""
        if self._closed:
            self._misuse("checkpoint")
        self._checkpoint(reason)

    def _checkpoint(self, reason: str) -> None:
        if self.checkpoint_fn is None:
            return
        self.flush()  # every rank hands its steps over together (the loss is their mean)
        pending = self.checkpoint_fn(reason)
        if pending is None:
            return
        where = pending.path.relative_to(self.run_dir) if pending.path.is_relative_to(
            self.run_dir) else pending.path
        self.event("checkpoint", f"{reason} checkpoint after {pending.steps} steps",
                   {"path": str(where), "reason": reason})
        self.flush()
        pending.write()

    def _rewind(self, cmd: Command, step: int) -> Outcome:
        """Go back to the newest saved state before the alert (or `--to`), at a boundary."""
        last_alert = self.recorder.last_alert
        before = (int(cmd.key) if cmd.key else last_alert if last_alert is not None
                  and last_alert < step else step)
        skip = (int(cmd.value) if cmd.value else self.alerts.rewind_skip if self.alerts
                else 0)
        auto = cmd.source == "alert"
        if auto and self._rewound_from is not None and before < self._rewound_from:
            # The replay spiked again before getting past the last spike: rewinding again
            # would loop (the same checkpoint, the same batches). The user decides.
            return self._pause_instead(f"rewind: another alert (step {before}) before the run "
                                       f"got past step {self._rewound_from}, where the last "
                                       "rewind came from")
        if self.on_rewind is None:
            why = "rewind is not supported here (the loop passed no Tracker(on_rewind=...))"
            if cmd.source != "alert":
                return Outcome(False, why)
            return self._pause_instead(why)
        self.flush()  # every earlier step and its alerts are written before the record moves
        # Thresholds set since the checkpoint (`ctl set max_norm=...` while paused) are the
        # user's decision about the replay: they outlive the restored control state.
        kept = {key: self.clipper.get(key) for key in self.clipper.settable}
        restored = self.on_rewind(before, skip)
        for key, value in kept.items():
            self.clipper.set(key, value)
        if restored is None:
            return self._pause_instead(f"rewind: no checkpoint at or before step {before}")
        if not 0 <= restored <= min(before, step):
            raise TrackerError(f"on_rewind({before}, {skip}) returned {restored!r}: expected "
                               f"a step in [0, {min(before, step)}] or None")
        self.recorder.put(Rewind(restored))
        self._rewound_from = step if auto else None
        self.step_index = restored
        self.steering.paused = False
        self.control.drop_alerts_from(restored)
        skipped = f", skipping {skip} batch(es)" if skip else ""
        return Outcome(True, f"rewound from step {step} to the checkpoint after {restored} "
                             f"steps{skipped}",
                       {"action": "rewind", "from": step, "to": restored, "before": before,
                        "skip": skip})

    def _pause_instead(self, why: str) -> Outcome:
        self.steering.paused = True
        return Outcome(True, f"{why}: paused instead", {"action": "pause", "reason": why})

    # -- closing ---------------------------------------------------------------------------

    def close(self, state: str | None = None, message: str | None = None, *,
              checkpoint: bool = True) -> None:
        """Flush everything and mark the run finished (or stopped / failed).

        A stopped run checkpoints first (unless `checkpoint` is False: after an interrupt in
        the middle of a step, the state is not at a step boundary). Commands still queued are
        rejected, so a later resume does not obey them. Raises RecordError (after closing) if
        writing the record failed and that was not reported yet.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        # After a failure another rank may be gone: the last steps keep this rank's loss.
        self._lone = state is not None and state != "finished"
        try:
            self.control.close(self.step_index)
            final = state or ("stopped" if self.should_stop else "finished")
            if final == "stopped" and checkpoint:
                try:
                    self._checkpoint("stop")
                except Exception as exc:  # noqa: BLE001 - the record must still be closed
                    message = f"stop checkpoint failed: {type(exc).__name__}: {exc}"
                    print(f"clipdash: {message}", file=sys.stderr)
            self.flush(wait=False)
            self.recorder.put(RejectPending(f"the run ended ({final}) before applying it"))
            self.recorder.put(State(final, message))
        finally:
            self._closed = True
            self.guard.release()  # the optimizers must not keep skipping without us
            self.recorder.finish()
            self.control.restore_signals()
        if not self.recorder.reported:
            self.recorder.check()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            if issubclass(exc_type, KeyboardInterrupt):
                self.close("stopped", "interrupted", checkpoint=False)
            else:
                self.close("failed", f"{exc_type.__name__}: {exc}")
        except RecordError as err:  # the exception in flight is the one to see
            print(str(err), file=sys.stderr)

    def __repr__(self) -> str:
        return f"Tracker(run_dir={str(self.run_dir)!r}, step={self.step_index}, pid={os.getpid()})"


class _ControlHost:
    """What run control may ask of the Tracker: the narrow interface of `runcontrol.Host`."""

    def __init__(self, tracker: Tracker) -> None:
        self._t = tracker

    def flush(self, wait: bool = True) -> None:
        self._t.flush(wait)

    def flush_due(self) -> bool:
        buf = self._t.buffer
        return buf.n > 0 and buf.age() >= self._t.flush_secs

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._t.event(kind, message, data)

    def checkpoint(self, reason: str) -> None:
        self._t._checkpoint(reason)

    def set_state(self, state: str) -> None:
        self._t.recorder.put(State(state))

    def resolve(self, command: Command, applied: bool, message: str) -> None:
        self._t.recorder.put(Resolve(command.id, applied, self._t.step_index, message))

    def rewind(self, command: Command, step: int) -> Outcome:
        return self._t._rewind(command, step)


def _loss_column(buf: StepBuffer) -> Tensor:
    """The loss of the steps in the buffer (a strided view of its current slot)."""
    return buf.device_rows[buf.slot][: buf.n, ROW_FIELDS.index("loss")]


def _first_device(optimizers: list[Optimizer]) -> torch.device:
    """Where the buffer lives: the first trainable parameter's device."""
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    first = next((p for p in params if p.requires_grad), params[0] if params else None)
    return first.device if first is not None else torch.device("cpu")


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in values.items()}
