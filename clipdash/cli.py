"""The `clipdash` command. Each subcommand lives in `clipdash.commands.<name>` and exposes
`add_arguments(parser)` and `run(args) -> int`; those modules import torch or textual only inside
`run`, so `clipdash watch` and `clipdash ls` start without paying for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sqlite3
import sys
from collections.abc import Sequence

from clipdash import __version__
from clipdash.commands.errors import UsageError
from clipdash.store.schema import StoreError

SUBCOMMANDS = {
    "run": "train from a TOML config and record every step",
    "watch": "live terminal dashboard of every run in a runs directory",
    "ls": "list runs with status, step, last loss and max_norm",
    "ctl": "pause, resume, stop a run, or set max_norm / lr / max_value",
    "export": "every recorded step of a run as CSV or JSON lines",
    "sweep": "run the grid in a config's [sweep] table, then rank the runs",
    "compare": "compare runs side by side",
    "suggest": "suggest a max_norm from a run's recorded gradient norms",
    "lr-find": "learning-rate range test: suggest base and max LR",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipdash",
        description="See and steer gradient clipping and learning-rate schedules.")
    parser.add_argument("--version", action="version", version=f"clipdash {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"clipdash.commands.{name.replace('-', '_')}")
        sub = subs.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except UsageError as exc:
        print(f"clipdash {args.command}: {exc}", file=sys.stderr)
        return 2
    except (StoreError, sqlite3.DatabaseError) as exc:  # a damaged or foreign clipdash.sqlite
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"clipdash {args.command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `clipdash export run | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
