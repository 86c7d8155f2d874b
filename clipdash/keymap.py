"""The dashboard's keys, as `clipdash watch --help` and the help screen list them.

Torch- and textual-free on purpose: `--help` must not pay for importing the dashboard, and the
help screen can render the same table so the two never disagree.
"""

from __future__ import annotations

DASHBOARD_KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓, mouse", "select a run"),
    ("Enter", "open the run view (on a sweep's header: fold it)"),
    ("← →", "scroll the run list's columns (the names stay)"),
    ("Esc", "back (and clears the filter in the list)"),
    ("p", "pause / resume"),
    ("m", "set max_norm"),
    ("l", "set the learning rate"),
    ("s", "stop (asks for confirmation: y / n)"),
    ("r", "rewind to the checkpoint before the latest alert (asks: y / n)"),
    ("space", "mark a run for comparing"),
    ("c", "compare the marked runs"),
    ("/", "filter runs by name or status"),
    ("1 2 3 4", "run view tabs: plots, params, events, config"),
    ("y", "y scale: auto, log, linear"),
    ("n", "compare view: next metric"),
    ("?", "help"),
    ("q", "quit"),
)
