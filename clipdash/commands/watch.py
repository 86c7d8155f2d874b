"""`clipdash watch [RUNS_DIR]`: the Textual dashboard (clipdash.tui), which never imports torch."""

from __future__ import annotations

import argparse

from clipdash.store.layout import DEFAULT_RUNS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", nargs="?", default=DEFAULT_RUNS_DIR, metavar="RUNS_DIR",
                        help="directory of runs to watch (default: ./runs)")


def run(args: argparse.Namespace) -> int:
    from clipdash.tui.app import main

    return main(args.runs_dir)
