"""clipdash for `transformers.Trainer`: one callback.

    from clipdash.integrations.transformers import ClipdashCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[ClipdashCallback(name="gpt-tiny")])

What it does, hook by hook (the Trainer's own order):

- train begins: the Trainer's clipping (`TrainingArguments.max_grad_norm`) is handed to clipdash
  (one log line says so): with `max_norm=None` clipdash clips at that threshold and the Trainer's
  is set to 0 for the run (restored afterwards), so gradients are clipped once and the record's
  pre-clip norm is the true one. The Trainer still logs `grad_norm`, which is then that same norm.
- `on_pre_optimizer_step`: gradients are accumulated and unscaled: `Tracker.clip()`. A
  non-finite step (nonfinite="skip") is skipped for real: the optimizer's `step` lets it through
  only when clip() allowed it, so parameters and optimizer state stay untouched.
- `on_step_end`: one record per optimizer step, at step `state.global_step - 1` (clipdash steps
  are 0-based), with the loss the Trainer logs for that step at `logging_steps=1` (the sum of
  `training_step`'s returns over the accumulated micro-batches; rank 0's under DDP, where the
  Trainer logs the mean over ranks; a non-finite loss is recorded as it is, where the Trainer's
  `logging_nan_inf_filter` would substitute an average), and the LR of every param group as
  the scheduler set it for that step. Commands from `clipdash ctl` / `clipdash watch` are
  applied here: a pause blocks here, a stop sets `control.should_training_stop` (and
  `should_save`, unless `save_strategy="no"`), so the Trainer ends its own way.
- `on_evaluate`: the Trainer's `eval_*` metrics (minus speed figures), named without the
  `eval_` prefix, at the last step they saw: an evaluation the Trainer logs at its step N
  (after N optimizer steps) is recorded at clipdash step N - 1.
- an exception out of `trainer.train()` marks the run failed with its reason (steps before it
  are all kept); a process that exits without `on_train_end` does the same (atexit).
- rewind (an alert with action "rewind", `clipdash ctl RUN rewind`): at `on_step_end`, back to
  the newest `output_dir/checkpoint-N` saved during this training, in this process; the data
  stream runs on (`_trainer_rewind.py` says what is restored and which batches the replay sees).
  `on_save` notes each checkpoint.
- SIGINT (Ctrl-C) and SIGTERM finish the current step and stop training as a `stop` command
  does; a second Ctrl-C aborts (`Tracker.handle_signals`, for the duration of `train()`).
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

from clipdash.integrations._wrappers import missing

try:
    import transformers
except ImportError as exc:
    raise missing("transformers", "transformers", exc) from exc

from clipdash.integrations._run import FrameworkClip, TrackedRun
from clipdash.integrations._trainer_rewind import TrainerRewind, unsupported

log = logging.getLogger("clipdash")

# Speed figures the Trainer adds to every evaluation: not metrics of the model.
SPEED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "jit_compilation_time",
                 "model_preparation_time")


def find_trainer() -> Any:
    """The Trainer whose method (train, __init__) is calling this callback.

    Callbacks are not handed the Trainer, but the loss it logs and its `train()` are only
    reachable through it; every callback call comes from one of its methods.
    """
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate
        frame = frame.f_back
    raise RuntimeError("ClipdashCallback must be used by a transformers.Trainer "
                       "(pass it as Trainer(callbacks=[...]) or trainer.add_callback)")


def epoch_of(state: Any) -> int:
    """The 0-based epoch a step belongs to (`state.epoch` counts fractions of epochs done)."""
    return max(0, math.ceil(state.epoch or 0.0) - 1)


def eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if key.startswith("eval_") and not name.endswith(SPEED_METRICS) \
                and isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class ClipdashCallback(transformers.TrainerCallback):
    """Record, clip and steer a `transformers.Trainer` run with clipdash.

    Args:
        name: the run's name inside `runs_dir` (default: run-<timestamp>).
        runs_dir: where runs are kept (`clipdash watch` reads it).
        run_dir: the run directory itself, instead of `runs_dir/name`.
        max_norm: clip to this norm. None: the Trainer's own `max_grad_norm` (0: no clipping),
            which is then turned off for the run so that clipdash clips once.
        tracker_options: any other `clipdash.Tracker` keyword (clip, nonfinite, tensorboard,
            record_params, ...).
    """

    def __init__(self, name: str | None = None, runs_dir: str | Path = "runs",
                 run_dir: str | Path | None = None, max_norm: float | None = None,
                 **tracker_options: Any) -> None:
        self.run = TrackedRun(name, runs_dir, run_dir, max_norm, tracker_options)
        self._restore: list[tuple[Any, str, Any]] = []
        self.rewind: TrainerRewind | None = None

    @property
    def tracker(self) -> Any:
        """The live `clipdash.Tracker` (None outside training)."""
        return self.run.tracker

    # -- set-up -----------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard_train(find_trainer())

    def _guard_train(self, trainer: Any) -> None:
        """An exception out of `train()` fails the run (the Trainer has no hook for it)."""
        if "train" in vars(trainer):
            return
        train = trainer.train

        def guarded_train(*args: Any, **kwargs: Any) -> Any:
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                self._teardown()
                self.run.fail(exc)
                raise

        trainer.train = guarded_train

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = find_trainer()
        self._guard_train(trainer)  # added with add_callback after __init__: atexit still covers
        framework = FrameworkClip("none", 0.0, "")
        if args.max_grad_norm and args.max_grad_norm > 0:
            framework = FrameworkClip("norm", float(args.max_grad_norm),
                                      f"TrainingArguments(max_grad_norm={args.max_grad_norm})")
            self._patch(args, "max_grad_norm", 0.0)
        self._patch(trainer, "training_step", self._counting(trainer.training_step))
        # Under fp16 Accelerate's GradScaler already skips a non-finite step (found when the
        # Trainer unscales), and it must see every step to lower its scale: no gate then.
        scaled = getattr(trainer.optimizer, "scaler", None) is not None
        why = unsupported(trainer)
        if why is not None and state.is_world_process_zero:
            log.info("clipdash: no rewind in this run: %s", why)
        self.rewind = None if why else TrainerRewind(trainer, state.global_step)
        if self.rewind is not None:
            self._patch(trainer, "_run_epoch", self.rewind.run_epoch(trainer._run_epoch))
            self._patch(trainer, "get_batch_samples",
                        self.rewind.get_batch_samples(trainer.get_batch_samples))
        tracker = self.run.start(
            trainer.model, trainer.optimizer, trainer.lr_scheduler,
            None if scaled else trainer.optimizer, framework,
            start_step=state.global_step, total_steps=state.max_steps or None,
            meta={"framework": f"transformers {transformers.__version__}"},
            leader=state.is_world_process_zero, on_rewind=self.rewind)
        # The Trainer has no signal handling of its own: Ctrl-C or SIGTERM finishes the step and
        # stops the Trainer its own way (a second Ctrl-C aborts); the handlers go at the end.
        tracker.handle_signals()

    def _counting(self, training_step: Any) -> Any:
        def counted_training_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            self.run.add_loss(loss)
            return loss
        return counted_training_step

    def _patch(self, obj: Any, attr: str, value: Any) -> None:
        own = attr in vars(obj)
        self._restore.append((obj, attr, vars(obj)[attr] if own else _ABSENT))
        setattr(obj, attr, value)

    def _teardown(self) -> None:
        while self._restore:
            obj, attr, old = self._restore.pop()
            if old is _ABSENT:
                vars(obj).pop(attr, None)
            else:
                setattr(obj, attr, old)

    # -- every step -------------------------------------------------------------------------

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run.active:
            self.run.clip()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self.run.active:
            return control
        stopping = self.run.end_step(epoch_of(state), mean=False)
        if self.rewind is not None:
            self.rewind.after_step_end(control, stopping)
        if stopping:
            control.should_training_stop = True
            if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
                control.should_save = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.rewind is not None:
            self.rewind.note_save(state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                    **kwargs: Any) -> None:
        self.run.log_eval(eval_metrics(metrics or {}), state.global_step - 1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._teardown()
        self.run.finish()


_ABSENT = object()
