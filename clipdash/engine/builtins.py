"""The keyword arguments each built-in model and data kind accepts, with defaults and checks.

This is the single source of truth shared by config validation (which must reject `hiden = 64`
before torch is even imported) and by models.py / data.py (which read the resolved values). It is
torch-free on purpose: loading and checking a config should not pay for `import torch`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
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


def _pos_int(default: int, doc: str = "") -> Spec:
    return Spec(default, "int", lo=0, lo_open=True, doc=doc)


_FRACTION = Spec(0.2, "float", lo=0.0, hi=1.0, hi_open=True, doc="share held out for validation")
_N = _pos_int(2048, "number of generated samples (train + validation)")

_RECURRENT = {
    "hidden": _pos_int(128, "hidden units per layer"),
    "layers": _pos_int(1, "stacked recurrent layers"),
    "init": Spec("default", "str", choices=("default", "orthogonal", "scaled"),
                 doc="recurrent weight init: torch default, orthogonal, or rescaled to a spectral "
                     "radius of init_scale"),
    "init_scale": Spec(1.0, "float", lo=0.0, lo_open=True,
                       doc="gain on the recurrent weights; > 1 makes a vanilla RNN explode"),
}

MODEL_KWARGS: dict[str, dict[str, Spec]] = {
    "mlp": {
        "hidden": Spec([64, 64], "ints", lo=0, lo_open=True, doc="hidden layer widths"),
        "activation": Spec("relu", "str", choices=("relu", "tanh", "gelu")),
        "batchnorm": Spec(False, "bool", doc="BatchNorm1d after each hidden Linear"),
        "dropout": Spec(0.0, "float", lo=0.0, hi=1.0, hi_open=True),
    },
    "rnn": {**_RECURRENT, "nonlinearity": Spec("tanh", "str", choices=("tanh", "relu"))},
    "lstm": dict(_RECURRENT),
    "gru": dict(_RECURRENT),
    "transformer": {
        "d_model": _pos_int(64, "embedding width; must be divisible by heads"),
        "heads": _pos_int(4, "attention heads"),
        "layers": _pos_int(2, "encoder layers"),
        "ff": _pos_int(128, "feed-forward width"),
        "dropout": Spec(0.0, "float", lo=0.0, hi=1.0, hi_open=True),
    },
}

DATA_KWARGS: dict[str, dict[str, Spec]] = {
    "regression": {
        "n_samples": _N,
        "input_dim": _pos_int(10),
        "output_dim": _pos_int(1),
        "noise": Spec(0.1, "float", lo=0.0, doc="std of Gaussian noise added to the targets"),
        "val_fraction": _FRACTION,
    },
    "classification": {
        "n_samples": _N,
        "input_dim": _pos_int(20),
        "n_classes": Spec(4, "int", lo=2),
        "val_fraction": _FRACTION,
    },
    "addition": {
        "seq_len": Spec(50, "int", lo=2),
        "n_samples": _N,
        "val_fraction": _FRACTION,
    },
    "temporal_order": {
        "seq_len": Spec(50, "int", lo=10, doc="needs room for start/end markers and the windows"),
        "n_samples": _N,
        "n_classes": Spec(4, "int", choices=(4, 8), doc="4: two relevant symbols, 8: three"),
        "val_fraction": _FRACTION,
    },
}

# The loss each built-in data kind implies, so `[train] loss` can be left out.
DATA_LOSS: dict[str, str] = {
    "regression": "mse",
    "classification": "cross_entropy",
    "addition": "mse",
    "temporal_order": "cross_entropy",
}


def defaults(table: dict[str, Spec]) -> dict[str, Any]:
    """Fresh copies of the defaults (lists must not be shared between configs)."""
    return {k: (list(s.default) if isinstance(s.default, list) else s.default)
            for k, s in table.items()}


def is_plugin(kind: str) -> bool:
    """`pkg.mod:factory` names a plug-in; anything else must be a built-in."""
    return ":" in kind


def import_factory(spec: str) -> Callable[..., Any]:
    """Import `pkg.mod:factory` with the current directory importable, as documented.

    Raises ValueError with a one-line reason; callers attach the config key.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected \"package.module:factory\", got {fmt(spec)}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # the module may have been written moments ago
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure (even a SyntaxError) is a config problem
        raise ValueError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec} is not callable")
    return obj
