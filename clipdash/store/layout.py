"""Where a run's files live, and how a user's RUN argument becomes a run directory."""

from __future__ import annotations

import difflib
import sqlite3
from pathlib import Path

DB_NAME = "clipdash.sqlite"
CONFIG_NAME = "config.toml"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_RUNS_DIR = "runs"


class RunNotFound(LookupError):
    """RUN names neither a run directory nor a run inside the runs directory."""


def is_run_dir(path: Path) -> bool:
    return (path / DB_NAME).is_file()


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every run directory under `runs_dir`: its children, and the children of sweep folders.

    Two levels are enough (a sweep is a folder of ordinary runs) and keep the scan cheap
    enough for the dashboard to repeat it every second or two.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if is_run_dir(child):
            found.append(child)
            continue
        found.extend(g for g in sorted(child.iterdir()) if g.is_dir() and is_run_dir(g))
    return found


LATEST = "@latest"


def run_name(path: Path, runs_dir: str | Path) -> str:
    """How a run is named inside `runs_dir`: `run`, or `sweep/run` for a sweep member."""
    try:
        return path.relative_to(runs_dir).as_posix()
    except ValueError:
        return str(path)


def started_at(run_dir: Path) -> float:
    """When the run started (its status row), else when its store was created."""
    db = run_dir / DB_NAME
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT started FROM status WHERE id = 1").fetchone()
        finally:
            conn.close()
        if row and row[0] is not None:
            return float(row[0])
    except sqlite3.Error:
        pass  # a store being created right now, or not a clipdash store: fall back to the file
    try:
        return db.stat().st_mtime
    except OSError:
        return 0.0


def latest_run(runs_dir: str | Path) -> Path:
    runs = find_runs(runs_dir)
    if not runs:
        raise RunNotFound(f"no run for {LATEST}: {_no_runs(runs_dir)}")
    return max(runs, key=lambda p: (started_at(p), str(p)))


def _no_runs(runs_dir: str | Path) -> str:
    path = Path(runs_dir)
    if path.is_dir():
        return f"no runs in {runs_dir}/"
    if path.exists():
        return f"{runs_dir} is not a directory of runs"
    return f"the runs directory {runs_dir}/ does not exist"


def shown(name: str) -> str:
    """A run name as it may be printed: a name with control characters (a hostile or broken
    directory) is shown quoted and escaped, never sent raw to the terminal."""
    return name if name.isprintable() else repr(name)


def _listing(paths: list[Path], runs_dir: str | Path, limit: int = 6) -> str:
    names = [shown(run_name(p, runs_dir)) for p in paths]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def resolve_run(run: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run directory a user means by RUN.

    In this order: `@latest` (the run that started last), a path to a run directory, a name
    (or `sweep/run`) inside `runs_dir`, a run's own name (a sweep member's too), then a unique
    prefix of either. RunNotFound lists the candidates when several match, and the close names
    (difflib) when none does.
    """
    text = str(run)
    if text == LATEST:
        return latest_run(runs_dir)
    for candidate in (Path(run), Path(runs_dir) / text):
        if is_run_dir(candidate):
            return candidate
    runs = find_runs(runs_dir)
    for matches in ([p for p in runs if p.name == text],
                    [p for p in runs
                     if run_name(p, runs_dir).startswith(text) or p.name.startswith(text)],
                    _path_prefix(Path(text))):
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise RunNotFound(f"run {text!r} is ambiguous: it matches "
                              f"{_listing(matches, runs_dir)}")
    if not runs:
        raise RunNotFound(f"no run {text!r}: not a run directory, and {_no_runs(runs_dir)}")
    close = close_names(text, sorted({run_name(p, runs_dir) for p in runs}))
    hint = f" (did you mean {' or '.join(map(shown, close))}?)" if close else ""
    raise RunNotFound(f"no run {text!r} (not a run directory, nor a run in {runs_dir}/){hint}")


def close_names(text: str, names: list[str], n: int = 3) -> list[str]:
    """Names that contain `text`, else those whose start (or whole) is close to it: a typo in
    `exploding` still finds `exploding_rnn-20261201-101010`, which whole-name difflib misses."""
    found = [name for name in names if text in name]
    if not found:
        def score(name: str) -> float:
            last = name.rsplit("/", 1)[-1]
            return max(difflib.SequenceMatcher(None, text, cand).ratio()
                       for cand in (name, last, last[:len(text)], name[:len(text)]))
        found = sorted((name for name in names if score(name) >= 0.6), key=score, reverse=True)
    return found[:n]


def _path_prefix(path: Path) -> list[Path]:
    """Runs whose directory path starts with `path` (`runs/exp-2` for `runs/exp-2026...`)."""
    parent = path.parent
    if parent == Path(".") or not parent.is_dir():
        return []
    return [p for p in find_runs(parent) if p.parent == parent and p.name.startswith(path.name)]

