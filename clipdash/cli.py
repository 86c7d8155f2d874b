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
    "rm": "delete runs (asks first; refuses live runs)",
    "completion": "print a shell completion script (bash, zsh, fish)",
    "help": "show the help of a command",
}

# One example block per subcommand, shown under its --help (the engine's commands included).
EXAMPLES = {
    "run": ["clipdash run examples/exploding_rnn.toml --set clip.max_norm=0.5",
            "clipdash run --resume @latest"],
    "watch": ["clipdash watch runs"],
    "ls": ["clipdash ls", "clipdash ls runs --json | jq '.[] | {name, status, steps}'"],
    "ctl": ["clipdash ctl exploding set max_norm=0.5    # a unique prefix of the run name",
            "clipdash ctl @latest pause", "clipdash ctl stop                         "
            "# the only live run"],
    "export": ["clipdash export @latest --format jsonl | head",
               "clipdash export my-run --params > steps.csv"],
    "sweep": ["clipdash sweep examples/sweep_clip_x_schedule.toml --jobs 2"],
    "compare": ["clipdash compare my-sweep", "clipdash compare run-a run-b --json"],
    "suggest": ["clipdash suggest @latest", "clipdash suggest my-run --percentile 25"],
    "lr-find": ["clipdash lr-find examples/exploding_rnn.toml --steps 100"],
    "rm": ["clipdash rm old-run other-run", "clipdash rm my-sweep -y"],
    "completion": ['eval "$(clipdash completion bash)"      # add to ~/.bashrc',
                   "clipdash completion fish > ~/.config/fish/completions/clipdash.fish"],
    "help": ["clipdash help ctl"],
}


def epilog(name: str, module: object) -> str:
    """The examples, after whatever the command itself lists (keys, settable values)."""
    examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
    extra = getattr(module, "epilog", None)
    return (extra() + "\n\n" if callable(extra) else "") + examples


# Commands that read the whole command tree (every subcommand's options).
NEEDS_ALL = ("help", "completion")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only the named subcommand's module is imported
    (each import costs milliseconds: `clipdash run` reaches its first step sooner, and `ls`
    and `watch` start sooner). The others stay listed, with their one-line help."""
    chosen = _command(argv)
    parser = argparse.ArgumentParser(
        prog="clipdash",
        description="See and steer gradient clipping and learning-rate schedules.",
        epilog="`clipdash help COMMAND` shows a command's options and examples. A RUN is a run "
        "directory, a name in --runs-dir, a unique prefix of one, or @latest.")
    parser.add_argument("--version", action="version", version=f"clipdash {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        if chosen is not None and name != chosen:
            subs.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(f"clipdash.commands.{name.replace('-', '_')}")
        sub = subs.add_parser(name, help=help_text, description=help_text,
                              epilog=epilog(name, module),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_module=module, _root=parser)
    return parser


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand a command line names, when only its parser is needed; else None (the
    whole tree: no command line, `help`, `completion`, or no subcommand found)."""
    if argv is None:
        return None
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in SUBCOMMANDS and first not in NEEDS_ALL else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
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
