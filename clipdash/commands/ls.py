"""`clipdash ls [RUNS_DIR] [--json]`: runs with status, step, last loss, max_norm and alerts.

STEPS in the table and `steps` in the JSON are the same number: steps recorded (the last
0-based `step` + 1), of `total_steps`. The JSON's `step` is that last 0-based step, the number
`export` and the store use. ALERTS / `alerts`: spike alerts recorded. Floats follow
clipdash.jsonfmt ("inf", "-inf", "nan").
"""

from __future__ import annotations

import argparse
import sys

from clipdash import jsonfmt
from clipdash.commands.common import add_runs_dir_positional, existing_runs_dir
from clipdash.store import RunReader, StoreError, find_runs
from clipdash.store.layout import run_name, shown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runs_dir_positional(parser)
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    # For shell completion: run names one per line, silent when there are none (names a
    # shell word cannot hold, with spaces or control characters, are left out).
    parser.add_argument("--names", action="store_true", help=argparse.SUPPRESS)


def _fmt(value: float | int | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _steps(step: int | None) -> int:
    return 0 if step is None else step + 1


def run(args: argparse.Namespace) -> int:
    if args.names:
        for path in find_runs(args.runs_dir):
            if (name := run_name(path, args.runs_dir)).isprintable() and " " not in name:
                print(name)
        return 0
    existing_runs_dir(args.runs_dir)
    summaries = []
    for run_dir in find_runs(args.runs_dir):
        try:
            with RunReader(run_dir) as reader:
                summary = reader.summary()
        except StoreError as exc:  # a run being created right now, or a damaged file
            print(f"clipdash ls: skipping {run_dir}: {exc}", file=sys.stderr)
            continue
        summaries.append((run_name(run_dir, args.runs_dir), summary))
    if args.json:
        print(jsonfmt.dumps([dict(s.to_json(), name=n, steps=_steps(s.step))
                             for n, s in summaries], indent=1))
        return 0
    if not summaries:
        print(f"no runs in {args.runs_dir}/")
        return 0
    header = ("RUN", "STATUS", "STEPS", "LOSS", "GRAD_NORM", "MAX_NORM", "LR", "ALERTS")
    rows = [header] + [
        (shown(n), s.status,
         str(_steps(s.step)) + ("/" + _fmt(s.total_steps, "d") if s.total_steps else ""),
         _fmt(s.loss), _fmt(s.grad_norm_pre), _fmt(s.max_norm), _fmt(s.lr),
         str(s.alerts) if s.alerts else "-")
        for n, s in summaries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
