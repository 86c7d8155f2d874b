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
the host, except the one finiteness check that `nonfinite = "skip" | "stop"` needs on CUDA.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from clipdash.store.commands import reject_pending
from clipdash.store.layout import DEFAULT_RUNS_DIR, is_run_dir
from clipdash.store.writer import RunWriter
from clipdash.track import distributed
from clipdash.track.buffer import StepBuffer, row_values
from clipdash.track.clippers import Clipper, make_clipper
from clipdash.track.lr import current_lrs
from clipdash.track.norms import as_norm_type, per_param_norms
from clipdash.track.steering import Steering
from clipdash.track.tensorboard import TensorBoardSink
from clipdash.track.writer import Command, WriterThread

NONFINITE_POLICIES = ("skip", "stop", "continue")
PAUSE_POLL_S = 0.05
CheckpointFn = Callable[[str], None]


def default_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


class Tracker:
    """Records every step of a training run and applies commands sent to it.

    Args:
        model: the module whose parameters are clipped and tracked (named for the record).
        optimizer: the optimizer stepped by the loop; its param groups give the recorded LRs.
        scheduler: the LR scheduler, if any, so that an LR change survives its next step.
        run_dir: where to record; default `runs_dir/name`.
        clip: "norm", "value", "none", or an adaptive mode ("percentile", "zscore", "agc").
        max_norm, norm_type, max_value: as in clip_grad_norm_ / clip_grad_value_.
        nonfinite: what a step with a non-finite gradient norm does: "skip" (no update),
            "stop" (end the run), "continue" (update anyway, as clip_grad_norm_ would).
        checkpoint: called with a reason ("pause", "stop") so that pausing and stopping leave
            a checkpoint; `clipdash run` passes its checkpointer.
        start_step: first step index. When `run_dir` already holds a record (a resumed run),
            what it has at or after start_step is replaced; with 0, the record starts over.
        record: write the record and read commands. Default: True, except on the non-zero
            ranks of a torch.distributed job, which clip and obey but write nothing.
        sync_every: under torch.distributed, the ranks agree on the commands to apply every
            this many steps (see `clipdash.track.distributed`).
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizer: Optimizer,
        scheduler: Any = None,
        *,
        run_dir: str | Path | None = None,
        name: str | None = None,
        runs_dir: str | Path = DEFAULT_RUNS_DIR,
        clip: str = "norm",
        max_norm: float = 1.0,
        norm_type: float | str = 2.0,
        max_value: float = 0.5,
        nonfinite: str = "skip",
        clip_options: dict[str, Any] | None = None,
        total_steps: int | None = None,
        tensorboard: bool = True,
        per_param_scalars: bool = False,
        record_params: bool = True,
        flush_secs: float = 0.5,
        buffer_steps: int = 256,
        checkpoint: CheckpointFn | None = None,
        start_step: int = 0,
        record: bool | None = None,
        meta: dict[str, Any] | None = None,
        sync_every: int = distributed.DEFAULT_SYNC_EVERY,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.norm_type = as_norm_type(norm_type)
        self.nonfinite = nonfinite
        self.flush_secs = flush_secs
        self.checkpoint_fn = checkpoint
        self.named_params = self._collect_params(model, optimizer)
        self.params = [p for _, p in self.named_params]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        options = dict(clip_options or {}, max_norm=max_norm, max_value=max_value)
        self.clipper: Clipper = make_clipper(clip, self.device, **options)
        self.steering = Steering(self.clipper, optimizer, scheduler)
        self.step_index = start_step
        self.epoch = 0
        self._staged = False  # clip() measured this step into the buffer's staging row
        self._present: tuple[tuple[int, ...], Tensor] | None = None
        self._lrs: list[float] = []
        self._last_finite = True
        self.nonfinite_steps = 0  # steps whose gradient norm was not finite (skip / stop)
        self._latest_row: tuple[Tensor, float, int] | None = None
        self._closed = False
        self._pause_ready = False
        self._signal_handlers: dict[int, Any] = {}
        self.buffer = StepBuffer(self.device, len(self.params), buffer_steps)
        self.run_dir = Path(run_dir) if run_dir else Path(runs_dir) / (name or default_run_name())
        self._sync: distributed.ControlSync | None = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._sync = distributed.ControlSync(sync_every)
        self._signal_pending: str | None = None  # caught, not yet exchanged (distributed)
        if record is None:
            record = self._sync is None or self._sync.rank == 0
        self.writer = self._open_writer(record, start_step, total_steps, tensorboard,
                                        per_param_scalars, record_params, meta or {})

    # -- setup -----------------------------------------------------------------------------

    @staticmethod
    def _collect_params(model: nn.Module | None,
                        optimizer: Optimizer) -> list[tuple[str, nn.Parameter]]:
        """Parameters the optimizer updates, named after the model where it knows them."""
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        seen: set[int] = set()
        out = []
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                out.append((names.get(id(p), f"group{g}.param{i}"), p))
        return out

    def _open_writer(self, record: bool, start_step: int, total_steps: int | None,
                     tensorboard: bool, per_param_scalars: bool, record_params: bool,
                     meta: dict[str, Any]) -> WriterThread:
        if not record:
            thread = WriterThread(None, None)
            thread.start()
            return thread
        # An existing record is continued from start_step: what a crash left after it is
        # replaced, not duplicated (start_step 0 starts the record over).
        resume = is_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = RunWriter(self.run_dir, resume=resume)
        kept_events: list[tuple[int, str, str]] = []
        if resume:
            store.truncate_after(start_step - 1)
            reject_pending(store.conn, f"expired: the run restarted at step {start_step}")
            # TensorBoard's purge marker drops everything at >= start_step from older files,
            # including the events recorded at start_step before the checkpoint: repeat those.
            kept_events = store.conn.execute(
                "SELECT step, kind, message FROM events WHERE step = ? ORDER BY id",
                (start_step,)).fetchall()
        names = [n for n, _ in self.named_params]
        store.set_params([(n, tuple(p.shape)) for n, p in self.named_params])
        store.set_meta(name=self.run_dir.name, clip_mode=self.clipper.mode,
                       norm_type=self.norm_type if math.isfinite(self.norm_type) else "inf",
                       nonfinite=self.nonfinite, n_groups=len(self.optimizer.param_groups),
                       optimizer=type(self.optimizer).__name__,
                       scheduler=type(self.scheduler).__name__ if self.scheduler else None,
                       settable=list(self.steering.settable()), **meta)
        store.start(total_steps)
        board = None
        if tensorboard:
            board = TensorBoardSink(self.run_dir, names, per_param_scalars,
                                    purge_from=start_step if resume else None)
            for step, kind, message in kept_events:
                board.write_event(step, kind, message)
        thread = WriterThread(store, board, with_params=record_params)
        thread.start()
        return thread

    # -- the hot path ----------------------------------------------------------------------

    def clip(self) -> bool:
        """Measure and clip the gradients; False when the optimizer step must be skipped.

        The norms, the post-clip norm, the coefficient and the threshold are written with `out=`
        kernels into the buffer's staging row; nothing is read back to the host unless
        `nonfinite` is "skip" or "stop" (one read of the pre-clip norm: skipping is a host
        decision).
        """
        buf = self.buffer
        params = self.params
        grads = [p.grad for p in params if p.grad is not None]
        if len(grads) == len(params):
            per = per_param_norms(grads, self.norm_type, out=buf.per_param)
        else:
            params, per = self._partial_norms(grads)
        if grads:  # the norm of the norms of the present gradients, as clip_grad_norm_ does
            torch.linalg.vector_norm(per, self.norm_type, out=buf.pre)
        else:
            buf.pre.zero_()
        self.clipper.record(grads, params, per, buf.pre, self.norm_type, buf.post, buf.coef,
                            buf.threshold)
        self._lrs = current_lrs(self.optimizer)
        self._staged = True
        if self.nonfinite == "continue":
            return True
        # The one host read on the hot path (documented in DESIGN.md): on CUDA it waits for the
        # norm; reading the value is cheaper than an isfinite kernel plus the same wait.
        finite = math.isfinite(buf.pre.item())
        if not finite:
            self.nonfinite_steps += 1
            if grads:
                torch._foreach_zero_(grads)
            if self.nonfinite == "stop":
                self.steering.stop_requested = True
                self.event("nonfinite", f"non-finite gradient norm at step {self.step_index}: "
                           "stopping")
            elif self._last_finite:  # one event per streak; every step's `finite` is recorded
                self.event("nonfinite", f"non-finite gradient norm at step {self.step_index}: "
                           "step skipped, and every step until the gradients are finite again")
        self._last_finite = finite
        return finite

    def _partial_norms(self, grads: list[Tensor]) -> tuple[list[nn.Parameter], Tensor]:
        """Some parameters have no gradient this step: their recorded norm is 0."""
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        per = per_param_norms(grads, self.norm_type)
        full = self.buffer.per_param
        full.zero_()
        if grads:
            if self._present is None or self._present[0] != present:
                self._present = (present, torch.tensor(present, device=full.device))
            full.index_copy_(0, self._present[1], per.to(full.device))
        return [self.params[i] for i in present], per

    def step(self, loss: Tensor | float, epoch: int | None = None) -> None:
        """Record this step (loss and what `clip` measured), then apply pending commands."""
        if epoch is not None:
            self.epoch = epoch
        buf = self.buffer
        if not self._staged:  # recorded without clip(): nothing measured
            buf.clear_measurements()
            self._lrs = current_lrs(self.optimizer)
        if isinstance(loss, Tensor):
            buf.loss.copy_(loss.detach())
        else:
            buf.loss.fill_(float(loss))
        buf.commit(self.step_index, self.epoch, self._lrs, self._max_value(), self._max_norm())
        self._staged = False
        self.step_index += 1
        if self.buffer.full or self.buffer.age() >= self.flush_secs:
            self.flush(wait=False)
        if self._sync is not None:
            if self._sync.due(self.step_index):
                self._exchange()
        elif self.writer.inbox:
            self._apply_commands()
        if self.steering.paused:
            self._wait_while_paused()

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested (command, signal, or a non-finite step with "stop")."""
        return self.steering.stop_requested

    # -- records off the hot path ---------------------------------------------------------

    def log_eval(self, metrics: Mapping[str, float | Tensor], step: int | None = None) -> None:
        """Record evaluation metrics (e.g. {"loss": 0.3, "accuracy": 0.9}) at `step`.

        The default step is the last recorded one, so an eval drawn after step N sits at N.
        """
        at = self.step_index - 1 if step is None else step
        values = {k: float(v) for k, v in metrics.items()}
        self.flush(wait=False)
        self.writer.put("eval", (at, values))

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None,
              step: int | None = None) -> None:
        at = self.step_index if step is None else step
        self.flush(wait=False)
        self.writer.put("event", (at, kind, message, data))

    def flush(self, wait: bool = True) -> None:
        """Hand buffered steps to the writer; with `wait`, return once they are on disk."""
        if self.buffer.n:
            self._keep_latest()  # a device-side copy: `latest()` works after the hand-over
        batch = self.buffer.take()
        if batch is not None:
            self.writer.put("steps", batch)
        if wait:
            self.writer.barrier()

    def latest(self) -> dict[str, Any]:
        """The most recent step's values, for a progress display.

        Reads one buffer row from the device: call it a few times a second, not every step.
        """
        buf = self.buffer
        if buf.n:
            self._keep_latest()
        if self._latest_row is None:
            return {}
        row, lr, step = self._latest_row
        return dict(row_values(row.tolist()), lr=lr, step=step)

    def _keep_latest(self) -> None:
        self._latest_row = self.buffer.last_row()

    def state_dict(self) -> dict[str, Any]:
        """Control state for checkpoints: thresholds in effect and the next step."""
        return {"clipper": self.clipper.state_dict(), "step": self.step_index,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clipper.load_state_dict(state.get("clipper", {}))

    # -- control ---------------------------------------------------------------------------

    def _max_value(self) -> float:
        return self.clipper.get("max_value") if self.clipper.mode == "value" else math.nan

    def _max_norm(self) -> float:
        """The fixed max_norm as set on the host; NaN for modes whose threshold is computed."""
        return self.clipper.get("max_norm") if self.clipper.mode == "norm" else math.nan

    def _apply_commands(self, commands: list[Command] | None = None) -> None:
        """Apply `commands` (default: everything in the writer's inbox) at this boundary."""
        queue = collections.deque(commands) if commands is not None else self.writer.inbox
        while queue:
            cmd = queue.popleft()
            was_paused = self.steering.paused
            outcome = self.steering.apply(cmd, self.step_index)
            if outcome.event is not None:
                origin = cmd.value if cmd.source == "signal" and cmd.value else cmd.source
                data = dict(outcome.event, source=cmd.source, command=cmd.id)
                self.event("control", f"{outcome.message} ({origin})", data)
            if self.steering.paused and not was_paused:
                self._enter_pause()  # acknowledged once flushed, checkpointed and marked paused
            elif self.steering.paused and outcome.event is not None:
                self._checkpoint("pause")  # a change made while paused is on disk at once
            elif was_paused and not self.steering.paused and not self.steering.stop_requested:
                self._set_state("running")
            if cmd.id > 0:
                self.writer.put("resolve",
                                (cmd.id, outcome.applied, self.step_index, outcome.message))

    def _exchange(self) -> None:
        """Distributed: apply rank 0's new commands (and its caught signal) on every rank."""
        assert self._sync is not None
        mine: list[Command] = []
        if self._sync.rank == 0:
            while self.writer.inbox:
                mine.append(self.writer.inbox.popleft())
        signal_name, self._signal_pending = self._signal_pending, None
        commands, stop = self._sync.exchange(mine, signal_name is not None)
        if stop:  # rank 0 caught SIGTERM / SIGINT (torchrun forwards them to every rank)
            commands.append(Command(0, "signal", "stop", None, signal_name or "signal"))
        if commands:
            self._apply_commands(commands)

    def _enter_pause(self) -> None:
        self.flush()
        self._checkpoint("pause")
        self._set_state("paused")
        self._pause_ready = True

    def _wait_while_paused(self) -> None:
        """Block at this step boundary, applying commands, until resumed or stopped.

        The writer thread keeps beating the heartbeat meanwhile, so the run reads "paused".
        """
        if not self._pause_ready:
            self._enter_pause()
        while self.steering.paused:
            time.sleep(PAUSE_POLL_S)
            if self._sync is not None:
                self._exchange()  # every rank polls in lockstep; they all leave together
            elif self.writer.inbox:
                self._apply_commands()
        self._pause_ready = False

    def _checkpoint(self, reason: str) -> None:
        if self.checkpoint_fn is not None:
            self.checkpoint_fn(reason)

    def _set_state(self, state: str, message: str | None = None) -> None:
        self.writer.put("call", lambda store, _tb: store and store.set_state(state, message))

    def request_stop(self) -> None:
        self.steering.stop_requested = True

    def handle_signals(self) -> None:
        """SIGINT and SIGTERM finish the current step and stop cleanly; a second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._sync is not None:
                # Every rank must stop at the same step: the stop waits for the next exchange.
                # (torchrun forwards the signal it gets, so a second one is not an abort here.)
                self._signal_pending = signal.Signals(signum).name
                return
            if signum == signal.SIGINT and self.steering.stop_requested:
                raise KeyboardInterrupt
            self.request_stop()
            self.steering.paused = False
            # Recorded as a control event at the step boundary (a deque append is signal-safe).
            self.writer.inbox.append(
                Command(0, "signal", "stop", None, signal.Signals(signum).name))

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._signal_handlers[sig] = signal.signal(sig, on_signal)

    # -- closing ---------------------------------------------------------------------------

    def close(self, state: str | None = None, message: str | None = None, *,
              checkpoint: bool = True) -> None:
        """Flush everything and mark the run finished (or stopped / failed).

        A stopped run checkpoints first (unless `checkpoint` is False: after an interrupt in
        the middle of a step, the state is not at a step boundary). Commands still queued are
        rejected, so a later resume does not obey them.
        """
        if self._closed:
            return
        self._closed = True
        late = [c for c in self.writer.inbox if c.source == "signal"]
        self.writer.inbox.clear()
        if late:  # a signal after the last step boundary: record it all the same
            self.writer.inbox.extend(late)
            self._apply_commands()
        final = state or ("stopped" if self.should_stop else "finished")
        if final == "stopped" and checkpoint:
            try:
                self._checkpoint("stop")
            except Exception as exc:  # noqa: BLE001 - the record must still be closed
                message = f"stop checkpoint failed: {type(exc).__name__}: {exc}"
                print(f"clipdash: {message}", file=sys.stderr)
        self.flush(wait=False)
        why = f"the run ended ({final}) before applying it"
        self.writer.put("call", lambda store, _tb: store and reject_pending(store.conn, why))
        self._set_state(final, message)
        self.writer.close()
        if self.writer.tensorboard:
            self.writer.tensorboard.close()
        if self.writer.store:
            self.writer.store.close()
        for sig, handler in self._signal_handlers.items():
            signal.signal(sig, handler)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("stopped", "interrupted", checkpoint=False)
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")

    def __repr__(self) -> str:
        return f"Tracker(run_dir={str(self.run_dir)!r}, step={self.step_index}, pid={os.getpid()})"
