"""`clipdash rm RUN... [-y]`: delete runs (lr-find runs pile up), after a confirmation.

A RUN is anything `resolve_run` takes (name, unique prefix, @latest, path) or a sweep folder in
the runs directory, which stands for the whole folder. Live runs (a writer holds the run's lock,
or it is running/paused with its trainer alive) are refused: stop them first. Removing a sweep
member also removes its bookkeeping (`SWEEP/.sweep/*/<name>.*`); a sweep folder left with no
runs is removed too. Without a terminal, `-y` is required: nothing is deleted by accident.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from clipdash.commands.common import add_runs_dir
from clipdash.commands.errors import UsageError
from clipdash.store.layout import (
    RunNotFound,
    find_runs,
    is_run_dir,
    resolve_run,
    run_name,
    shown,
)

SWEEP_BOOKKEEPING = ".sweep"  # clipdash.engine.sweep.BOOKKEEPING (not imported: it needs torch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run names, unique prefixes, @latest, paths, or sweep folders")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_runs_dir(parser)


def sweep_folder(arg: str, runs_dir: str) -> Path | None:
    """`arg` as a sweep folder directly inside the runs directory (never the runs dir itself)."""
    root = Path(runs_dir).resolve()
    for folder in (Path(arg), Path(runs_dir) / arg):
        if (folder.is_dir() and not is_run_dir(folder) and folder.resolve().parent == root
                and any(p.parent == folder for p in find_runs(folder))):
            return folder
    return None


def targets(args: list[str], runs_dir: str) -> tuple[list[Path], list[Path]]:
    """(runs, sweep folders) the arguments name; UsageError for one that names nothing."""
    runs: dict[Path, Path] = {}
    folders: dict[Path, Path] = {}
    for arg in args:
        folder = sweep_folder(arg, runs_dir)
        if folder is not None:
            folders[folder.resolve()] = folder
            runs.update((p.resolve(), p) for p in find_runs(folder) if p.parent == folder)
            continue
        try:
            path = resolve_run(arg, runs_dir)
        except RunNotFound as exc:
            raise UsageError(str(exc)) from None
        runs[path.resolve()] = path
    return list(runs.values()), list(folders.values())


def live_reason(run_dir: Path) -> str | None:
    from clipdash.store.commands import is_live, live_state, process_gone
    from clipdash.store.lock import holder
    from clipdash.store.schema import StoreError

    owner = holder(run_dir)
    if owner is not None:
        return f"its trainer (pid {owner.get('pid')}) is writing it"
    try:
        state = live_state(run_dir)
        if is_live(state) and not process_gone(run_dir):
            return f"it is {state}"
    except StoreError:
        return None  # a damaged store is exactly what one may want to delete
    return None


def remove_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir)
    book = run_dir.parent / SWEEP_BOOKKEEPING
    if book.is_dir():  # a sweep member: its config and log go with it
        for leftover in book.glob(f"*/{run_dir.name}.*"):
            leftover.unlink(missing_ok=True)


def attempt(remove: Callable[[Path], None], path: Path, name: str) -> bool:
    """Remove, or say on stderr why not (a read-only directory, another user's files)."""
    try:
        remove(path)
    except OSError as exc:
        print(f"clipdash rm: cannot remove {name}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def confirm(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run(args: argparse.Namespace) -> int:
    runs, folders = targets(args.runs, args.runs_dir)
    live = [(p, why) for p in runs if (why := live_reason(p))]
    if live:
        p, why = live[0]
        name = shown(run_name(p, args.runs_dir))
        raise UsageError(f"refusing to remove {name}: {why} (stop it first: clipdash ctl "
                         f"{name} stop)")
    names = [shown(run_name(p, args.runs_dir)) for p in runs]
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("no terminal to confirm on: pass -y to remove without asking")
        print("\n".join(f"  {n}" for n in names))
        if not confirm(f"remove {len(runs)} run{'s' if len(runs) != 1 else ''}? [y/N] "):
            print("nothing removed")
            return 1
    failed = [name for path, name in zip(runs, names, strict=True)
              if not attempt(remove_run, path, name)]
    root = Path(args.runs_dir).resolve()
    for parent in {*folders, *(p.parent for p in runs)}:  # sweeps whose last run just went
        if (parent.resolve().parent == root and not find_runs(parent)
                and (parent in folders or (parent / SWEEP_BOOKKEEPING).is_dir())):
            attempt(shutil.rmtree, parent, shown(run_name(parent, args.runs_dir)))
    removed = [n for n in names if n not in failed]
    if removed:
        print(f"removed {len(removed)} run{'s' if len(removed) != 1 else ''}: "
              f"{', '.join(removed)}")
    return 1 if failed else 0
