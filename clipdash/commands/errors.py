"""The error every subcommand raises for bad usage; `clipdash.cli` turns it into exit code 2.

It lives below the CLI so that subcommands never import `clipdash.cli` back.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad usage or bad input: exit code 2 with a one-line message."""
