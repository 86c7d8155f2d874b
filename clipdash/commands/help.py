"""`clipdash help [COMMAND]`: the same text as `clipdash COMMAND --help`."""

from __future__ import annotations

import argparse

from clipdash.commands.completion import subparsers
from clipdash.commands.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain")


def run(args: argparse.Namespace) -> int:
    subs = subparsers(args._root)
    if args.topic is None:
        args._root.print_help()
        return 0
    if args.topic not in subs:
        import difflib

        close = difflib.get_close_matches(args.topic, list(subs), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"no command {args.topic!r}{hint}; commands: {', '.join(subs)}")
    subs[args.topic].print_help()
    return 0
