"""Adaptive clipping modes (percentile / AutoClip, z-score / ZClip, AGC). Filled in by issue 5."""

from __future__ import annotations

from typing import Any

ADAPTIVE: dict[str, Any] = {}
