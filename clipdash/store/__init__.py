"""The run record: directory layout, SQLite schema, writer, incremental reader, commands.

Nothing here imports torch or textual: the dashboard and the CLI read runs without them.
"""

from clipdash.store.layout import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    DB_NAME,
    RunNotFound,
    find_runs,
    resolve_run,
)
from clipdash.store.reader import RunReader, RunSummary
from clipdash.store.schema import SCHEMA_VERSION, StoreError
from clipdash.store.writer import RunWriter

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_NAME",
    "DB_NAME",
    "SCHEMA_VERSION",
    "RunNotFound",
    "RunReader",
    "RunSummary",
    "RunWriter",
    "StoreError",
    "find_runs",
    "resolve_run",
]
