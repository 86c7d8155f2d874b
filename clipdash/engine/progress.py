"""The progress display of `clipdash run`: a rich bar on a terminal, plain lines otherwise.

Values shown come from `Tracker.latest()`, read a few times a second at most, so the display
adds no per-step host synchronisation.

    progress = RunProgress("exp", total=1000)
    progress.update(step, tracker.latest())           # when progress.due()
    progress.set_state("paused", "paused at step 120") # steering: shown on the line at once
    progress.set_state("running", "max_norm 1 -> 0.5 from step 120")

steps/s is measured over the last RATE_WINDOW_S seconds of progress, not since the start, and
time spent paused (or stalled at one step) never counts, so the ETA does not grow after a pause.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

TTY_REFRESH_S = 0.25
PLAIN_REFRESH_S = 5.0
RATE_WINDOW_S = 10.0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def describe(latest: dict[str, Any], rate: float) -> str:
    return (f"loss {_fmt(latest.get('loss'))}  grad_norm {_fmt(latest.get('grad_norm_pre'))}"
            f"  lr {_fmt(latest.get('lr'))}  {rate:.1f} steps/s")


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_note(threads: int, cores: int) -> str | None:
    """A one-time hint when torch runs more threads than there are cores: they then wait on
    each other, and a small model trains 10-30x slower on a busy machine."""
    if threads <= cores:
        return None
    return (f"note: torch uses {threads} threads on {cores} usable cores; "
            "set OMP_NUM_THREADS=1 when several trainers share this machine")


class RateWindow:
    """Steps per second over the recent past; stalls (no new step) are cut out."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()
        self.rate = 0.0

    def restart(self, now: float, step: int) -> None:
        """Forget the past: after a pause, only what follows it counts."""
        self.samples.clear()
        self.samples.append((now, step))

    def add(self, now: float, step: int) -> float:
        if self.samples and step <= self.samples[-1][1]:
            self.restart(now, step)  # no progress since the last look: paused or stalled
            return self.rate
        self.samples.append((now, step))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        if len(self.samples) >= 2 and t1 > t0:
            self.rate = (s1 - s0) / (t1 - t0)
        return self.rate


class RunProgress:
    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True,
                 threads: int | None = None) -> None:
        self.total = total
        self.name = name
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.rates = RateWindow()
        self.rates.restart(time.monotonic(), start)
        self.step = start
        self.latest: dict[str, Any] = {}
        self.state: str | None = None
        self.command: str | None = None
        self.note = thread_note(threads if threads is not None else _torch_threads(),
                                usable_cores())
        self.last = 0.0
        self.bar: Progress | None = None
        if enabled and self.tty:
            self._start_bar(start)

    def _start_bar(self, start: int) -> None:
        # rich only for a terminal: importing it costs ~40 ms of every other run's start-up.
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("ETA {task.fields[eta]}"),
            console=Console(), transient=False)
        self.task = self.bar.add_task(self.name, total=self.total, completed=start, info="",
                                      eta="?")
        self.bar.start()

    def due(self) -> bool:
        """Cheap check the loop makes every step; True a few times a second at most."""
        if not self.enabled:
            return False
        interval = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        return time.monotonic() - self.last >= interval

    def set_state(self, state: str | None, command: str | None = None) -> None:
        """Show the run's state ("paused", "running", "stopping", ...) and the last command
        (its acknowledgement text) on the progress line, redrawn at once."""
        now = time.monotonic()
        if state != self.state:
            self.rates.restart(now, self.step)  # a pause's length is not a slow step
        self.state = state
        if command is not None:
            self.command = command
        if self.enabled:
            self.render(now)

    def update(self, step: int, latest: dict[str, Any]) -> None:
        now = time.monotonic()
        self.rates.add(now, step)
        self.step, self.latest = step, latest
        self.render(now)

    def line(self) -> str:
        """The text after the bar: state, values, rate, and the last command."""
        state = f"[{self.state}] " if self.state and self.state != "running" else ""
        command = f"  | {self.command}" if self.command else ""
        return f"{state}{describe(self.latest, self.rates.rate)}{command}"

    def eta(self) -> str:
        """From the windowed rate (rich's own ETA would count a pause as slow steps)."""
        rate = self.rates.rate
        return f"{(self.total - self.step) / rate:.0f}s" if rate > 0 else "?"

    def render(self, now: float) -> None:
        self.last = now
        info, eta = self.line(), self.eta()
        if self.bar is not None:
            from rich.markup import escape

            if self.note:
                self.bar.console.print(self.note, markup=False, highlight=False)
            self.bar.update(self.task, completed=self.step, info=escape(info), eta=eta)
        else:
            try:
                if self.note:
                    print(f"{self.name}: {self.note}", flush=True)
                print(f"{self.name}: step {self.step}/{self.total}  {info}  ETA {eta}",
                      flush=True)
            except (BrokenPipeError, OSError):  # `clipdash run ... | head`: keep training
                self.enabled = False
        self.note = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
