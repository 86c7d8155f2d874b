"""Helpers shared by subcommands: resolving RUN arguments into run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipdash.commands.errors import UsageError
from clipdash.store.layout import DEFAULT_RUNS_DIR, RunNotFound, resolve_run


def add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                        help="where runs are looked up by name (default: ./runs)")


def run_dir_arg(run: str, runs_dir: str) -> Path:
    try:
        return resolve_run(run, runs_dir)
    except RunNotFound as exc:
        raise UsageError(str(exc)) from None
