"""Placeholder: implemented by its own issue."""

from __future__ import annotations

import argparse

from clipdash.cli import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*")


def run(args: argparse.Namespace) -> int:
    raise UsageError("not implemented yet")
