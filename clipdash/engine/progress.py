"""The progress display of `clipdash run`: a rich bar on a terminal, plain lines otherwise.

Values shown come from `Tracker.latest()`, read a few times a second at most, so the display
adds no per-step host synchronisation.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich costs ~0.1 s of start-up: imported only when a bar is shown
    from rich.progress import Progress

TTY_REFRESH_S = 0.25
PLAIN_REFRESH_S = 5.0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def describe(latest: dict[str, Any], rate: float) -> str:
    return (f"loss {_fmt(latest.get('loss'))}  grad_norm {_fmt(latest.get('grad_norm_pre'))}"
            f"  lr {_fmt(latest.get('lr'))}  {rate:.1f} steps/s")


class RunProgress:
    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.name = name
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self.start_step = start
        self.last = 0.0
        self.bar: Progress | None = None
        if enabled and self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(), transient=False)
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()

    def due(self) -> bool:
        """Cheap check the loop makes every step; True a few times a second at most."""
        if not self.enabled:
            return False
        interval = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        return time.monotonic() - self.last >= interval

    def update(self, step: int, latest: dict[str, Any]) -> None:
        self.last = time.monotonic()
        done = step - self.start_step
        rate = done / max(1e-9, self.last - self.started)
        info = describe(latest, rate)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        else:
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            try:
                print(f"{self.name}: step {step}/{self.total}  {info}  ETA {eta:.0f}s",
                      flush=True)
            except (BrokenPipeError, OSError):  # `clipdash run ... | head`: keep training
                self.enabled = False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
