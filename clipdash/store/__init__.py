"""The run record: directory layout, SQLite schema, writer, incremental reader, commands.

Nothing here imports torch or textual: the dashboard and the CLI read runs without them.
The writer (`clipdash.store.writer.RunWriter`, which needs numpy) is not imported here, so
readers start without numpy.
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

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_NAME",
    "DB_NAME",
    "SCHEMA_VERSION",
    "RunNotFound",
    "RunReader",
    "RunSummary",
    "StoreError",
    "find_runs",
    "resolve_run",
]
