"""`clipdash ls [RUNS_DIR] [--json]`: runs with status, step, last loss and max_norm."""

from __future__ import annotations

import argparse
import json
import sys

from clipdash.store import RunReader, StoreError, find_runs
from clipdash.store.layout import DEFAULT_RUNS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", nargs="?", default=DEFAULT_RUNS_DIR, metavar="RUNS_DIR",
                        help="directory of runs (default: ./runs)")
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")


def _fmt(value: float | int | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    summaries = []
    for run_dir in find_runs(args.runs_dir):
        try:
            with RunReader(run_dir) as reader:
                summary = reader.summary()
        except StoreError as exc:  # a run being created right now, or a damaged file
            print(f"clipdash ls: skipping {run_dir}: {exc}", file=sys.stderr)
            continue
        name = str(run_dir.relative_to(args.runs_dir))
        summaries.append((name, summary))
    if args.json:
        print(json.dumps([dict(s.to_json(), name=n) for n, s in summaries], indent=1))
        return 0
    if not summaries:
        print(f"no runs in {args.runs_dir}/")
        return 0
    # STEPS counts recorded steps (last 0-based step + 1), so a finished run reads 1500/1500.
    header = ("RUN", "STATUS", "STEPS", "LOSS", "GRAD_NORM", "MAX_NORM", "LR")
    rows = [header] + [
        (n, s.status, _fmt(None if s.step is None else s.step + 1, "d")
         + ("/" + _fmt(s.total_steps, "d") if s.total_steps else ""),
         _fmt(s.loss), _fmt(s.grad_norm_pre), _fmt(s.max_norm), _fmt(s.lr))
        for n, s in summaries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
