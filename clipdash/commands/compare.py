"""`clipdash compare RUN... [--metric M] [--json]`: runs side by side, and a metric vs max_norm.

A RUN that names a folder of runs (a sweep: `clipdash compare my-sweep`) stands for its runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipdash import jsonfmt
from clipdash.commands.common import add_runs_dir
from clipdash.commands.errors import UsageError
from clipdash.store.layout import RunNotFound, find_runs, is_run_dir, resolve_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directories or names, or sweep folders (all their runs)")
    parser.add_argument("--metric", default="val",
                        help="rank and plot by: val (val accuracy if recorded, else val loss), "
                        "val_loss, val_accuracy, train_loss, clip_rate, grad_norm")
    parser.add_argument("--json", action="store_true", help="the table as JSON")
    parser.add_argument("--markdown", action="store_true",
                        help="the table as GitHub markdown (for reports), without the plot")
    add_runs_dir(parser)


def expand(args: list[str], runs_dir: str) -> list[tuple[str, Path]]:
    """(display name, run dir) for every RUN; sweep folders expand to `sweep/run` names."""
    out: list[tuple[str, Path]] = []
    for arg in args:
        try:
            path = resolve_run(arg, runs_dir)
            out.append((path.name, path))
            continue
        except RunNotFound as exc:
            error = str(exc)
        for folder in (Path(arg), Path(runs_dir) / arg):
            if folder.is_dir() and not is_run_dir(folder):
                members = [p for p in find_runs(folder) if p.parent == folder]
                if members:
                    out += [(f"{folder.name}/{p.name}", p) for p in members]
                    break
        else:
            raise UsageError(error.replace("no run", "no run or sweep folder", 1))
    seen: set[Path] = set()
    unique = []
    for name, path in out:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((name, path))
    return unique


def run(args: argparse.Namespace) -> int:
    from clipdash.analysis.compare import metric_vs_max_norm
    from clipdash.analysis.metrics import markdown_table, rank, run_metrics, table

    runs = [run_metrics(path, name) for name, path in expand(args.runs, args.runs_dir)]
    try:
        metric, ordered = rank(runs, args.metric)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(jsonfmt.dumps({"metric": metric, "runs": [r.to_json() for r in ordered]}, indent=1))
        return 0
    if args.markdown:
        print("\n".join(markdown_table(ordered, metric)))
        return 0
    print(f"{len(ordered)} runs, ranked by {metric}:")
    for line in table(ordered, metric):
        print(line)
    print()
    for line in metric_vs_max_norm(ordered, metric):
        print(line)
    return 0
