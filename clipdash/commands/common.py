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


def add_runs_dir_positional(parser: argparse.ArgumentParser,
                            what: str = "directory of runs") -> None:
    parser.add_argument("runs_dir", nargs="?", default=DEFAULT_RUNS_DIR, metavar="RUNS_DIR",
                        help=f"{what} (default: ./runs)")


def existing_runs_dir(runs_dir: str) -> Path:
    """RUNS_DIR as given, or UsageError when it is missing or not a directory.

    A misspelt directory must not read as "no runs yet": that is what an empty one says.
    """
    path = Path(runs_dir)
    if not path.exists():
        hint = (" (no run was started here yet: `clipdash run CONFIG.toml` creates it)"
                if runs_dir == DEFAULT_RUNS_DIR else "")
        raise UsageError(f"{runs_dir}: does not exist{hint}")
    if not path.is_dir():
        raise UsageError(f"{runs_dir}: is not a directory of runs")
    return path
