"""Run names: what a user may call a run, and the default name when they don't.

A run name is one or more path components *inside* the runs directory (`exp1`, `sweep/lr=0.1`).
Run directories are copied around and names arrive from the command line, configs and sweeps,
so a name is checked before it touches the file system: no `..`, no absolute path, no empty or
`.` component, no control characters (they would rewrite the terminal in `ls` and `watch`), and
no component longer than the file system allows.
"""

from __future__ import annotations

import os
import time
import unicodedata

# The common NAME_MAX (ext4, xfs, tmpfs, btrfs); os.pathconf gives the real one where it can.
DEFAULT_NAME_MAX = 255
MAX_DEPTH = 8  # `sweep/run` needs two; a deeper name is almost certainly a mistake


def _name_max(base: str | os.PathLike[str] | None) -> int:
    probe = os.fspath(base) if base is not None else "."
    while probe and not os.path.isdir(probe):  # the runs dir may not exist yet
        parent = os.path.dirname(probe.rstrip(os.sep))
        if parent == probe:
            break
        probe = parent
    try:
        return int(os.pathconf(probe or ".", "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def _bad_char(text: str) -> str | None:
    for ch in text:
        if unicodedata.category(ch)[0] == "C":  # Cc control, Cf format (bidi overrides), Cs, Co
            return f"U+{ord(ch):04X}"
    return None


def check_run_name(name: str, runs_dir: str | os.PathLike[str] | None = None) -> str:
    """`name` normalised (`a//b/` -> `a/b`) if it is a safe run name; ValueError otherwise.

    The error message is one line that names the problem and shows the name escaped.
    `runs_dir`, when given, is only used to ask its file system for the longest allowed name.
    """
    if not isinstance(name, str):
        raise ValueError(f"run name must be a string, got {type(name).__name__}")
    shown = ascii(name)
    if not name.strip():
        raise ValueError("run name is empty")
    bad = _bad_char(name)
    if bad is not None:
        raise ValueError(f"run name {shown} contains a control character ({bad})")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"run name {shown} is an absolute path: give a name inside the runs "
                         "directory")
    if "\\" in name:
        raise ValueError(f"run name {shown} contains a backslash")
    parts = name.split("/")
    while parts and parts[-1] == "":  # a trailing slash is harmless
        parts.pop()
    limit = _name_max(runs_dir)
    for part in parts:
        if part in ("", ".", ".."):
            what = "an empty" if part == "" else f"a {part!r}"
            raise ValueError(f"run name {shown} has {what} path component: a run name is one "
                             "or more plain names inside the runs directory")
        if part != part.strip():
            raise ValueError(f"run name {shown}: a path component starts or ends with a space")
        if len(part.encode("utf-8", "surrogateescape")) > limit:
            raise ValueError(f"run name {shown[:40]}...: a path component is longer than the "
                             f"file system allows ({limit} bytes)")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"run name {shown} has more than {MAX_DEPTH} path components")
    return "/".join(parts)


def default_run_name(prefix: str = "run") -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>`: the one default name for runs, lr-find tests and Trackers."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
