"""Min/max/mean buckets of step columns that grow with a live run without rescanning it.

Buckets are aligned: bucket i holds steps [origin + i*width, origin + (i+1)*width). The first load
comes from SQL (`RunReader.bucket_stats`); later rows are folded in here; when there are more
than `cap` buckets, neighbours merge pairwise and the width doubles. So a plot of a 100,000-step
run costs one SQL scan when it opens and a few rows per update after that, and a spike in any
step survives as the max of its bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A step value: None where the store holds NULL (NaN) or nothing. The one definition the
# dashboard's modules share (this module imports none of them).
Num = float | None


@dataclass(frozen=True)
class Band:
    """A snapshot of one column: per bucket, its step range and min / max / mean (None: no data)."""

    x_lo: tuple[int, ...]
    x_hi: tuple[int, ...]
    ymin: tuple[Num, ...]
    ymax: tuple[Num, ...]
    ymean: tuple[Num, ...]

    def __len__(self) -> int:
        return len(self.x_lo)

    @property
    def last(self) -> Num:
        return self.ymean[-1] if self.ymean else None

    @classmethod
    def empty(cls) -> Band:
        return cls((), (), (), (), ())


def width_for(first: int, last: int, cap: int) -> int:
    """The smallest power of two that fits steps first..last into at most `cap` buckets."""
    width = 1
    while (last - first) // width + 1 > cap:
        width *= 2
    return width


class Buckets:
    """Aligned buckets for several columns; not thread-safe (one owner: the reader thread)."""

    def __init__(self, columns: Sequence[str], cap: int) -> None:
        self.columns = tuple(columns)
        self.cap = max(4, cap)
        self.reset()

    def reset(self) -> None:
        self.origin: int | None = None
        self.width = 1
        self.idx: list[int] = []
        self.lo: list[int] = []
        self.hi: list[int] = []
        # Per column: parallel lists of min, max, sum, count.
        self.mins: list[list[Num]] = [[] for _ in self.columns]
        self.maxs: list[list[Num]] = [[] for _ in self.columns]
        self.sums: list[list[float]] = [[] for _ in self.columns]
        self.counts: list[list[int]] = [[] for _ in self.columns]

    @property
    def last_step(self) -> int | None:
        return self.hi[-1] if self.hi else None

    def load(self, rows: Sequence[Sequence[Any]], origin: int, width: int) -> None:
        """Replace the contents with rows from `RunReader.bucket_stats(columns, width, origin)`."""
        self.reset()
        self.origin, self.width = origin, width
        for row in rows:
            self.idx.append(int(row[0]))
            self.lo.append(int(row[1]))
            self.hi.append(int(row[2]))
            for c in range(len(self.columns)):
                vmin, vmax, vsum, count = row[3 + 4 * c: 7 + 4 * c]
                self.mins[c].append(vmin)
                self.maxs[c].append(vmax)
                self.sums[c].append(vsum or 0.0)
                self.counts[c].append(int(count or 0))
        self._compact()

    def rows(self) -> list[tuple[Any, ...]]:
        """The contents in `RunReader.bucket_stats` form (what `load` takes back)."""
        out = []
        for j, b in enumerate(self.idx):
            row: list[Any] = [b, self.lo[j], self.hi[j]]
            for c in range(len(self.columns)):
                row += [self.mins[c][j], self.maxs[c][j], self.sums[c][j], self.counts[c][j]]
            out.append(tuple(row))
        return out

    def add(self, steps: Sequence[int], values: Sequence[Sequence[Num]]) -> None:
        """Fold rows in step order: `values[c][i]` is column c at `steps[i]`; as in the SQL
        load, only finite values count (inf must not hide the largest finite value)."""
        if self.origin is None and steps:
            self.origin = int(steps[0])
        origin = self.origin or 0
        values = [[v if v is None or math.isfinite(v) else None for v in col] for col in values]
        for i, step in enumerate(steps):
            b = (step - origin) // self.width
            if not self.idx or b > self.idx[-1]:
                self.idx.append(b)
                self.lo.append(step)
                self.hi.append(step)
                for c in range(len(self.columns)):
                    v = values[c][i]
                    self.mins[c].append(v)
                    self.maxs[c].append(v)
                    self.sums[c].append(v if v is not None else 0.0)
                    self.counts[c].append(0 if v is None else 1)
                if len(self.idx) > self.cap:
                    self._compact()
                continue
            if b < self.idx[-1] or step <= self.hi[-1]:
                continue  # an old step again: the caller resets after a truncation
            self.hi[-1] = step
            for c in range(len(self.columns)):
                v = values[c][i]
                if v is None:
                    continue
                m, x = self.mins[c][-1], self.maxs[c][-1]
                self.mins[c][-1] = v if m is None or v < m else m
                self.maxs[c][-1] = v if x is None or v > x else x
                self.sums[c][-1] += v
                self.counts[c][-1] += 1

    def _compact(self) -> None:
        while len(self.idx) > self.cap:
            self.width *= 2
            n = len(self.idx)
            keep: list[int] = []  # position of the first bucket of each merged pair
            new_idx: list[int] = []
            for j in range(n):
                b = self.idx[j] // 2
                if new_idx and new_idx[-1] == b:
                    continue
                keep.append(j)
                new_idx.append(b)
            ends = keep[1:] + [n]
            self.lo = [self.lo[j] for j in keep]
            self.hi = [self.hi[e - 1] for e in ends]
            for c in range(len(self.columns)):
                self.mins[c] = [_min(self.mins[c][j:e]) for j, e in zip(keep, ends, strict=True)]
                self.maxs[c] = [_max(self.maxs[c][j:e]) for j, e in zip(keep, ends, strict=True)]
                self.sums[c] = [sum(self.sums[c][j:e]) for j, e in zip(keep, ends, strict=True)]
                self.counts[c] = [sum(self.counts[c][j:e])
                                  for j, e in zip(keep, ends, strict=True)]
            self.idx = new_idx

    def band(self, column: str) -> Band:
        c = self.columns.index(column)
        means = tuple(s / n if n else None
                      for s, n in zip(self.sums[c], self.counts[c], strict=True))
        return Band(tuple(self.lo), tuple(self.hi), tuple(self.mins[c]), tuple(self.maxs[c]),
                    means)


def _min(values: Sequence[Num]) -> Num:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _max(values: Sequence[Num]) -> Num:
    present = [v for v in values if v is not None]
    return max(present) if present else None
