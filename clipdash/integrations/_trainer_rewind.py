"""Rewinding a `transformers.Trainer` in its own process (`Tracker(on_rewind=...)`).

Called from the callback's `on_step_end`, at a step boundary: the optimizer and scheduler steps
are done and the Trainer is about to log, save and evaluate. The rewind loads the newest
`output_dir/checkpoint-N` (N <= `before`) that this training saved, with the Trainer's own
loaders (the ones `train(resume_from_checkpoint=...)` uses: model weights in any of its formats,
optimizer, scheduler, RNG) and its `trainer_state.json` (global step, log history, best metric),
then continues the same `train()` call.

The data position is not rewound: the Trainer owns the dataloader and its iterator runs on, so
the replay of steps N.. trains on the batches that come after the spike (the batches between the
checkpoint and the spike are not seen again, which is also what keeps the replay from meeting
the same bad batch), and `skip` more data batches are drawn and dropped first. The Trainer plans
its epochs up front from `max_steps`; after a rewind it would run out of data before reaching
`max_steps`, so the last planned epoch is followed by as many more as the rewinds took back.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clipdash.integrations._run import newest_at_most

CHECKPOINT_DIR = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# The Trainer's own resume code, used as `train(resume_from_checkpoint=...)` uses it; the
# epoch runner is wrapped so a rewound run still reaches max_steps.
TRAINER_METHODS = ("_load_from_checkpoint", "_load_optimizer_and_scheduler", "_load_rng_state",
                   "_run_epoch", "get_batch_samples")
STATE_FILE = "trainer_state.json"


def unsupported(trainer: Any) -> str | None:
    """Why this Trainer cannot be rewound in-process, or None when it can."""
    missing = [m for m in TRAINER_METHODS if not callable(getattr(trainer, m, None))]
    if missing:
        return (f"transformers {transformers.__version__} has no Trainer.{missing[0]}, which "
                "the in-process rewind needs")
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "DeepSpeed loads its checkpoints only when training starts"
    return None


class TrainerRewind:
    """`on_rewind` for one `train()` call; `patches` are the Trainer methods it wraps."""

    def __init__(self, trainer: Any, start_step: int) -> None:
        self.trainer = trainer
        self.saved: dict[str, int] = {}  # checkpoint directory -> steps done
        self.to_skip = 0  # data batches still to drop
        self.rewound = False  # since the last on_step_end
        self.any_rewind = False  # during this train() call
        if start_step > 0:  # resumed: the checkpoint it resumed from is this run's too
            self.note_save(start_step)

    def note_save(self, global_step: int) -> None:
        """`on_save`: the Trainer wrote output_dir/checkpoint-{global_step}."""
        path = os.path.join(self.trainer.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{global_step}")
        if os.path.isdir(path):
            self.saved.pop(path, None)  # re-saved after a rewind: the newest goes last
            self.saved[path] = global_step

    def __call__(self, before: int, skip: int) -> int | None:
        # save_total_limit may have deleted some since.
        present = {p: n for p, n in self.saved.items() if os.path.isfile(
            os.path.join(p, STATE_FILE))}
        path = newest_at_most(present, before)
        if path is None:
            return None
        t = self.trainer
        t._load_from_checkpoint(path)
        t._load_optimizer_and_scheduler(path)
        t._load_rng_state(path)
        saved = transformers.TrainerState.load_from_json(os.path.join(path, STATE_FILE))
        state = t.state
        for key in ("global_step", "log_history", "total_flos", "num_input_tokens_seen",
                    "best_metric", "best_global_step", "best_model_checkpoint"):
            if hasattr(saved, key):
                setattr(state, key, getattr(saved, key))
        # The loss accumulated since the last log belongs to steps that are gone.
        t._tr_loss.zero_()
        t._globalstep_last_logged = state.global_step
        t._total_loss_scalar = logged_loss_total(state.log_history,
                                                 getattr(t, "_initial_global_step", 0))
        self.to_skip += skip
        self.rewound = self.any_rewind = True
        return int(state.global_step)

    def after_step_end(self, control: Any, stopping: bool) -> None:
        """The Trainer decided what to do after the step that was just taken back: log, save,
        evaluate or stop at that step. None of it applies any more."""
        if not self.rewound:
            return
        self.rewound = False
        control.should_log = control.should_save = control.should_evaluate = False
        control.should_training_stop = stopping

    def get_batch_samples(self, original: Any) -> Any:
        def drawing(epoch_iterator: Any, num_batches: int, *args: Any, **kwargs: Any) -> Any:
            if self.to_skip:
                dropped, _ = original(epoch_iterator, self.to_skip, *args, **kwargs)
                self.to_skip -= len(dropped)  # an epoch's end: the rest from the next one
            return original(epoch_iterator, num_batches, *args, **kwargs)
        return drawing

    def run_epoch(self, original: Any) -> Any:
        def epochs(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            t = self.trainer
            epoch, per_epoch = kwargs.get("epoch"), kwargs.get("num_update_steps_per_epoch")
            if not self.any_rewind or epoch is None or not per_epoch:
                return result
            planned = (math.ceil(t.state.max_steps / per_epoch) if t.args.max_steps > 0
                       else math.ceil(t.args.num_train_epochs))
            while epoch == planned - 1 and t.state.global_step < t.state.max_steps \
                    and not t.control.should_training_stop:
                epoch += 1
                planned += 1
                t.control = t.callback_handler.on_epoch_begin(t.args, t.state, t.control)
                result = original(*args, **{**kwargs, "epoch": epoch,
                                            "resume_from_checkpoint": None})
            return result
        return epochs


def logged_loss_total(history: list[dict[str, Any]], since: int) -> float:
    """The sum of the per-step losses the log history holds after step `since` (each logged
    loss is the mean over the steps since the previous log), as the Trainer accumulates it."""
    total, last = 0.0, since
    for entry in history:
        if "loss" in entry and entry.get("step", 0) > since:
            total += float(entry["loss"]) * (entry["step"] - last)
            last = entry["step"]
    return total
