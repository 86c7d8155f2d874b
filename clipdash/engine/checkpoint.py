"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint taken after step N holds the model, optimizer, scheduler, the RNG states, the
tracker's control state (thresholds changed from the dashboard survive a resume) and the data
position. Files are written to a temporary name and renamed, so a crash mid-write never leaves a
truncated "latest" checkpoint (a resume removes the `.pt.tmp` such a crash leaves).

Run directories are untrusted input (they are copied around, and sweeps resume by themselves):
checkpoints hold only tensors and plain data and are loaded with `torch.load(weights_only=True)`,
which never runs code from the file. A file that needs full unpickling is refused, not opened.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import torch

from clipdash.engine.errors import CheckpointError
from clipdash.store.layout import CHECKPOINT_DIR

__all__ = ["CheckpointError", "cleanup_partial", "latest", "load", "path_for", "save",
           "step_of"]

KEEP = 3  # most recent checkpoints kept on disk
_NAME = re.compile(r"^step-(\d+)\.pt$")


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
    tmp.unlink(missing_ok=True)  # never write through something planted under this name
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("step-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    if "shards" in state:  # fsdp2: the shard folders of rotated-out checkpoints go too
        from clipdash.engine import fsdp  # noqa: PLC0415 - torch.distributed, fsdp2 only

        fsdp.remove_stale(folder, sorted(folder.glob("step-*.pt")))
    return path


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in checkpoint_dir(run_dir).glob("step-*.pt"):
        m = _NAME.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest(run_dir: Path, at_most: int | None = None) -> Path | None:
    """The newest checkpoint, or the newest taken after at most `at_most` steps."""
    found = [path for step, path in _checkpoints(run_dir) if at_most is None or step <= at_most]
    return found[-1] if found else None


def step_of(path: Path) -> int:
    """The step count a checkpoint's name says it was taken after (`step-000000120.pt`: 120)."""
    m = _NAME.match(path.name)
    if m is None:
        raise CheckpointError(f"{path}: not a checkpoint name (step-N.pt)")
    return int(m.group(1))


def cleanup_partial(run_dir: Path) -> list[Path]:
    """Remove the `step-N.pt.tmp` a crash during a checkpoint write left; returns them."""
    removed = []
    for tmp in checkpoint_dir(run_dir).glob("step-*.pt.tmp"):
        if tmp.is_file() or tmp.is_symlink():  # a link goes, not what it points to
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load(path: Path) -> dict[str, Any]:
    """The checkpoint's state, loaded without running any code from the file.

    CheckpointError (one line) for a file that is not a plain-data checkpoint: an older or
    foreign checkpoint that needs unpickling, a damaged file, or something planted.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign, planted: all "cannot resume"
        detail = " ".join(str(exc).split())
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in detail.lower():
            m = re.search(r"GLOBAL ([\w.]+)", detail)
            what = f" {m.group(1)}" if m else " an object"
            raise CheckpointError(
                f"{path}: cannot resume from it: refused to unpickle{what} (clipdash loads "
                "checkpoints of tensors and plain data only; full unpickling can run code)"
            ) from None
        raise CheckpointError(f"{path}: cannot resume from it: unreadable checkpoint "
                              f"({type(exc).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a clipdash checkpoint (holds "
                              f"{type(state).__name__})")
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
