"""The reader thread's side of the run view: plotted columns, evals, events, parameters, config."""

from __future__ import annotations

import math
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

from clipdash.store.layout import CONFIG_NAME
from clipdash.store.reader import RunReader
from clipdash.tui.buckets import Band
from clipdash.tui.columns import DETAIL_COLUMNS
from clipdash.tui.messages import DetailSnapshot, ParamInfo, ParamPanel
from clipdash.tui.render import fmt_num
from clipdash.tui.tail import Sig, Tail, db_path, file_sig

PARAM_WINDOW = 2000  # steps of per-parameter norms shown (the most recent ones)
PARAM_POINTS = 24
PARAM_TOP = 50
PARAM_EVERY_S = 1.0
MAX_MARKERS = 2000
MAX_EVENTS = 2000
DETAIL_CACHE_KIB = 8192
# Keys of [clip] that mean nothing in a mode (shown config reads as the run behaves).
UNUSED_IN_MODE = {"norm": ("max_value",), "none": ("max_norm", "max_value", "norm_type"),
                  "value": ("max_norm", "norm_type")}


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


def starting_config(text: str) -> tuple[str, dict[str, Any]]:
    """config.toml without the [clip] keys its mode does not use, and its [clip] table."""
    try:
        clip = tomllib.loads(text).get("clip", {})
    except tomllib.TOMLDecodeError:
        return text, {}
    clip = clip if isinstance(clip, dict) else {}
    hidden = UNUSED_IN_MODE.get(str(clip.get("mode", "norm")), ())
    out, section = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[] ")
        elif section == "clip" and stripped.split("=", 1)[0].strip() in hidden:
            continue
        out.append(line)
    return "\n".join(out), clip


def in_effect(latest: dict[str, Any], start: dict[str, Any], mode: str) -> list[str]:
    """The values the trainer uses now (after any live change), beside the starting ones.

    `start`: the clip threshold the run began with (its config, else its first step). The LR
    follows its schedule, so it is shown without a comparison."""
    key = {"value": "max_value", "none": None}.get(mode, "max_norm")
    lines = []
    if key is not None:
        now, begun = latest.get(key), start.get(key)
        note = ""
        if isinstance(begun, int | float) and now is not None and not math.isclose(now, begun):
            note = f"   # changed while training (started at {fmt_num(float(begun))})"
        lines.append(f"{key} = {fmt_num(now)}{note}")
    lines.append(f"lr = {fmt_num(latest.get('lr'))}   # group 0, as scheduled now")
    return lines


def config_text(run_dir: Path, reader: RunReader, latest: dict[str, Any] | None) -> str:
    path = run_dir / CONFIG_NAME
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raw = f"# no {CONFIG_NAME} in this run directory (a hand-written loop)\n"
    text, clip = starting_config(raw)
    meta = reader.meta()
    first = reader.steps_after(-1, ("max_norm", "max_value"), limit=1)
    start = {k: clip.get(k, (first[k] or [None])[0]) for k in ("max_norm", "max_value")}
    mode = str(clip.get("mode", meta.get("clip_mode", "norm")))
    step = "" if not latest else f" (step {latest.get('step')})"
    now = in_effect(latest or {}, start, mode)
    recorded = [f"{k} = {v!r}" for k, v in sorted(meta.items())]
    return (f"# in effect now{step}\n" + "\n".join(now) + "\n\n"
            f"# starting config ({CONFIG_NAME}, as the run began)\n{text.rstrip()}\n\n"
            "# recorded by the tracker\n" + "\n".join(recorded) + "\n")


class DetailWatch:
    """Everything the run view shows, kept current for one run at one plot width."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = max(16, cap)
        self.tail = Tail(DETAIL_COLUMNS, self.cap)
        self.reader: RunReader | None = None
        self.sig: Sig | None = None
        self.evals: dict[str, tuple[list[int], list[float | None]]] = {}
        self.last_eval = -1
        self.last_event = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.markers: deque[tuple[int, str]] = deque(maxlen=MAX_MARKERS)
        self.names: list[str] | None = None
        self.params_at = -1e9
        self.params_step: int | None = None
        self.params: ParamPanel | None = None
        self.config = ""
        self.config_key: tuple[Any, ...] | None = None
        self.next_at = -1e9  # the reader thread paces snapshots (monotonic time)

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
            self.events.append(ev)
            if ev["step"] is not None:
                self.markers.append((ev["step"], ev["kind"]))
        params = self._params(reader) if first or params_due else None
        config = self._config(reader) if first or changed else False
        if not (first or changed or evals or events or params or config):
            return None
        return DetailSnapshot(
            path=str(self.path),
            bands={c: self.tail.buckets.band(c) for c in DETAIL_COLUMNS},
            evals={m: Band(tuple(xs), tuple(xs), tuple(ys), tuple(ys), tuple(ys))
                   for m, (xs, ys) in self.evals.items()},
            events=tuple(self.events), markers=tuple(self.markers), params=self.params,
            config=self.config)

    def _config(self, reader: RunReader) -> bool:
        """Rebuild the config text when the values in effect changed; True if it did."""
        latest = reader.latest()
        key = None if latest is None else (latest["max_norm"], latest["max_value"], latest["lr"])
        if self.config and key == self.config_key:
            return False
        self.config_key = key
        self.config = config_text(self.path, reader, latest)
        return True

    def _params(self, reader: RunReader) -> ParamPanel | None:
        self.params_at = time.monotonic()
        self.params_step = last = self.tail.last_step
        if self.names is None:
            self.names = [n for n, _ in reader.params()]
        if last is None or not self.names:
            self.params = ParamPanel(len(self.names), (0, 0), ())
        else:
            self.params = param_panel(reader, self.names, self.tail.buckets.origin or 0, last)
        return self.params
