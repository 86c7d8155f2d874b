"""`clipdash ctl RUN pause|resume|stop` and `clipdash ctl RUN set KEY=VALUE`.

Exit codes: 0 applied (or queued, with --no-wait); 2 a bad command, a run that takes no commands,
or a rejection by the trainer; 1 no acknowledgement within --timeout (the command stays queued).
"""

from __future__ import annotations

import argparse
import sys

from clipdash.commands.common import add_runs_dir
from clipdash.commands.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory, or run name in --runs-dir")
    parser.add_argument("action", choices=["pause", "resume", "stop", "set"])
    parser.add_argument("setting", nargs="?", metavar="KEY=VALUE",
                        help="for set: max_norm=0.5, lr=0.01 or max_value=0.1")
    parser.add_argument("--no-wait", action="store_true",
                        help="queue the command and return without waiting for the trainer")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="seconds to wait for the acknowledgement (default: 15)")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from clipdash import control

    key = value = None
    if args.action == "set":
        if not args.setting or "=" not in args.setting:
            raise UsageError("set needs KEY=VALUE, e.g. `clipdash ctl RUN set max_norm=0.5`")
        key, value = (s.strip() for s in args.setting.split("=", 1))
    elif args.setting:
        raise UsageError(f"{args.action} takes no value (got {args.setting!r})")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout:g}")
    try:
        res = control.send(args.run, args.action, key, value, source="cli",
                           wait=not args.no_wait, timeout=args.timeout, runs_dir=args.runs_dir)
    except control.ControlTimeout as exc:
        print(f"clipdash ctl: {exc}", file=sys.stderr)
        return 1
    except control.ControlError as exc:
        raise UsageError(str(exc)) from None
    if args.no_wait:
        print(f"queued command {res.id}")
    else:
        print(f"applied at step {res.step}: {res.message}")
    return 0
