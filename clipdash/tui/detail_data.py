"""The reader thread's side of the run view: plotted columns, evals, events, parameters, config."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from clipdash.store.layout import CONFIG_NAME
from clipdash.store.reader import RunReader
from clipdash.tui.buckets import Band
from clipdash.tui.messages import DetailSnapshot, ParamInfo, ParamPanel
from clipdash.tui.tail import Sig, Tail, db_path, file_sig

DETAIL_COLUMNS = ("loss", "grad_norm_pre", "grad_norm_post", "max_norm", "lr", "clip_coef")
PARAM_WINDOW = 2000  # steps of per-parameter norms shown (the most recent ones)
PARAM_POINTS = 24
PARAM_TOP = 50
PARAM_EVERY_S = 1.0
MAX_MARKERS = 2000
DETAIL_CACHE_KIB = 8192


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def param_panel(reader: RunReader, names: list[str], first: int, last: int) -> ParamPanel:
    """Top PARAM_TOP parameters by their latest norm, with sparklines of the recent window."""
    import numpy as np  # only when a run view opens: keeps the dashboard's start-up light

    start = max(first, last - PARAM_WINDOW + 1)
    _steps, norms = reader.param_norms(start, None, PARAM_POINTS)
    if len(norms) == 0 or norms.shape[1] != len(names):
        return ParamPanel(len(names), (start, last), ())
    latest = norms[-1]
    with np.errstate(invalid="ignore"):
        peak = np.fmax.reduce(norms, axis=0)
    order = np.argsort(-np.nan_to_num(latest, nan=-np.inf), kind="stable")[:PARAM_TOP]
    top = tuple(ParamInfo(names[i], _num(latest[i]), _num(peak[i]),
                          tuple(_num(x) for x in norms[:, i])) for i in order)
    return ParamPanel(len(names), (start, last), top)


def config_text(run_dir: Path, reader: RunReader) -> str:
    path = run_dir / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = f"# no {CONFIG_NAME} in this run directory (a hand-written loop)\n"
    meta = reader.meta()
    lines = [f"{k} = {v!r}" for k, v in sorted(meta.items())]
    return f"{text.rstrip()}\n\n# recorded by the tracker\n" + "\n".join(lines) + "\n"


class DetailWatch:
    """Everything the run view shows, kept current for one run at one plot width."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.tail = Tail(DETAIL_COLUMNS, max(16, cap))
        self.reader: RunReader | None = None
        self.sig: Sig | None = None
        self.evals: dict[str, tuple[list[int], list[float | None]]] = {}
        self.last_eval = -1
        self.last_event = 0
        self.markers: list[tuple[int, str]] = []
        self.names: list[str] | None = None
        self.params_at = -1e9
        self.params_step: int | None = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def tick(self) -> DetailSnapshot | None:
        first = self.reader is None
        sig = file_sig(db_path(self.path))
        params_due = (time.monotonic() - self.params_at >= PARAM_EVERY_S
                      and self.params_step != self.tail.last_step)
        if not first and sig == self.sig and not params_due:
            return None
        self.sig = sig
        if self.reader is None:
            self.reader = RunReader(self.path)
            self.reader.conn.execute(f"PRAGMA cache_size=-{DETAIL_CACHE_KIB}")
        reader = self.reader
        changed = self.tail.refresh(reader)
        evals = reader.evals_after(self.last_eval)
        for step, metric, value in evals:
            xs, ys = self.evals.setdefault(metric, ([], []))
            xs.append(step)
            ys.append(value)
            self.last_eval = max(self.last_eval, step)
        events = reader.events_after(self.last_event)
        for ev in events:
            self.last_event = ev["id"]
            if ev["step"] is not None:
                self.markers.append((ev["step"], ev["kind"]))
        del self.markers[:-MAX_MARKERS]
        params = None
        if first or params_due:
            params = self._params(reader)
        if not (first or changed or evals or events or params):
            return None
        return DetailSnapshot(
            path=str(self.path),
            bands={c: self.tail.buckets.band(c) for c in DETAIL_COLUMNS},
            evals={m: Band(tuple(xs), tuple(xs), tuple(ys), tuple(ys), tuple(ys))
                   for m, (xs, ys) in self.evals.items()},
            new_events=tuple(events), markers=tuple(self.markers), params=params,
            config=config_text(self.path, reader) if first else None, first=first)

    def _params(self, reader: RunReader) -> ParamPanel | None:
        self.params_at = time.monotonic()
        self.params_step = last = self.tail.last_step
        if self.names is None:
            self.names = [n for n, _ in reader.params()]
        if last is None or not self.names:
            return ParamPanel(len(self.names), (0, 0), ())
        return param_panel(reader, self.names, self.tail.buckets.origin or 0, last)
