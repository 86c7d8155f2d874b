"""Runs written straight into the store (no torch), a fake trainer that obeys commands, and a
fake reader with canned rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from textual.message_pump import MessagePump

from clipdash.store.writer import RunWriter
from clipdash.tui.feed import RUNS, Hub
from clipdash.tui.messages import RunRow, RunsUpdated

N_PARAMS = 4


def step_columns(start: int, n: int, *, n_params: int = N_PARAMS, max_norm: float = 1.0,
                 loss: float | None = None, spike_at: int | None = None,
                 t0: float | None = None) -> dict[str, np.ndarray]:
    """`n` plausible steps from `start`: decaying loss, noisy grad norm clipped at max_norm."""
    steps = np.arange(start, start + n)
    rng = np.random.default_rng(start)
    pre = 0.5 + rng.random(n)
    if spike_at is not None and start <= spike_at < start + n:
        pre[spike_at - start] = 1000.0
    coef = np.minimum(1.0, max_norm / pre)
    t0 = time.time() - 0.01 * (start + n) if t0 is None else t0
    return {
        "step": steps,
        "epoch": steps // 100,
        "wall_time": t0 + 0.01 * steps,
        "loss": np.full(n, loss) if loss is not None else 2.0 * np.exp(-steps / 500) + 0.1,
        "lr": np.full(n, 0.1),
        "lr_groups": np.full((n, 1), 0.1),
        "grad_norm_pre": pre,
        "grad_norm_post": pre * coef,
        "max_norm": np.full(n, max_norm),
        "clip_coef": coef,
        "clipped": coef < 1.0,
        "finite": np.ones(n, bool),
        "max_value": np.full(n, np.nan),
        "param_norms": (rng.random((n, n_params)) * np.arange(1, n_params + 1)).astype(
            np.float32),
    }


def make_run(run_dir: Path, steps: int = 200, *, state: str = "finished",
             total: int | None = 1000, n_params: int = N_PARAMS, spike_at: int | None = None,
             config: str | None = "[model]\nkind = \"mlp\"\n") -> RunWriter:
    """A run with `steps` steps, left in `state`; returns its (open) writer."""
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(run_dir)
    writer.set_params([(f"layers.{i}.weight", (8, 8)) for i in range(n_params)])
    writer.set_meta(name=run_dir.name, clip_mode="norm", optimizer="SGD")
    writer.start(total)
    if steps:
        writer.append_steps(step_columns(0, steps, n_params=n_params, spike_at=spike_at))
        writer.add_eval(steps - 1, {"loss": 0.5, "accuracy": 0.9})
        writer.add_event(steps // 2, "checkpoint", f"checkpoint at step {steps // 2}")
    if config is not None:
        (run_dir / "config.toml").write_text(config)
    if state != "running":
        writer.set_state(state)
    return writer


class FakeTrainer(threading.Thread):
    """Keeps a run's heartbeat beating and acknowledges its commands like the Tracker does
    (pause/resume change the state; set records the value); optionally appends steps."""

    def __init__(self, run_dir: Path, *, steps: int = 50, total: int = 1000,
                 step_every: float | None = None) -> None:
        super().__init__(daemon=True)
        self.writer = make_run(run_dir, steps, state="running", total=total)
        self.step = steps
        self.step_every = step_every
        self.max_norm = 1.0
        self.applied: list[tuple[Any, ...]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        last_step_t = time.monotonic()
        paused = False
        while not self._stop_event.wait(0.05):
            self.writer.heartbeat()
            for cid, _source, action, key, value in self.writer.pending_commands():
                msg = self._apply(action, key, value)
                self.applied.append((action, key, value))
                if action == "pause":
                    paused = True
                    self.writer.set_state("paused")
                elif action == "resume":
                    paused = False
                    self.writer.set_state("running")
                self.writer.resolve_command(cid, True, self.step, msg)
                if action == "stop":
                    self.writer.set_state("stopped")
                    return
            if (self.step_every and not paused
                    and time.monotonic() - last_step_t >= self.step_every):
                last_step_t = time.monotonic()
                self.writer.append_steps(step_columns(self.step, 1, max_norm=self.max_norm))
                self.step += 1

    def _apply(self, action: str, key: str | None, value: str | None) -> str:
        if action == "set" and key == "max_norm" and value is not None:
            old, self.max_norm = self.max_norm, float(value)
            return f"max_norm {old:g} -> {self.max_norm:g} from step {self.step}"
        return f"{action} at step {self.step}"

    def finish(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.writer.close()


def screen_text(app: Any) -> str:
    """The current screen as plain text (what a terminal would show, without colours)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text()


class FakeReader:
    """The data source interface with canned rows and a frozen clock: no store, no thread."""

    def __init__(self, rows: Sequence[RunRow]) -> None:
        self.hub = Hub()
        self.rows = {r.path: r for r in rows}
        self.started = self.stopped = self.joined = False
        self.visible: list[Sequence[str] | None] = []

    def start(self) -> None:
        self.started = True
        self.hub.publish(RUNS, lambda: RunsUpdated(dict(self.rows)))

    def stop(self) -> None:
        self.stopped = True

    def join(self, timeout: float | None = None) -> None:
        self.joined = True

    def is_alive(self) -> bool:
        return self.started and not self.stopped

    def wake(self) -> None:
        pass

    def watch_runs(self, target: MessagePump) -> None:
        self.hub.subscribe(target, RUNS)

    def watch_detail(self, target: MessagePump, path: str, cap: int) -> None:
        pass

    def watch_compare(self, target: MessagePump, paths: Sequence[str], columns: Sequence[str],
                      cap: int) -> None:
        pass

    def show_compare(self, paths: Sequence[str] | None, columns: Sequence[str] = (),
                     cap: int = 0) -> None:
        pass

    def unwatch(self, target: MessagePump) -> None:
        self.hub.unsubscribe(target)

    def set_visible(self, paths: Sequence[str] | None) -> None:
        self.visible.append(paths)

    def push(self, row: RunRow) -> None:
        self.rows[row.path] = row
        self.hub.publish(RUNS, lambda: RunsUpdated(dict(self.rows)))
