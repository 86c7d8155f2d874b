"""How a run clips: one options type with every mode's parameters, defaults, docs and checks.

Torch-free on purpose: the engine's config embeds `ClipOptions`, and commands may import it
without paying for torch. `control` (a lower layer) never imports it: the Tracker writes the
run's settable keys (`ClipOptions.settable()`) into the run's meta, and control reads them there.

    Tracker(model, opt, clip=ClipOptions(mode="zscore", z_threshold=3.0))
    Tracker(model, opt, clip="norm", max_norm=0.5)      # the same type, built from keywords
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self

from clipdash.track.spec import Spec, fmt, is_number

MODES = ("norm", "value", "none", "percentile", "zscore", "agc")
NONFINITE_POLICIES = ("skip", "stop", "continue")
# Parameters of each adaptive mode (the fixed modes use max_norm / max_value).
MODE_PARAMS: dict[str, tuple[str, ...]] = {
    "percentile": ("percentile", "history"),
    "zscore": ("z_threshold", "ema_alpha", "warmup_steps"),
    "agc": ("clipping", "eps"),
}
# The threshold a running run may change (`clipdash ctl RUN set KEY=VALUE`), besides lr.
MODE_SETTABLE: dict[str, tuple[str, ...]] = {
    "norm": ("max_norm",), "value": ("max_value",), "none": (),
    "percentile": ("percentile",), "zscore": ("z_threshold",), "agc": ("clipping",),
}

# Every key any run may accept, so a reader of the run can tell "unknown" from "not in this mode".
ALL_SETTABLE = (*dict.fromkeys(k for keys in MODE_SETTABLE.values() for k in keys), "lr")


class ClipOptionsError(ValueError):
    """A clip option out of range: `key` names it, str() is "key: problem" (one line)."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def _fixed(spec: Spec) -> Any:
    """A field with the spec's default; the spec is its check (thresholds live in float32
    device tensors, so `f32`: a value outside float32's normal range would clip differently
    from what the user typed)."""
    return field(default=spec.default, metadata={"spec": spec})


def _mode_param(spec: Spec) -> Any:
    """An adaptive mode's parameter: None until resolved to `spec.default` (see resolved())."""
    return field(default=None, metadata={"spec": spec})


def _threshold(default: float) -> Spec:
    return Spec(default, "float", lo=0.0, lo_open=True, f32=True)


@dataclass(frozen=True)
class ClipOptions:
    """Every clip mode's parameters; `None` means the mode's default (listed in each doc).

    The one source of the `[clip]` keys of a config (the engine's ClipConfig is this type),
    their defaults (each field's spec) and their checks (run on construction; the values are
    normalised: ints to floats, "inf" to math.inf).
    """

    mode: str = _fixed(Spec("norm", "str", choices=MODES))
    """norm | value | none, or an adaptive mode: percentile (AutoClip), zscore (ZClip), agc."""
    max_norm: float = _fixed(_threshold(1.0))
    """Total-norm threshold (mode norm; the starting/fallback threshold of percentile and
    zscore). Finite, > 0, in float32's normal range."""
    norm_type: float | str = field(default=2.0, metadata={"check": "norm_type"})
    """p of the p-norm, > 0; inf (or "inf") for the max-norm."""
    max_value: float = _fixed(_threshold(0.5))
    """Element-wise bound for mode value; same range as max_norm."""
    nonfinite: str = _fixed(Spec("skip", "str", choices=NONFINITE_POLICIES))
    """A step with an inf/nan gradient norm: skip (no update), stop (end the run), or continue
    (update anyway, as clip_grad_norm_ would)."""
    percentile: float | None = _mode_param(Spec(10.0, "float", lo=0.0, lo_open=True, hi=100.0))
    """percentile mode: clip at this percentile of past norms, 0 < p <= 100 (default 10)."""
    history: int | None = _mode_param(Spec(None, "int", lo=0, lo_open=True))
    """percentile mode: how many past norms to keep, > 0 (default: all)."""
    z_threshold: float | None = _mode_param(_threshold(2.5))
    """zscore mode: clip norms more than this many EMA std-devs above the EMA mean (2.5)."""
    ema_alpha: float | None = _mode_param(Spec(0.97, "float", lo=0.0, hi=1.0, lo_open=True,
                                               hi_open=True))
    """zscore mode: EMA decay, 0 < a < 1 (0.97)."""
    warmup_steps: int | None = _mode_param(Spec(25, "int", lo=0))
    """zscore mode: steps clipped at max_norm while statistics are collected, >= 0 (25)."""
    clipping: float | None = _mode_param(_threshold(0.01))
    """agc mode: max ratio of gradient norm to parameter norm, > 0 (0.01)."""
    eps: float | None = _mode_param(_threshold(1e-3))
    """agc mode: floor on the parameter norm so zero-initialised weights can move (1e-3)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ClipOptionsError (one line naming the option) for anything out of range;
        store each value normalised (the dataclass is frozen: set through object)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("check") == "norm_type":
                value = _norm_type(value)
            elif "spec" in f.metadata and value is not None:
                value = _checked(f.name, f.metadata["spec"], value)
            object.__setattr__(self, f.name, value)
        for mode, keys in MODE_PARAMS.items():
            for key in keys:
                if mode != self.mode and getattr(self, key) is not None:
                    raise ClipOptionsError(key, f"only used by mode {fmt(mode)}, "
                                                f"not {fmt(self.mode)}")

    def resolved(self) -> Self:
        """The same options with this mode's parameters left out set to their defaults."""
        return replace(self, **{k: _SPECS[k].default for k in MODE_PARAMS.get(self.mode, ())
                                if getattr(self, k) is None})

    @property
    def norm_value(self) -> float:
        return float(self.norm_type)  # normalised by check(): a float, math.inf for "inf"

    def adaptive(self) -> dict[str, Any]:
        """The adaptive mode's own parameters that are set (empty for norm/value/none)."""
        return {k: getattr(self, k) for k in MODE_PARAMS.get(self.mode, ())
                if getattr(self, k) is not None}

    def settable(self) -> tuple[str, ...]:
        """Keys `clipdash ctl RUN set KEY=VALUE` may change on a run with these options."""
        return (*MODE_SETTABLE[self.mode], "lr")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def build(cls, clip: str | ClipOptions = "norm", extra: dict[str, Any] | None = None,
              **given: Any) -> ClipOptions:
        """From the Tracker's keywords: a mode name (or ClipOptions) plus options by name.

        Unknown names raise ClipOptionsError naming them.
        """
        known = {f.name for f in fields(cls)}
        options = dict(extra or {}, **given)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ClipOptionsError(None, f"unknown clip option(s): {', '.join(unknown)}")
        if isinstance(clip, ClipOptions):
            return replace(clip, **options) if options else clip
        return cls(mode=clip, **options)


def check_option(key: str, value: Any) -> Any:
    """One option's check (a threshold set on a running run, or restored from a checkpoint):
    the normalised value, or ClipOptionsError naming `key`."""
    return _checked(key, _SPECS[key], value)


def _checked(key: str, spec: Spec, value: Any) -> Any:
    """`spec.check(value)` as a ClipOptionsError naming `key`. Python callers may pass numpy
    scalars (any numbers.Real); a config's TOML values are plain int / float already."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool | int | float):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
    try:
        return spec.check(value)
    except ValueError as exc:
        raise ClipOptionsError(key, str(exc)) from None


def _norm_type(value: Any) -> float:
    """A number > 0 or inf ("inf" or "+inf" as a string, as TOML has no bare inf in strings)."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf"):
        return math.inf
    if isinstance(value, numbers.Real) and not isinstance(value, bool | int | float):
        value = float(value)
    if not is_number(value) or math.isnan(value):
        raise ClipOptionsError("norm_type", f"expected a number or \"inf\", got {fmt(value)}")
    if value <= 0:
        raise ClipOptionsError("norm_type", f"must be > 0 (or inf), got {fmt(value)}")
    return float(value)


_SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in fields(ClipOptions)
                           if "spec" in f.metadata}
