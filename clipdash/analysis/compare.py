"""Side-by-side comparison: the results table plus the chosen metric against max_norm."""

from __future__ import annotations

from collections.abc import Sequence

from clipdash.analysis.metrics import METRICS, RunMetrics
from clipdash.analysis.textplot import plot

MAX_NORM_KEY = "clip.max_norm"


def series_name(run: RunMetrics) -> str:
    """What a line of the plot stands for: everything but max_norm that tells the runs apart.

    Sweep members carry their swept values (hparams); other runs are told apart by scheduler
    and, when not plain norm clipping, clip mode.
    """
    others = {k: v for k, v in run.hparams.items() if k != MAX_NORM_KEY}
    if len(others) == 1:
        return str(next(iter(others.values())))
    if others:
        return ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(others.items()))
    mode = f" ({run.clip_mode})" if run.clip_mode not in (None, "norm") else ""
    return f"{run.scheduler or 'none'}{mode}"


def no_plot_reason(metric: str, n_runs: int, n_valued: int, xs: set[float]) -> str:
    """Why there is no metric-vs-max_norm plot, in words a user can act on."""
    head = f"no plot of {metric} against max_norm:"
    if not n_valued:
        return f"{head} none of the {n_runs} runs has a {metric} value"
    if not xs:
        return f"{head} the runs with a {metric} value have no max_norm (clip mode not norm)"
    runs = "the only run" if n_valued == 1 else f"all {n_valued} runs"
    use = "uses" if n_valued == 1 else "use"
    return (f"{head} {runs} with a {metric} value {use} max_norm {next(iter(xs)):g}; "
            "compare runs with different max_norm values to see a trend")


def metric_vs_max_norm(runs: Sequence[RunMetrics], metric: str, width: int = 60,
                       height: int = 14) -> list[str]:
    """A text plot of `metric` against each run's max_norm, one marker per series."""
    series: dict[str, list[tuple[float, float]]] = {}
    valued = [r for r in runs if r.value(metric) is not None]
    for r in valued:
        v = r.value(metric)
        if r.max_norm is not None and v is not None:
            series.setdefault(series_name(r), []).append((float(r.max_norm), v))
    xs = {x for s in series.values() for x, _ in s}
    if len(xs) < 2:
        return [no_plot_reason(metric, len(runs), len(valued), xs)]
    for s in series.values():
        s.sort()
    ys = [y for s in series.values() for _, y in s]
    logx = min(xs) > 0 and max(xs) / min(xs) >= 10
    logy = min(ys) > 0 and max(ys) / min(ys) >= 20  # an outlier would flatten the rest
    better = "higher" if METRICS[metric][1] else "lower"
    scale = ", log scale" if logy else ""
    return plot(series, width=width, height=height, logx=logx, logy=logy, xlabel="max_norm",
                ylabel=f"{metric} ({better} is better{scale})", connect=True)
