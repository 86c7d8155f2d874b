"""Spike alerts: a loss or gradient norm far above its recent history, or a non-finite streak.

    Tracker(model, opt, alerts=AlertOptions(loss_spike=6.0, action="pause"))

Where the check runs: on the recorder's writer thread, over the numpy columns of every batch of
steps it writes (`SpikeWatch.check`), so the training thread reads nothing back from the device
and pays nothing for it. With action "event" an alert lands whenever its batch is written (at
most `buffer_steps` steps or `flush_secs` later). With "pause", "stop" or "rewind" the Tracker
hands every step to the writer as it is recorded and, at the boundary after step s, waits until
step s - 1 has been checked: the action lands at the boundary after step k + 1 for a spike at
step k (one step late at most), while on CUDA step s is already queued, so the device never
waits for the check.

Torch-free on purpose: the engine's config embeds `AlertOptions`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

ACTIONS = ("event", "pause", "stop", "rewind")
METRICS = (("loss", "loss_spike"), ("grad_norm_pre", "grad_spike"))
# The z-scores are of log(value): losses and gradient norms are positive and heavy-tailed (a
# smaller last batch of an epoch doubles the norm), so a spike is a factor, not a difference.
# On the examples, z of the plain values raised 74 alerts in 20k healthy steps, z of the logs 2.
# The spread of the logs never counts as less than this (2%): a series that is flat for
# `window` steps must not alert on a move of a few percent.
LOG_STD_FLOOR = 0.02
# The last steps of epochs are judged against each other (see SpikeWatch): this many of the
# latest, from this many on.
TAIL_WINDOW, TAIL_MIN = 10, 3
RESUM_EVERY = 10  # windows; re-adding the ring bounds the float drift of the running sums


class AlertOptionsError(ValueError):
    """An alert option out of range; str() names the option and the value."""


@dataclass(frozen=True)
class AlertOptions:
    """What raises an alert and what it does (the `[alerts]` config section)."""

    loss_spike: float = 6.0
    """z-score of log(loss) against its last `window` values that raises an alert; 0: off."""
    grad_spike: float = 6.0
    """The same for log of the pre-clip total gradient norm; 0: off."""
    window: int = 100
    """Steps of history the z-scores use; no spike alert before this many finite values > 0."""
    nonfinite_streak: int = 10
    """This many consecutive steps with a non-finite loss or gradient norm alert; 0: off."""
    action: str = "event"
    """event (record it), pause (at the step after the spike), stop (with a checkpoint) or
    rewind (restore the newest checkpoint before the spike and continue)."""
    rewind_skip: int = 0
    """With rewind: data batches to skip after restoring (the batches that spiked, and more)."""

    def __post_init__(self) -> None:
        for key in ("loss_spike", "grad_spike"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AlertOptionsError(f"{key} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise AlertOptionsError(f"{key} must be a finite number >= 0 (0 turns it "
                                        f"off), got {value!r}")
        for key, low in (("window", 2), ("nonfinite_streak", 0), ("rewind_skip", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AlertOptionsError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.action not in ACTIONS:
            raise AlertOptionsError(f"action must be one of {', '.join(ACTIONS)}, got "
                                    f"{self.action!r}")

    @classmethod
    def build(cls, value: AlertOptions | dict[str, Any] | bool | None) -> AlertOptions | None:
        """From Tracker(alerts=...): options, a dict of them, None (defaults) or False (off)."""
        if value is False:
            return None
        if value is None or value is True:
            return cls()
        if isinstance(value, AlertOptions):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise AlertOptionsError(f"unknown alert option {unknown[0]!r} (known: "
                                        f"{', '.join(sorted(known))})")
            return cls(**value)
        raise AlertOptionsError(f"alerts must be AlertOptions, a dict, None or False, got "
                                f"{value!r}")

    @property
    def enabled(self) -> bool:
        """Some check is on (all three at 0: nothing to check, nothing to pay for)."""
        return bool(self.loss_spike or self.grad_spike or self.nonfinite_streak)

    @property
    def steers(self) -> bool:
        """The action changes the run (so the Tracker waits for each step's verdict)."""
        return self.action != "event"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Alert:
    step: int
    metric: str  # loss | grad_norm_pre | nonfinite
    value: float
    z: float | None  # None for a non-finite streak
    threshold: float

    @property
    def data(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "z": self.z,
                "threshold": self.threshold}

    @property
    def message(self) -> str:
        if self.z is None:
            return (f"{int(self.value)} consecutive non-finite steps up to step {self.step}")
        return (f"{self.metric} spike at step {self.step}: {self.value:.4g}, z = {self.z:.1f} "
                f"(of its log against the last steps; threshold {self.threshold:g})")


class RollingStats:
    """Mean and standard deviation (floored) of the last `window` values, O(1) per value."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.ring = np.zeros(window)
        self.clear()

    def clear(self) -> None:
        self.n = 0
        self.head = 0
        self.total = 0.0
        self.squares = 0.0
        self._since_resum = 0

    @property
    def full(self) -> bool:
        return self.n >= self.window

    def z(self, x: float) -> float:
        mean = self.total / self.n
        var = max(self.squares / self.n - mean * mean, 0.0)
        return (x - mean) / max(math.sqrt(var), LOG_STD_FLOOR)

    def bound(self, z: float) -> float:
        """The value `z` std above the mean (what a spike enters the history as)."""
        mean = self.total / self.n
        var = max(self.squares / self.n - mean * mean, 0.0)
        return mean + z * max(math.sqrt(var), LOG_STD_FLOOR)

    def add(self, x: float) -> None:
        if self.n == self.window:
            old = self.ring[self.head]
            self.total -= old
            self.squares -= old * old
        else:
            self.n += 1
        self.ring[self.head] = x
        self.total += x
        self.squares += x * x
        self.head = (self.head + 1) % self.window
        self._since_resum += 1
        if self._since_resum >= RESUM_EVERY * self.window:
            values = self.ring[: self.n]
            self.total, self.squares = float(values.sum()), float(values @ values)
            self._since_resum = 0


@dataclass
class _Held:
    """A step over a threshold, held until the next step shows whether it ended its epoch."""

    step: int
    epoch: int
    logs: dict[str, float]  # metric -> log(value), for the metrics that spiked
    alerts: list[Alert]


class SpikeWatch:
    """Checks recorded steps in order against the options; returns the alerts they raise.

    Each metric's history is the logs of its last `window` finite values > 0 (a value <= 0 is
    a fall, never a spike, and is not judged). The spike itself is never part of its own
    baseline, and a value over the threshold enters
    the history clipped to the threshold, so one spike does not blind the check for the next
    `window` steps. One alert per metric per excursion: the metric must come back under its
    threshold before it alerts again.

    The last batch of an epoch is often smaller (a dataset that batch_size does not divide),
    and its gradient norm and loss are then from another distribution: on the examples those
    steps were every false alarm of the gradient norm (x5 the usual norm, z 6-7.5, once an
    epoch). So a step over a threshold is held until the next step arrives; if the epoch
    changed there, it was its epoch's last step and is judged only against the last steps of
    the earlier epochs (their own history of `TAIL_WINDOW`, from `TAIL_MIN` of them; the main
    history never sees them). Holding costs nothing in time: a steering action waits for step
    s - 1's verdict at the boundary after step s, when step s is already handed over. A spike
    at the very last step of a run is not judged (no step follows it).
    """

    def __init__(self, options: AlertOptions) -> None:
        self.options = options
        self.stats = {metric: RollingStats(options.window) for metric, _ in METRICS}
        self.tail = {metric: RollingStats(TAIL_WINDOW) for metric, _ in METRICS}
        self.over = dict.fromkeys(self.stats, False)
        self.streak = 0
        self.checked = -1  # the last step checked
        self.held: _Held | None = None
        self.prev: tuple[int, dict[str, float]] | None = None  # the last step's epoch and logs

    def reset(self, history: dict[str, list[float]], next_step: int) -> None:
        """Start again from `history` (oldest first): the record was rewound to `next_step`."""
        for metric, stats in self.stats.items():
            stats.clear()
            for value in history.get(metric, [])[-stats.window:]:
                if math.isfinite(value) and value > 0:
                    stats.add(math.log(value))
        self.over = dict.fromkeys(self.stats, False)
        self.streak = 0
        self.held = self.prev = None
        self.checked = next_step - 1

    def check(self, cols: dict[str, Any]) -> list[Alert]:
        found: list[Alert] = []
        steps = cols["step"].tolist()
        epochs = cols["epoch"].tolist() if "epoch" in cols else None
        series = {metric: cols[metric].tolist() for metric in self.stats}
        for i, step in enumerate(steps):
            epoch = int(epochs[i]) if epochs is not None else None
            if self.held is not None:
                found += self._release(epoch)
            elif self.prev is not None and epoch != self.prev[0]:  # it ended its epoch
                for metric, log in self.prev[1].items():
                    self.tail[metric].add(log)
            finite = True
            held: dict[str, float] = {}
            logs: dict[str, float] = {}
            spikes: list[Alert] = []
            for metric, key in METRICS:
                value = series[metric][i]
                if not math.isfinite(value):
                    finite = False
                    continue
                if value > 0:
                    logs[metric] = math.log(value)
                alert = self._check_value(step, metric, value, getattr(self.options, key),
                                          held if epoch is not None else None)
                if alert is not None:
                    spikes.append(alert)
            self.streak = 0 if finite else self.streak + 1
            limit = self.options.nonfinite_streak
            if limit and self.streak == limit:
                found.append(Alert(step, "nonfinite", float(limit), None, float(limit)))
            self.prev = None if epoch is None else (epoch, logs)
            if held:
                assert epoch is not None
                self.held = _Held(step, epoch, held, spikes)
                self.prev = None  # the release files it
            else:
                found += spikes
                self.checked = step
        return found

    def _release(self, epoch: int | None) -> list[Alert]:
        """The step after a held one arrived: judge the held one."""
        held, self.held = self.held, None
        assert held is not None
        if epoch == held.epoch:  # not an epoch's last step: as judged
            for metric, log in held.logs.items():
                stats = self.stats[metric]
                stats.add(min(log, stats.bound(getattr(self.options, _KEY[metric]))))
            self.checked = held.step
            return held.alerts
        alerts = []
        for metric, log in held.logs.items():  # its epoch's last step: against the others
            tail = self.tail[metric]
            threshold = getattr(self.options, _KEY[metric])
            if tail.n >= TAIL_MIN and (z := tail.z(log)) > threshold:
                alerts.append(Alert(held.step, metric, math.exp(log), z, threshold))
                log = min(log, tail.bound(threshold))
            else:
                self.over[metric] = False
            tail.add(log)
        self.checked = held.step
        return alerts

    def _check_value(self, step: int, metric: str, value: float, threshold: float,
                     held: dict[str, float] | None) -> Alert | None:
        if value <= 0:
            return None
        stats = self.stats[metric]
        log = math.log(value)
        if not threshold or not stats.full:
            stats.add(log)
            return None
        z = stats.z(log)
        spiked = z > threshold
        if spiked and held is not None:
            held[metric] = log  # judged when the next step shows whether the epoch ended
            self.over[metric], was_over = True, self.over[metric]
            return None if was_over else Alert(step, metric, value, z, threshold)
        alert = Alert(step, metric, value, z, threshold) if spiked and not self.over[metric] \
            else None
        self.over[metric] = spiked
        stats.add(min(log, stats.bound(threshold)) if spiked else log)
        return alert


_KEY = dict(METRICS)
