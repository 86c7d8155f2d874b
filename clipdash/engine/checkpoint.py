"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint taken after step N holds the model, optimizer, scheduler, the RNG states, the
tracker's control state (thresholds changed from the dashboard survive a resume) and the data
position. Files are written to a temporary name and renamed, so a crash mid-write never leaves a
truncated "latest" checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from clipdash.store.layout import CHECKPOINT_DIR

KEEP = 3  # most recent checkpoints kept on disk


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from (unreadable, or saved by a different setup)."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def path_for(run_dir: Path, step: int) -> Path:
    """Where the checkpoint taken after `step` steps goes (names sort in step order)."""
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def save(run_dir: Path, state: dict[str, Any], step: int) -> Path:
    path = path_for(run_dir, step)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    state = dict(state, rng=rng_state())
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("step-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path, at_most: int | None = None) -> Path | None:
    """The newest checkpoint, or the newest taken after at most `at_most` steps."""
    found = sorted(checkpoint_dir(run_dir).glob("step-*.pt"))
    if at_most is not None:
        found = [p for p in found if (step := step_of(p)) is not None and step <= at_most]
    return found[-1] if found else None


def step_of(path: Path) -> int | None:
    """N of step-N.pt (None for a name that is not a checkpoint's)."""
    digits = path.stem.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


def load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    restore_rng(state.get("rng", {}))
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
