"""Where a run's files live, and how a user's RUN argument becomes a run directory."""

from __future__ import annotations

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


def resolve_run(run: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """A path to a run directory, or a run name (or `sweep/run`) inside `runs_dir`."""
    direct = Path(run)
    if is_run_dir(direct):
        return direct
    inside = Path(runs_dir) / run
    if is_run_dir(inside):
        return inside
    matches = [p for p in find_runs(runs_dir) if p.name == str(run)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(str(p) for p in matches)
        raise RunNotFound(f"run {str(run)!r} is ambiguous: {names}")
    raise RunNotFound(f"no run {str(run)!r} (not a run directory, nor a run in {runs_dir}/)")
