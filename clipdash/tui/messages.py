"""What the background reader tells the UI: immutable snapshots wrapped in Textual messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from clipdash.tui.buckets import Band

Num = float | None


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
    new_events: tuple[dict[str, Any], ...] = ()
    markers: tuple[tuple[int, str], ...] = ()  # (step, kind) of every event with a step
    params: ParamPanel | None = None  # None: unchanged since the last snapshot
    config: str | None = None  # sent once: config.toml and the run's meta
    first: bool = False


class RunsUpdated(Message):
    """Rows that changed since the last message, and runs whose directory disappeared."""

    def __init__(self, rows: tuple[RunRow, ...], removed: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.rows = rows
        self.removed = removed


class DetailUpdated(Message):
    def __init__(self, snapshot: DetailSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class CompareUpdated(Message):
    def __init__(self, bands: dict[str, dict[str, Band]]) -> None:
        super().__init__()
        self.bands = bands  # run path -> column -> band


class ControlDone(Message):
    """The outcome of a command sent from the dashboard (acknowledged, rejected, or failed)."""

    def __init__(self, path: str, what: str, ok: bool, text: str) -> None:
        super().__init__()
        self.path = path
        self.what = what
        self.ok = ok
        self.text = text


class ReaderProblem(Message):
    """A run could not be read (damaged file, permission); shown once per run."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
