"""clipdash for Lightning: one callback.

    from clipdash.integrations.lightning import ClipdashCallback
    trainer = L.Trainer(gradient_clip_val=1.0, ..., callbacks=[ClipdashCallback(name="mlp")])

What it does, hook by hook (Lightning's own order):

- `on_train_start`: Lightning's clipping (`Trainer(gradient_clip_val=..., gradient_clip_algorithm=
  ...)`) is handed to clipdash (one log line says so): with `max_norm=None` clipdash clips at that
  threshold, by norm, or by value for `gradient_clip_algorithm="value"`, and the Trainer's
  `gradient_clip_val` is set to None for the run (restored afterwards), so gradients are clipped
  once and the record's pre-clip norm is the true one. A LightningModule that overrides
  `configure_gradient_clipping` still runs its own clipping after clipdash's: a warning says so.
- `on_before_optimizer_step` (callbacks run before the LightningModule's hook and before
  Lightning clips): `Tracker.clip()`. A non-finite step (nonfinite="skip") is skipped for real:
  the optimizer's `step` runs Lightning's closure (forward, backward, hooks) itself and calls
  the real update only when clip() allowed it, so parameters and optimizer state stay untouched.
- `on_train_batch_end` of the batch that stepped: one record per optimizer step, at step
  `trainer.global_step - 1` (clipdash steps are 0-based), with the mean of the step's
  `training_step` losses as training_step returned them (Lightning's `outputs` are divided by
  `accumulate_grad_batches`; this undoes it) and the LR of every param group as the scheduler
  set it for that step. Commands from `clipdash ctl` / `clipdash watch` are applied here: a pause
  blocks here, a stop sets `trainer.should_stop`, so Lightning ends its own way.
- `on_validation_end`: every `trainer.callback_metrics` entry named `val*` (val_loss, val/acc,
  ...), recorded without that prefix (`loss`, `acc`) at the last step it saw: a validation after
  N optimizer steps (Lightning's step N) is recorded at clipdash step N - 1. The sanity check
  before training is not recorded.
- `on_exception`: the run is failed with the exception's reason (steps before it are all kept);
  a process that exits without `on_train_end` does the same (atexit). Lightning's own signal
  handling stays: Ctrl-C ends the run "stopped" ("interrupted"), and so does SIGTERM, which
  Lightning turns into a stop between batches ("SIGTERM").

Rewind (an alert with action "rewind", `clipdash ctl RUN rewind`): at `on_train_batch_end`,
back to the newest ModelCheckpoint `.ckpt` this fit saved, in this process; the data stream runs
on (`_lightning_rewind.py` says what is restored and which batches the replay sees).

Automatic optimization with one optimizer (Lightning's own limit) and manual optimization with
one `opt.step()` per batch are supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipdash.integrations._wrappers import missing

try:
    import lightning
    import lightning.pytorch as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException
except ImportError as exc:
    raise missing("lightning", "lightning", exc) from exc

from clipdash.integrations._lightning_rewind import LightningRewind
from clipdash.integrations._run import FrameworkClip, TrackedRun

VAL_PREFIXES = ("val_", "val/", "val.", "valid_", "valid/", "validation_", "validation/")


def framework_clip(trainer: Any) -> FrameworkClip:
    value = trainer.gradient_clip_val
    if not value or value <= 0:
        return FrameworkClip("none", 0.0, "")
    algorithm = trainer.gradient_clip_algorithm
    algorithm = str(getattr(algorithm, "value", algorithm or "norm"))
    setting = f"Trainer(gradient_clip_val={value}, gradient_clip_algorithm={algorithm!r})"
    return FrameworkClip("value" if algorithm == "value" else "norm", float(value), setting)


def val_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        for prefix in VAL_PREFIXES:
            if key.startswith(prefix):
                out[key[len(prefix):]] = float(value)
                break
    return out


def overrides_clipping(module: Any) -> bool:
    own = type(module).configure_gradient_clipping
    return own is not L.LightningModule.configure_gradient_clipping


class ClipdashCallback(L.Callback):
    """Record, clip and steer a Lightning run with clipdash.

    Args:
        name: the run's name inside `runs_dir` (default: run-<timestamp>).
        runs_dir: where runs are kept (`clipdash watch` reads it).
        run_dir: the run directory itself, instead of `runs_dir/name`.
        max_norm: clip to this norm. None: the Trainer's own `gradient_clip_val` /
            `gradient_clip_algorithm` (None: no clipping), which is then turned off for the run
            so that clipdash clips once.
        tracker_options: any other `clipdash.Tracker` keyword (clip, nonfinite, tensorboard,
            record_params, ...).
    """

    def __init__(self, name: str | None = None, runs_dir: str | Path = "runs",
                 run_dir: str | Path | None = None, max_norm: float | None = None,
                 **tracker_options: Any) -> None:
        self.run = TrackedRun(name, runs_dir, run_dir, max_norm, tracker_options)
        self._clip_val: Any = None
        self._patched_trainer: Any = None

    @property
    def tracker(self) -> Any:
        """The live `clipdash.Tracker` (None outside training)."""
        return self.run.tracker

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"ClipdashCallback tracks one optimizer; this LightningModule "
                             f"configures {len(trainer.optimizers)}")
        framework = framework_clip(trainer)
        if framework.mode != "none":
            if overrides_clipping(pl_module) and trainer.is_global_zero:
                L.utilities.rank_zero_warn(
                    f"{type(pl_module).__name__} overrides configure_gradient_clipping: its own "
                    "clipping runs after clipdash's, and the record cannot see it")
            self._clip_val, self._patched_trainer = trainer.gradient_clip_val, trainer
            trainer.gradient_clip_val = None
        configs = trainer.lr_scheduler_configs
        estimated = trainer.estimated_stepping_batches
        optimizer = trainer.optimizers[0]
        self.run.start(
            pl_module, optimizer, configs[0].scheduler if configs else None, optimizer,
            framework, start_step=trainer.global_step,
            total_steps=int(estimated) if estimated != float("inf") else None,
            meta={"framework": f"lightning {lightning.__version__}"},
            leader=trainer.is_global_zero, on_rewind=LightningRewind(trainer))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.run.active:
            self.run.clip()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.run.active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and pl_module.automatic_optimization:
            loss = loss * trainer.accumulate_grad_batches  # Lightning's outputs are divided
        self.run.add_loss(loss)
        if self.run.clipped_this_step and self.run.end_step(trainer.current_epoch, mean=True):
            trainer.should_stop = True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.run.log_eval(val_metrics(trainer.callback_metrics), trainer.global_step - 1)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()
        self.run.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):  # Lightning's own stop, between batches
            self.run.stop("SIGTERM")
        else:
            self.run.fail(exception)

    def _restore(self) -> None:
        if self._patched_trainer is not None:
            self._patched_trainer.gradient_clip_val = self._clip_val
            self._patched_trainer = None
