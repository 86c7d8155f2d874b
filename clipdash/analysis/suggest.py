"""max_norm suggestions from recorded pre-clip gradient norms (AutoClip, Seetharaman et al. 2020).

AutoClip clips at the p-th percentile of the norms seen so far (p = 10 in the paper). From a
finished run we have the whole history, so the suggestion for a fixed max_norm is the p-th
percentile of all its finite pre-clip norms (numpy's default linear interpolation), and the
fraction of steps a threshold "would have clipped" is the fraction of those norms above it.
Caveat printed with it: the norms were measured on this run's trajectory; a different threshold
changes the trajectory, so these fractions are estimates, best for a run that clipped little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_PERCENTILE = 10.0
CANDIDATES = (10.0, 25.0, 50.0, 75.0, 90.0)
BAR_WIDTH = 40


def finite_norms(values: Sequence[float | None]) -> np.ndarray:
    """The finite values as float64 (the store holds NULL for NaN; inf is dropped too)."""
    arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def clip_fraction(norms: np.ndarray, threshold: float) -> float:
    """Share of steps whose norm is above `threshold` (what clipping at it would have touched)."""
    return float(np.mean(norms > threshold)) if norms.size else float("nan")


@dataclass
class Candidate:
    percentile: float
    max_norm: float
    clip_fraction: float


@dataclass
class Suggestion:
    percentile: float
    max_norm: float
    n_steps: int
    n_finite: int
    candidates: list[Candidate] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"percentile": self.percentile, "max_norm": self.max_norm,
                "n_steps": self.n_steps, "n_finite": self.n_finite,
                "candidates": [c.__dict__ for c in self.candidates], "stats": self.stats}


def nonfinite_warning(s: Suggestion) -> str | None:
    """A warning when most steps had a non-finite norm: the suggestion then rests on the few
    steps before (or between) the blow-ups, which say little about a run that diverged."""
    bad = s.n_steps - s.n_finite
    if bad * 2 <= s.n_steps:
        return None
    return (f"{bad} of {s.n_steps} steps ({bad / s.n_steps:.1%}) had a non-finite gradient norm: "
            f"this suggestion rests on only {s.n_finite} finite steps; rerun with a lower LR "
            "or a tighter max_norm and suggest from that run")


def suggest(values: Sequence[float | None], percentile: float = DEFAULT_PERCENTILE,
            candidates: Sequence[float] = CANDIDATES) -> Suggestion:
    """The p-th percentile of the finite norms, plus the candidates' clip fractions."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile:g}")
    norms = finite_norms(values)
    if norms.size == 0:
        raise ValueError("no finite pre-clip gradient norm recorded")
    ps = sorted({float(p) for p in candidates} | {float(percentile)})
    cands = [Candidate(p, float(np.percentile(norms, p)), 0.0) for p in ps]
    for c in cands:
        c.clip_fraction = clip_fraction(norms, c.max_norm)
    stats = {"min": float(norms.min()), "median": float(np.median(norms)),
             "mean": float(norms.mean()), "max": float(norms.max())}
    return Suggestion(float(percentile), float(np.percentile(norms, percentile)), len(values),
                      int(norms.size), cands, stats)


def log_histogram(norms: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
    """(edges[bins + 1], counts[bins], zeros): log-spaced bins over the positive norms.

    Zero norms (no gradient at all that step) cannot sit on a log axis and are counted apart.
    """
    positive = norms[norms > 0]
    zeros = int(norms.size - positive.size)
    if positive.size == 0:
        return np.zeros(0), np.zeros(0, np.int64), zeros
    lo, hi = float(positive.min()), float(positive.max())
    if lo == hi:
        lo, hi = lo / 1.5, hi * 1.5
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(positive, edges)
    return edges, counts, zeros


def render_histogram(norms: np.ndarray, marks: dict[str, float] | None = None,
                     bins: int = 20, width: int = BAR_WIDTH) -> list[str]:
    """Text histogram, one line per log-spaced bin; `marks` label the bins holding thresholds."""
    edges, counts, zeros = log_histogram(norms, bins)
    if counts.size == 0:
        return [f"(all {zeros} recorded norms are 0)"]
    top = max(1, int(counts.max()))
    lines = [f"{'pre-clip norm (log bins)':>23} {'steps':>7}"]
    for i, n in enumerate(counts.tolist()):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(counts) - 1
        here = [name for name, v in (marks or {}).items()
                if lo <= v < hi or (last and v == hi)]
        bar = "#" * (round(n / top * width) if n else 0)
        if n and not bar:
            bar = "."
        note = ("  <- " + ", ".join(here)) if here else ""
        lines.append(f"{lo:10.4g} - {hi:<10.4g} {n:7d} {bar:<{width}}{note}".rstrip())
    if zeros:
        lines.append(f"{'0 (no gradient)':>23} {zeros:7d}")
    return lines
