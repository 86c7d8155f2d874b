"""`clipdash export RUN [--format csv|jsonl] [--params]`: every recorded step to stdout.

Columns: step, epoch, wall_time, loss, lr, grad_norm_pre, grad_norm_post, max_norm, clip_coef,
clipped, finite, max_value, lr_group_N (N >= 1, when there are several groups), then with --params
one column per parameter, named after it. Evaluations are not steps: they are in the store's
`evals` table and in TensorBoard. clipped and finite are 1/0 in CSV and true/false in JSON
lines. Non-finite numbers are `inf`, `-inf`, `nan` in CSV and the strings "inf", "-inf", "nan"
in JSON lines (clipdash.jsonfmt); null (CSV: empty) is a value that was not recorded.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from typing import Any

from clipdash import jsonfmt
from clipdash.commands.common import add_runs_dir, run_dir_arg
from clipdash.store import RunReader
from clipdash.store.schema import EXPORT_COLUMNS

MEASURED = ("loss", "grad_norm_pre", "grad_norm_post", "clip_coef")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory, or run name in --runs-dir")
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    parser.add_argument("--params", action="store_true",
                        help="add the per-parameter pre-clip norms, one column per parameter")
    add_runs_dir(parser)


def _rows(reader: RunReader, with_params: bool) -> tuple[list[str], Any]:
    n_groups = int(reader.meta().get("n_groups", 1))
    names = [n for n, _ in reader.params()] if with_params else []
    columns = [*EXPORT_COLUMNS, *(f"lr_group_{g}" for g in range(1, n_groups)), *names]

    def rows() -> Any:
        for d in reader.iter_steps(with_params=with_params):
            for key in MEASURED:  # NULL in a measured column is a NaN that SQLite stored as NULL
                if d[key] is None:
                    d[key] = math.nan
            d["clipped"], d["finite"] = bool(d["clipped"]), bool(d["finite"])
            groups = d.pop("lr_groups")
            for g in range(1, n_groups):
                d[f"lr_group_{g}"] = groups[g] if g < len(groups) else None
            norms = d.pop("param_norms", None)
            if with_params:
                values = norms.tolist() if norms is not None else [None] * len(names)
                d.update(zip(names, values, strict=True))
            yield d

    return columns, rows()


def _csv_cell(value: Any) -> Any:
    """Booleans as 1/0 so every CSV reader parses them as numbers; missing as empty."""
    if value is None:
        return ""
    return int(value) if isinstance(value, bool) else value


def run(args: argparse.Namespace) -> int:
    run_dir = run_dir_arg(args.run, args.runs_dir)
    with RunReader(run_dir) as reader:
        columns, rows = _rows(reader, args.params)
        out = sys.stdout
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for d in rows:
                writer.writerow({k: _csv_cell(v) for k, v in d.items()})
        else:
            for d in rows:
                out.write(jsonfmt.dumps(d) + "\n")
    return 0
