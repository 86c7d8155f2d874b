"""The typed items the training thread hands the recorder's writer thread, in order."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from clipdash.track.buffer import StepBatch


@dataclass(frozen=True)
class Steps:
    batch: StepBatch


@dataclass(frozen=True)
class Eval:
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Event:
    step: int | None
    kind: str
    message: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class State:
    state: str
    message: str | None = None


@dataclass(frozen=True)
class Resolve:
    command_id: int
    applied: bool
    step: int
    message: str


@dataclass(frozen=True)
class ParamsAdded:
    names: list[str]  # every column's name, new ones last
    shapes: list[tuple[int, ...]]  # of the new columns
    first_step: int
    n_groups: int


@dataclass(frozen=True)
class RejectPending:
    message: str


@dataclass(frozen=True)
class Rewind:
    """The run went back to the state after `step` steps: the record is replaced from there."""

    step: int


@dataclass(frozen=True)
class Barrier:
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Close:
    pass


Item = (Steps | Eval | Event | State | Resolve | ParamsAdded | RejectPending | Rewind | Barrier
        | Close)
