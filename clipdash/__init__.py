"""clipdash: see and steer gradient clipping and learning-rate schedules while PyTorch trains.

`Tracker` is imported lazily so that `import clipdash` (and the dashboard, which imports
`clipdash.store`) never pays for `import torch`. `ClipOptions` (torch-free) is lazy too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ClipOptions", "PendingCheckpoint", "Tracker", "__version__"]

if TYPE_CHECKING:
    from clipdash.track.options import ClipOptions
    from clipdash.track.tracker import PendingCheckpoint, Tracker


def __getattr__(name: str) -> Any:
    if name in ("Tracker", "PendingCheckpoint"):
        from clipdash.track import tracker

        return getattr(tracker, name)
    if name == "ClipOptions":
        from clipdash.track.options import ClipOptions

        return ClipOptions
    raise AttributeError(f"module 'clipdash' has no attribute {name!r}")
