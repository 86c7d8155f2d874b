"""Typed option specs: one accepted value's default and check, torch-free.

Shared by the clip options (track/options.py), whose checks must read exactly like the engine's
config checks (`clip.max_norm: must be > 0, got 0.0`), and by the engine's config tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


def fmt(value: Any) -> str:
    """A value as it would be written in TOML, for error messages (`"ten"`, `true`, `1.5`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def is_int(value: Any) -> bool:
    """TOML integers only: `true` is not 1 here, whatever Python thinks."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a float32 device tensor can hold: a threshold or LR outside it becomes inf or rounds to
# 0 (or a subnormal) on the device while the record shows the value asked for.
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38  # smallest normal float32
# Integers end up in torch (int64) and SQLite (signed 64-bit): anything larger cannot be stored.
INT64_MAX = 2**63 - 1


def check_f32(value: float) -> None:
    """ValueError unless `value` is 0 or a float32 normal number in magnitude."""
    if value != 0 and not F32_TINY <= abs(value) <= F32_MAX:
        raise ValueError(f"{value:g} is outside the float32 range the device holds "
                         f"({F32_TINY:.3g} to {F32_MAX:.3g})")


@dataclass(frozen=True)
class Spec:
    """One accepted keyword: its default and how to check a given value.

    `kind` is int | float | bool | str | ints (an int or a non-empty list of ints). `lo`/`hi`
    bound numbers (`lo_open`/`hi_open` make the bound strict); `choices` restricts values.
    `check` returns the normalised value (floats from ints) or raises ValueError with the problem.
    """

    default: Any
    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    f32: bool = False
    """The value is held in a float32 device tensor: it must fit (see check_f32)."""

    def check(self, value: Any) -> Any:
        if self.kind == "ints":
            items = value if isinstance(value, list) else [value]
            if not items or not all(is_int(v) for v in items):
                raise ValueError(f"expected an integer or a list of integers, got {fmt(value)}")
            for v in items:
                self._bounds(v)
            return list(value) if isinstance(value, list) else value
        if self.kind == "int":
            if not is_int(value):
                raise ValueError(f"expected an integer, got {fmt(value)}")
        elif self.kind == "float":
            if not is_number(value):
                raise ValueError(f"expected a number, got {fmt(value)}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"must be finite, got {fmt(value)}")
            if self.f32:
                check_f32(value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {fmt(value)}")
        elif self.kind == "str" and not isinstance(value, str):
            raise ValueError(f"expected a string, got {fmt(value)}")
        if self.choices is not None and value not in self.choices:
            allowed = " | ".join(str(c) for c in self.choices)
            raise ValueError(f"must be one of {allowed}, got {fmt(value)}")
        if self.kind in ("int", "float"):
            self._bounds(value)
        return value

    def _bounds(self, v: float) -> None:
        if self.kind in ("int", "ints") and self.hi is None and abs(v) > INT64_MAX:
            raise ValueError(f"must be below 2**63, got {fmt(v)}")
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise ValueError(f"must be {'>' if self.lo_open else '>='} {_bound(self.lo)}, "
                             f"got {fmt(v)}")
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            raise ValueError(f"must be {'<' if self.hi_open else '<='} {_bound(self.hi)}, "
                             f"got {fmt(v)}")


def _bound(b: float) -> str:
    return str(b) if isinstance(b, int) else f"{b:g}"
