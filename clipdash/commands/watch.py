"""`clipdash watch [RUNS_DIR]`: the Textual dashboard (clipdash.tui), which never imports torch.

It needs a terminal on both ends: without one (a pipe, cron, CI) it refuses at once instead of
writing escape codes into the pipe and waiting for keys that never come.
"""

from __future__ import annotations

import argparse
import sys

from clipdash.commands.common import add_runs_dir_positional, existing_runs_dir
from clipdash.commands.errors import UsageError
from clipdash.keymap import DASHBOARD_KEYS


def epilog() -> str:
    width = max(len(k) for k, _ in DASHBOARD_KEYS)
    return "keys:\n" + "\n".join(f"  {k:<{width}}  {what}" for k, what in DASHBOARD_KEYS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runs_dir_positional(parser, "directory of runs to watch")


def run(args: argparse.Namespace) -> int:
    existing_runs_dir(args.runs_dir)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("needs a terminal (stdin and stdout are not both a tty); "
                         "for scripts use `clipdash ls` or `clipdash ls --json`")
    from clipdash.tui.app import main

    return main(args.runs_dir)
