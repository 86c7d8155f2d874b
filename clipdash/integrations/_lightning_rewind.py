"""Rewinding a Lightning `fit()` in its own process (`Tracker(on_rewind=...)`).

Called from the callback's `on_train_batch_end` of an optimizer step, a step boundary: the
optimizer and the step-interval schedulers have stepped, and the checkpoint callbacks (Lightning
runs them after every other callback) have not saved this step yet. The rewind loads the newest
`.ckpt` this fit wrote (in the folders of its `ModelCheckpoint` callbacks, or the one it resumed
from) whose `global_step` N is <= `before`, through the strategy (`load_checkpoint`,
`load_model_state_dict`, `load_optimizer_state_dict`, as Lightning's own resume does), then the
lr schedulers' states, the precision plugin's (a GradScaler), and the loop counters that make
the global step: the optimizer-step progress and the logging step (`_batches_that_stepped`).

The data position is not rewound: Lightning's fit loop owns the dataloader and the epoch runs on,
so the replay of steps N.. trains on the batches that come after the spike, and `skip` more are
drawn and dropped first (up to the end of the epoch). `max_steps` still ends the fit: a rewound
fit trains the steps it took back again, on more data (set `max_epochs=-1`, Lightning's default
with `max_steps`, or enough epochs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from clipdash.integrations._run import newest_at_most

FIT_LOOP_KEYS = {  # (checkpoint's loops.fit_loop key, the progress object it restores)
    "epoch_loop.automatic_optimization.optim_progress":
        lambda loop: loop.automatic_optimization.optim_progress,
    "epoch_loop.manual_optimization.optim_step_progress":
        lambda loop: loop.manual_optimization.optim_step_progress,
    "epoch_loop.scheduler_progress": lambda loop: loop.scheduler_progress,
}


class LightningRewind:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.started = time.time() - 1.0  # mtime resolution
        self.resumed_from = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        self._steps: dict[tuple[Path, float], int] = {}  # (file, mtime) -> its global_step

    def checkpoints(self) -> dict[Path, int]:
        """This fit's checkpoint files and the steps done when each was saved, oldest first."""
        found: list[tuple[float, Path]] = []
        for callback in self.trainer.checkpoint_callbacks:
            folder = getattr(callback, "dirpath", None)
            if folder and os.path.isdir(folder):
                for path in Path(folder).glob("*.ckpt"):
                    mtime = path.stat().st_mtime
                    if mtime >= self.started or path == self.resumed_from:
                        found.append((mtime, path))
        out: dict[Path, int] = {}
        for mtime, path in sorted(found):
            key = (path, mtime)
            if key not in self._steps:
                self._steps[key] = self._global_step(path)
            out[path] = self._steps[key]
        return out

    def _global_step(self, path: Path) -> int:
        try:  # mmap: no tensor is read, only the step
            saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # noqa: BLE001 - e.g. hyperparameters weights_only refuses
            saved = self.trainer.strategy.load_checkpoint(path)  # as Lightning's resume does
        return int(saved["global_step"])

    def __call__(self, before: int, skip: int) -> int | None:
        path = newest_at_most(self.checkpoints(), before)
        if path is None:
            return None
        t = self.trainer
        ckpt = t.strategy.load_checkpoint(path)
        t.strategy.load_model_state_dict(ckpt, strict=t.lightning_module.strict_loading)
        if "optimizer_states" not in ckpt:
            raise ValueError(f"{path} holds the weights only (ModelCheckpoint("
                             "save_weights_only=True)): the optimizer cannot be rewound")
        t.strategy.load_optimizer_state_dict(ckpt)
        for config, state in zip(t.lr_scheduler_configs, ckpt.get("lr_schedulers", []),
                                 strict=False):
            config.scheduler.load_state_dict(state)
        precision = t.precision_plugin
        if type(precision).__qualname__ in ckpt:
            precision.load_state_dict(ckpt[type(precision).__qualname__])
        loops = ckpt["loops"]["fit_loop"]
        epoch_loop = t.fit_loop.epoch_loop
        for key, progress in FIT_LOOP_KEYS.items():
            if key in loops:
                progress(epoch_loop).load_state_dict(loops[key])
        # Saved before this same hook's step counted it, as now (the loop adds 1 after it).
        epoch_loop.on_load_checkpoint(loops.get("epoch_loop.state_dict", {}))
        self._skip(skip)
        return int(t.global_step)

    def _skip(self, n: int) -> None:
        if not n:
            return
        fetcher = getattr(self.trainer.fit_loop, "_data_fetcher", None)
        if fetcher is None:
            raise ValueError("this Lightning version keeps no data fetcher to skip batches in")
        for _ in range(n):
            try:
                next(fetcher)
            except StopIteration:  # the epoch's end: the next epoch starts afresh
                break
