"""One row of numbers per run, read from its record, and the ranking of a set of runs.

Definitions (the results table of `clipdash sweep` and `clipdash compare` use these):
- val_accuracy / val_loss: the last evaluation's value.
- train_loss: mean training loss over the last 10% of steps (at most 50 steps); NaN when one
  of them was not finite.
- clip_rate: share of steps where clipping fired. grad_norm: mean finite pre-clip norm.
- diverged: a non-finite training loss at any step, or a loss blow-up: the final mean loss
  (last of 50 equal step buckets) above 4x the best bucket mean.
- rank metric "val": val accuracy when any compared run has one (higher is better), else val
  loss (lower is better); runs without the metric (or failed before evaluating) rank last.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from clipdash import jsonfmt
from clipdash.store import CONFIG_NAME, RunReader, StoreError

BLOWUP_FACTOR = 4.0
LOSS_BUCKETS = 50
# name -> (description, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "val_accuracy": ("validation accuracy", True),
    "val_loss": ("validation loss", False),
    "train_loss": ("final train loss", False),
    "clip_rate": ("share of steps clipped", False),
    "grad_norm": ("mean pre-clip gradient norm", False),
}


@dataclass
class RunMetrics:
    name: str
    path: str
    status: str
    steps: int = 0
    total_steps: int | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    clip_rate: float | None = None
    grad_norm: float | None = None
    diverged: bool = False
    nonfinite_steps: int = 0
    max_norm: float | None = None
    clip_mode: str | None = None
    lr: float | None = None
    scheduler: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rank: int | None = None

    def value(self, metric: str) -> float | None:
        v = getattr(self, metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def to_json(self) -> dict[str, Any]:
        """Strict JSON under the one convention (clipdash.jsonfmt: "inf", "-inf", "nan")."""
        return cast(dict[str, Any], jsonfmt.strict(asdict(self)))


def read_config(run_dir: Path) -> dict[str, Any]:
    try:
        with open(run_dir / CONFIG_NAME, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def scheduler_label(cfg: dict[str, Any]) -> str:
    sched = cfg.get("scheduler")
    return str(sched.get("name", "?")) if isinstance(sched, dict) else "none"


def _last(reader: RunReader, metric: str) -> float | None:
    _, values = reader.eval_series(metric)
    return values[-1] if values else None


def run_metrics(run_dir: str | Path, name: str | None = None) -> RunMetrics:
    """Everything in the results table for one run (aggregates computed in SQL)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    clip = cfg.get("clip", {}) if isinstance(cfg.get("clip"), dict) else {}
    opt = cfg.get("optimizer", {}) if isinstance(cfg.get("optimizer"), dict) else {}
    m = RunMetrics(name=name or run_dir.name, path=str(run_dir), status="missing",
                   max_norm=clip.get("max_norm", 1.0), clip_mode=clip.get("mode", "norm"),
                   lr=opt.get("lr"), scheduler=scheduler_label(cfg))
    try:
        reader = RunReader(run_dir)
    except StoreError as exc:
        m.error = str(exc)
        return m
    with reader:
        summary = reader.summary()
        meta = reader.meta()
        m.status = summary.status
        m.total_steps = summary.total_steps
        if isinstance(meta.get("hparams"), dict):
            m.hparams = meta["hparams"]
        conn = reader.conn
        n, clip_rate, grad_norm, bad_loss, bad_grad = conn.execute(
            "SELECT COUNT(*), AVG(clipped), "
            "AVG(CASE WHEN abs(grad_norm_pre) < 1e308 THEN grad_norm_pre END), "
            "SUM(loss IS NULL OR abs(loss) >= 1e308), SUM(finite = 0) FROM steps").fetchone()
        m.steps = int(n or 0)
        if not m.steps:
            return m
        m.clip_rate, m.grad_norm = clip_rate, grad_norm
        m.nonfinite_steps = int(bad_grad or 0)
        window = min(50, max(1, m.steps // 10))
        mean, bad = conn.execute(
            "SELECT AVG(loss), SUM(loss IS NULL OR abs(loss) >= 1e308) FROM "
            "(SELECT loss FROM steps ORDER BY step DESC LIMIT ?)", (window,)).fetchone()
        m.train_loss = math.nan if bad else mean
        means = [v for v in reader.series("loss", LOSS_BUCKETS).vmean if v is not None]
        blowup = bool(means) and means[-1] > BLOWUP_FACTOR * min(means) and min(means) >= 0
        m.diverged = bool(bad_loss) or blowup
        m.val_accuracy = _last(reader, "accuracy")
        m.val_loss = _last(reader, "loss")
    return m


def rank_metric(runs: Sequence[RunMetrics], metric: str = "val") -> str:
    """Resolve "val" to val_accuracy or val_loss (see the module docstring)."""
    if metric != "val":
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (val, {', '.join(METRICS)})")
        return metric
    if any(r.value("val_accuracy") is not None for r in runs):
        return "val_accuracy"
    if any(r.value("val_loss") is not None for r in runs):
        return "val_loss"
    return "train_loss"


def rank(runs: Sequence[RunMetrics], metric: str = "val") -> tuple[str, list[RunMetrics]]:
    """(resolved metric, runs best first); sets each run's `rank` (None: no value)."""
    resolved = rank_metric(runs, metric)
    higher = METRICS[resolved][1]

    def key(r: RunMetrics) -> tuple[int, float, str]:
        v = r.value(resolved)
        if v is None:
            return (1, 0.0, r.name)
        return (0, -v if higher else v, r.name)

    ordered = sorted(runs, key=key)
    for i, r in enumerate(ordered):
        r.rank = i + 1 if r.value(resolved) is not None else None
    return resolved, ordered


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, spec)
    return str(v)


def _columns(runs: Sequence[RunMetrics], metric: str) -> list[str]:
    """The metric columns, ranking metric first; a validation column no run has is left out."""
    cols = ["val_accuracy", "val_loss", "train_loss", "clip_rate", "grad_norm"]
    cols = [c for c in cols if c == metric or not c.startswith("val_")
            or any(r.value(c) is not None for r in runs)]
    cols.sort(key=lambda c: c != metric)
    return cols


def threshold(r: RunMetrics) -> str:
    """The MAX_NORM cell: the configured max_norm, or the clip mode when it is not by norm."""
    if r.clip_mode in (None, "norm"):
        return _fmt(r.max_norm)
    return str(r.clip_mode)


def table(runs: Sequence[RunMetrics], metric: str, extra: Sequence[str] = ()) -> list[str]:
    """The results table as aligned text lines, in the given order.

    Columns: rank, run, the ranking metric first, then val loss/accuracy (when any run has
    them), final train loss, clip rate, mean pre-clip norm, max_norm (the config's; the clip mode
    when not clipping by norm), diverged, status; `extra` adds hparams columns.
    """
    cols = _columns(runs, metric)
    header = ["#", "RUN", *[h.upper() for h in extra], *[c.upper() for c in cols],
              "MAX_NORM", "DIVERGED", "STATUS"]
    rows = [header]
    for r in runs:
        status = r.status + (f": {r.error}" if r.error and r.status in ("invalid", "failed")
                             else "")
        rows.append([_fmt(r.rank), r.name, *[_fmt(r.hparams.get(h)) for h in extra],
                     *[_fmt(getattr(r, c), ".3f" if c == "clip_rate" else ".4g") for c in cols],
                     threshold(r), _fmt(r.diverged) if r.steps else "-", status])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
            + "  " + row[-1] for row in rows]


def markdown_table(runs: Sequence[RunMetrics], metric: str) -> list[str]:
    """The same table as GitHub markdown (for docs and reports)."""
    cols = _columns(runs, metric)
    header = ["#", "run", *cols, "max_norm", "diverged", "status"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        vals = [_fmt(r.rank), f"`{r.name}`",
                *[_fmt(getattr(r, c), ".3f" if c == "clip_rate" else ".4g") for c in cols],
                threshold(r), _fmt(r.diverged) if r.steps else "-", r.status]
        out.append("| " + " | ".join(vals) + " |")
    return out
