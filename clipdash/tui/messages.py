"""What flows through the dashboard: immutable snapshots from the reader, wrapped in Messages.

Data messages carry whole state (every row, the whole visible series), so a newer one can
replace an older one still queued (`can_replace`): a busy UI skips stale frames instead of
falling behind. They do not bubble: each goes to the widget that subscribed to it.
Intent messages (open a run, steer it) bubble from a screen up to the App.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.message import Message

from clipdash.tui.buckets import Band, Num


@dataclass(frozen=True)
class RunRow:
    """One line of the run list."""

    path: str
    name: str  # relative to the runs directory (sweep/run for sweep members)
    status: str
    step: int | None = None
    total: int | None = None
    rate: Num = None  # steps per second over the last RATE_WINDOW steps
    loss: Num = None
    grad_norm: Num = None  # pre-clip
    clip_rate: Num = None  # fraction of the last CLIP_WINDOW steps that clipped
    max_norm: Num = None
    lr: Num = None
    loss_spark: tuple[Num, ...] = ()  # bucket means over the whole run
    norm_spark: tuple[Num, ...] = ()  # bucket maxima over the whole run
    message: str | None = None
    started: Num = None  # unix time the run started (newest first among live runs)
    read_only: bool = False
    alerts: int = 0  # spike alerts recorded


@dataclass(frozen=True)
class ParamInfo:
    name: str
    latest: Num
    peak: Num
    spark: tuple[Num, ...]


@dataclass(frozen=True)
class ParamPanel:
    """Top parameters by latest pre-clip norm over the last `window` steps."""

    total: int
    window: tuple[int, int]
    top: tuple[ParamInfo, ...]


@dataclass(frozen=True)
class DetailSnapshot:
    path: str
    bands: dict[str, Band]
    evals: dict[str, Band]
    events: tuple[dict[str, Any], ...] = ()  # the most recent events, oldest first
    markers: tuple[tuple[int, str], ...] = ()  # (step, kind) of every event with a step
    params: ParamPanel | None = None  # None: not read yet
    config: str = ""  # the starting config and the values in effect now


class _Data(Message, bubble=False):
    """A snapshot for a subscriber; a newer one of the same kind and key replaces it."""

    key: object = None

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self) and getattr(message, "key", None) == self.key


class RunsUpdated(_Data):
    """Every run of the list (path -> row), and the paths that changed since the last one."""

    def __init__(self, rows: Mapping[str, RunRow]) -> None:
        super().__init__()
        self.rows = rows


class DetailUpdated(_Data):
    def __init__(self, snapshot: DetailSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.key = snapshot.path


class CompareUpdated(_Data):
    def __init__(self, bands: dict[str, dict[str, Band]]) -> None:
        super().__init__()
        self.bands = bands  # run path -> column -> band


class ControlStatus(_Data):
    """The last command sent from the dashboard and what became of it (for status lines)."""

    def __init__(self, text: Text) -> None:
        super().__init__()
        self.text = text


class ReaderProblem(Message):
    """A run could not be read (damaged file, permission); shown once per run."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ControlDone(Message):
    """The outcome of a command sent from the dashboard (acknowledged, rejected, or failed)."""

    def __init__(self, path: str, what: str, ok: bool, text: str) -> None:
        super().__init__()
        self.path = path
        self.what = what
        self.ok = ok
        self.text = text


# -- intents: a screen asks the App ------------------------------------------------------


class OpenRun(Message):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class OpenCompare(Message):
    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths


class Back(Message):
    """Leave the run (or compare) view for the run list."""


class Steer(Message):
    """Pause/resume (`pause`), ask for a new value (`set`, with `key`), stop or rewind (both
    ask first)."""

    def __init__(self, path: str, action: str, key: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.action = action
        self.key = key
