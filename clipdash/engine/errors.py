"""The engine's errors: a bad config, a run that cannot start, a checkpoint that cannot be used.

Commands turn each into exit code 2 (`clipdash.commands` translates them to UsageError), so the
engine never imports the command layer.

`clipdash run` turns a ConfigError into exit code 2 before anything is written, so the message has
to stand on its own: one line, `<file>: <dotted.key>: <problem>`, the form compilers use so editors
and humans can jump straight to the culprit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """A config problem, located by file and dotted key (`clip.max_norm`, `model.kind`)."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        # Tracebacks and TOML parser messages can span lines; the contract is one line.
        self.problem = " ".join(str(problem).split())
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.key, self.problem) if p]
        return ": ".join(parts)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Sweeps may carry errors across processes; the default reduce would pass one argument.
        return (type(self), (self.source, self.key, self.problem))


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """` (did you mean X?)` when a close match exists, else an empty string."""
    options = list(options)
    # Case slips (`sgd`, `steplr`) are the commonest typo in class names; difflib scores them low.
    folded = [o for o in options if o.lower() == word.lower()]
    matches = folded or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {matches[0]}?)" if matches else ""


class RunError(Exception):
    """A run that cannot start or resume (its directory, its lock, its state); one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class CheckpointError(RunError):
    """A checkpoint that cannot be resumed from (unreadable, unsafe, or from another setup)."""
