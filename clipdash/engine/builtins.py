"""The keyword arguments each built-in model and data kind accepts, with defaults and checks.

This is the single source of truth shared by config validation (which must reject `hiden = 64`
before torch is even imported) and by models.py / data.py (which read the resolved values). It is
torch-free on purpose: loading and checking a config should not pay for `import torch`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from clipdash.track.spec import (  # noqa: F401 - re-exported: the engine's config checks
    F32_MAX,
    F32_TINY,
    INT64_MAX,
    Spec,
    check_f32,
    fmt,
    is_int,
    is_number,
)


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
