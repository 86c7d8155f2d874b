"""The one JSON convention of every clipdash output: strict JSON, with inf and NaN as strings.

`ls --json`, `compare --json`, `export --format jsonl`, `suggest --json` and a sweep's
`results.json` write a non-finite float as the string "inf", "-inf" or "nan" (JSON has no such
numbers; Python's `Infinity` is rejected by `JSON.parse` and `jq`). A number is always finite, a
missing value is null, so inf, NaN and "not recorded" stay distinguishable.

A leaf module: it imports nothing from clipdash, so any layer may use it.
"""

from __future__ import annotations

import json
import math
from typing import Any

NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode_float(value: float) -> float | str:
    """A finite float as itself; inf, -inf and NaN as "inf", "-inf", "nan"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float (in dicts, lists and tuples too) encoded as a string."""
    if isinstance(obj, float):
        return encode_float(obj)
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps under the convention; raises ValueError rather than write invalid JSON."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def decode_float(value: Any) -> Any:
    """The inverse for one value: "inf", "-inf", "nan" back to floats, anything else as is."""
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    return value
