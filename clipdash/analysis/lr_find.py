"""The learning-rate range test's math (Smith 2015/2017), torch-free.

The LR grows exponentially from start to end over `steps` optimizer steps:
    lr(i) = start * (end / start) ** (i / (steps - 1)),   i = 0 .. steps - 1
The test stops early once the loss diverges: not finite, or its running average (an EMA with
`STOP_BETA`, bias-corrected) exceeds DIVERGE_FACTOR times the best running average so far.

Suggestions, from the loss smoothed by a centred moving average over ~5% of the points (centred,
so it lags neither way):
- max_lr: the LR at the smoothed minimum, where the loss stops falling (Smith 2017's upper bound
  for CyclicLR; also OneCycleLR's max_lr).
- base_lr: the first LR where the smoothed loss has covered 10% of its total fall, i.e. where
  it starts to fall (Smith 2017's lower bound).
- steepest: the LR where the smoothed loss falls fastest per decade of LR (a good constant LR).
- min_loss_div10: max_lr / 10, the conservative choice popularised by fastai.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DIVERGE_FACTOR = 4.0
STOP_BETA = 0.9
START_FRACTION = 0.10


def lr_at(step: int, start: float, end: float, steps: int) -> float:
    """The closed form of the exponential ramp (the LR step `step` uses)."""
    if steps <= 1:
        return start
    return start * (end / start) ** (step / (steps - 1))


class DivergenceWatch:
    """Feed it each step's loss; `diverged` turns True once the test should stop."""

    def __init__(self, factor: float = DIVERGE_FACTOR, beta: float = STOP_BETA) -> None:
        self.factor = factor
        self.beta = beta
        self.avg = 0.0
        self.n = 0
        self.best = math.inf
        self.smoothed = math.nan

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.smoothed = self.avg / (1 - self.beta ** self.n)
        self.best = min(self.best, self.smoothed)
        return self.n > 1 and self.smoothed > self.factor * self.best

    @property
    def diverged(self) -> bool:
        return self.n > 1 and self.smoothed > self.factor * self.best


def smooth(values: Sequence[float], window: int | None = None) -> np.ndarray:
    """Centred moving average (window shrinks at the edges); non-finite values are skipped."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return v
    w = window or max(3, n // 20)
    half = w // 2
    ok = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    counts = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (csum[hi] - csum[lo]) / np.maximum(counts, 1), np.nan)


@dataclass
class LrSuggestion:
    base_lr: float | None
    max_lr: float | None
    steepest: float | None
    min_loss_div10: float | None
    note: str = ""


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> LrSuggestion:
    """Suggested LRs from a range test's (lr, loss) pairs (see the module docstring)."""
    lr = np.asarray(lrs, dtype=np.float64)
    s = smooth(losses)
    ok = np.isfinite(s)
    if ok.sum() < 3:
        return LrSuggestion(None, None, None, None, "too few finite losses to suggest an LR")
    idx = np.flatnonzero(ok)
    i_min = int(idx[np.argmin(s[idx])])
    first = float(s[idx[0]])
    drop = first - float(s[i_min])
    if i_min == idx[0] or drop <= 0:
        return LrSuggestion(None, None, None, None,
                            "the loss never fell: lower --start-lr, or check the model")
    start_i = int(idx[np.argmax(s[idx] <= first - START_FRACTION * drop)])
    head = idx[idx <= i_min]
    slope = np.gradient(s[head], np.log10(lr[head])) if len(head) > 1 else np.zeros(1)
    steepest = float(lr[head[int(np.argmin(slope))]])
    max_lr = float(lr[i_min])
    note = ""
    if i_min >= idx[-1] - max(1, len(idx) // 50):
        note = "the loss was still falling at the end: try a larger --end-lr"
    return LrSuggestion(float(lr[start_i]), max_lr, steepest, max_lr / 10, note)
