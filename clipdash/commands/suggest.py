"""`clipdash suggest RUN [--percentile P] [--bins N] [--json]`: a max_norm from recorded norms.

AutoClip (Seetharaman et al. 2020): the p-th percentile (default 10) of the run's finite
pre-clip gradient norms; also the distribution as a log-binned text histogram and, for several
percentiles, the share of steps that threshold would have clipped. Math in clipdash/analysis.
"""

from __future__ import annotations

import argparse
import sys

from clipdash import jsonfmt
from clipdash.commands.common import add_runs_dir, run_dir_arg
from clipdash.commands.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory, or run name in --runs-dir")
    parser.add_argument("--percentile", "-p", type=float, default=10.0, metavar="P",
                        help="percentile of the norm history to suggest (default 10, AutoClip)")
    parser.add_argument("--bins", type=int, default=20, help="histogram bins (default 20)")
    parser.add_argument("--json", action="store_true", help="the numbers as JSON")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from clipdash.analysis.suggest import (
        finite_norms,
        nonfinite_warning,
        render_histogram,
        suggest,
    )
    from clipdash.store import RunReader, StoreError

    run_dir = run_dir_arg(args.run, args.runs_dir)
    if args.bins < 1:
        raise UsageError(f"--bins must be >= 1, got {args.bins}")
    try:
        with RunReader(run_dir) as reader:
            cols = reader.steps_after(-1, ("grad_norm_pre", "clipped", "max_norm"))
            meta = reader.meta()
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    values = cols["grad_norm_pre"]
    try:
        s = suggest(values, args.percentile)
    except ValueError as exc:
        raise UsageError(f"{run_dir.name}: {exc}") from None
    clipped = [c for c in cols["clipped"] if c is not None]
    actual_rate = sum(clipped) / len(clipped) if clipped else None
    thresholds = [m for m in cols["max_norm"] if m is not None]
    warning = nonfinite_warning(s)
    if warning:
        print(f"clipdash suggest: warning: {warning}", file=sys.stderr)
    if args.json:
        out = dict(s.to_json(), run=str(run_dir), clip_mode=meta.get("clip_mode"),
                   actual_clip_rate=actual_rate, warning=warning)
        print(jsonfmt.dumps(out, indent=1))
        return 0
    mode = meta.get("clip_mode", "norm")
    print(f"{run_dir.name}: {s.n_finite} finite pre-clip gradient norms "
          f"({s.n_steps - s.n_finite} non-finite left out); clip mode {mode}")
    st = s.stats
    print(f"  min {st['min']:.4g}  median {st['median']:.4g}  mean {st['mean']:.4g}  "
          f"max {st['max']:.4g}")
    if thresholds and actual_rate is not None:
        lo, hi = min(thresholds), max(thresholds)
        used = f"{lo:.4g}" if lo == hi else f"{lo:.4g} .. {hi:.4g}"
        print(f"  this run: max_norm {used}, clipped {actual_rate:.1%} of steps")
    print()
    marks = {f"p{c.percentile:g}": c.max_norm for c in s.candidates}
    for line in render_histogram(finite_norms(values), marks, bins=args.bins):
        print(line)
    print()
    print(f"{'percentile':>10}  {'max_norm':>10}  would clip")
    for c in s.candidates:
        star = "  <- suggested" if c.percentile == s.percentile else ""
        print(f"{c.percentile:>10g}  {c.max_norm:>10.4g}  {c.clip_fraction:>9.1%}{star}")
    print()
    print(f"suggested: [clip] max_norm = {s.max_norm:.4g}   (p{s.percentile:g} of the history, "
          f"AutoClip; or let it adapt: mode = \"percentile\", percentile = {s.percentile:g})")
    if warning:
        print(f"warning: {warning}")
    print("  (fractions are of this run's norms; a different threshold changes the trajectory, "
          "so read them as estimates)")
    return 0
