"""`clipdash ctl [RUN] pause|resume|stop|rewind` and `clipdash ctl [RUN] set KEY=VALUE`.

`rewind [--to STEP] [--skip N]` restores the newest checkpoint at or before STEP (default: the
one before the latest alert) in the running process and skips N batches (default: the run's
`[alerts] rewind_skip`).

RUN may be a unique prefix or `@latest`, and may be left out when exactly one run in
--runs-dir is live (running or paused, its trainer alive).
Exit codes: 0 applied (or queued, with --no-wait); 2 a bad command, a run that takes no commands,
or a rejection by the trainer; 1 no acknowledgement within --timeout (the command stays queued).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipdash.commands.common import add_runs_dir
from clipdash.commands.errors import UsageError
from clipdash.control import ACTIONS
from clipdash.track.options import ALL_SETTABLE

# What each settable key is for; `ctl --help` lists them (a test checks it covers ALL_SETTABLE).
KEY_HELP = {
    "max_norm": "the norm threshold (clip mode norm)",
    "lr": "the learning rate; the whole schedule is scaled (every clip mode)",
    "max_value": "the value threshold (clip mode value)",
    "percentile": "the percentile clipped at (clip mode percentile, AutoClip)",
    "z_threshold": "standard deviations above the mean (clip mode zscore, ZClip)",
    "clipping": "the unit-wise ratio (clip mode agc)",
}
VERBS = (*ACTIONS, "set")


def epilog() -> str:
    width = max(len(k) for k in ALL_SETTABLE)
    keys = "\n".join(f"  {k:<{width}}  {KEY_HELP.get(k, '')}" for k in ALL_SETTABLE)
    return f"settable keys (set KEY=VALUE; a run takes those of its clip mode):\n{keys}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s [RUN] pause|resume|stop|rewind|set KEY=VALUE "
                    "[--to STEP] [--skip N] [--no-wait] [--timeout S] [--runs-dir DIR]")
    parser.add_argument("words", nargs="+", metavar="[RUN] ACTION [KEY=VALUE]",
                        help="RUN: run directory, name, unique prefix or @latest (optional when "
                        "one run is live); ACTION: pause, resume, stop, rewind or set KEY=VALUE")
    parser.add_argument("--to", type=int, metavar="STEP",
                        help="rewind: the newest checkpoint at or before STEP (default: the "
                        "one before the latest alert)")
    parser.add_argument("--skip", type=int, metavar="N",
                        help="rewind: data batches to skip after restoring (default: the run's "
                        "[alerts] rewind_skip)")
    parser.add_argument("--no-wait", action="store_true",
                        help="queue the command and return without waiting for the trainer")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="seconds to wait for the acknowledgement (default: 15)")
    add_runs_dir(parser)


def split_words(words: list[str]) -> tuple[str | None, str, str | None]:
    """(run or None, action, setting) from `[RUN] ACTION [KEY=VALUE]`.

    The second word decides: `ctl stop pause` pauses a run named "stop"; `ctl pause` pauses the
    only live run.
    """
    if len(words) >= 2 and words[1] in VERBS:
        run, rest = words[0], words[1:]
    elif words[0] in VERBS:
        run, rest = None, words
    else:
        raise UsageError(f"expected an action ({', '.join(VERBS)}) after RUN, got "
                         f"{' '.join(words[1:2]) or 'nothing'}")
    if len(rest) > 2:
        raise UsageError(f"unexpected extra arguments: {' '.join(rest[2:])}")
    return run, rest[0], rest[1] if len(rest) == 2 else None


def only_live_run(runs_dir: str) -> Path:
    from clipdash.store.commands import is_live, live_state, process_gone
    from clipdash.store.layout import find_runs, run_name
    from clipdash.store.schema import StoreError

    live = []
    for path in find_runs(runs_dir):
        try:
            if is_live(live_state(path)) and not process_gone(path):
                live.append(path)
        except StoreError:
            continue
    if len(live) == 1:
        return live[0]
    if not live:
        raise UsageError(f"no live run in {runs_dir}/: name the run (clipdash ctl RUN ...)")
    names = ", ".join(run_name(p, runs_dir) for p in live)
    raise UsageError(f"{len(live)} live runs in {runs_dir}/ ({names}): name the one you mean")


def run(args: argparse.Namespace) -> int:
    from clipdash import control

    run_arg, action, setting = split_words(args.words)
    key: str | None = None
    value: str | int | None = None
    if action == "set":
        if not setting or "=" not in setting:
            raise UsageError("set needs KEY=VALUE, e.g. `clipdash ctl RUN set max_norm=0.5`")
        key, value = (s.strip() for s in setting.split("=", 1))
    elif setting:
        raise UsageError(f"{action} takes no value (got {setting!r})")
    if action == "rewind":
        key, value = None if args.to is None else str(args.to), args.skip
    elif args.to is not None or args.skip is not None:
        raise UsageError(f"--to and --skip go with rewind, not {action}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout:g}")
    target = run_arg if run_arg is not None else only_live_run(args.runs_dir)
    try:
        res = control.send(target, action, key, value, source="cli",
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
