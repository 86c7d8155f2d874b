"""How a run clips: one options type with every mode's parameters, defaults, docs and checks.

Torch-free on purpose: the engine's config embeds `ClipOptions`, and commands may import it
without paying for torch. `control` (a lower layer) never imports it: the Tracker writes the
run's settable keys (`ClipOptions.settable()`) into the run's meta, and control reads them there.

    Tracker(model, opt, clip=ClipOptions(mode="zscore", z_threshold=3.0))
    Tracker(model, opt, clip="norm", max_norm=0.5)      # the same type, built from keywords
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MODES = ("norm", "value", "none", "percentile", "zscore", "agc")
NONFINITE_POLICIES = ("skip", "stop", "continue")
# Thresholds live in float32 device tensors. A value outside float32's normal range would
# become inf or a denormal (or 0) there and clip differently from what the user typed.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_MIN_NORMAL = 1.1754943508222875e-38
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
    """A clip option out of range; str() names the option and the value."""


def check_threshold(key: str, value: Any) -> float:
    """A finite float32-representable number > 0 (normal range), or ClipOptionsError."""
    if isinstance(value, bool):
        raise ClipOptionsError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ClipOptionsError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ClipOptionsError(f"{key} must be a finite number > 0, got {value!r}")
    if not FLOAT32_MIN_NORMAL <= number <= FLOAT32_MAX:
        raise ClipOptionsError(f"{key} must lie in float32's normal range "
                               f"[{FLOAT32_MIN_NORMAL:.3g}, {FLOAT32_MAX:.4g}], got {value!r}")
    return number


@dataclass(frozen=True)
class ClipOptions:
    """Every clip mode's parameters; `None` means the mode's default (listed in each doc)."""

    mode: str = "norm"
    """norm | value | none, or an adaptive mode: percentile (AutoClip), zscore (ZClip), agc."""
    max_norm: float = 1.0
    """Total-norm threshold (mode norm; the starting/fallback threshold of percentile and
    zscore). Finite, > 0, in float32's normal range."""
    norm_type: float | str = 2.0
    """p of the p-norm, > 0; inf (or "inf") for the max-norm."""
    max_value: float = 0.5
    """Element-wise bound for mode value; same range as max_norm."""
    nonfinite: str = "skip"
    """A step with an inf/nan gradient norm: skip (no update), stop (end the run), or continue
    (update anyway, as clip_grad_norm_ would)."""
    percentile: float | None = None
    """percentile mode: clip at this percentile of past norms, 0 < p <= 100 (default 10)."""
    history: int | None = None
    """percentile mode: how many past norms to keep, > 0 (default: all)."""
    z_threshold: float | None = None
    """zscore mode: clip norms more than this many EMA std-devs above the EMA mean (2.5)."""
    ema_alpha: float | None = None
    """zscore mode: EMA decay, 0 < a < 1 (0.97)."""
    warmup_steps: int | None = None
    """zscore mode: steps clipped at max_norm while statistics are collected, >= 0 (25)."""
    clipping: float | None = None
    """agc mode: max ratio of gradient norm to parameter norm, > 0 (0.01)."""
    eps: float | None = None
    """agc mode: floor on the parameter norm so zero-initialised weights can move (1e-3)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ClipOptionsError (one line naming the option) for anything out of range."""
        if self.mode not in MODES:
            raise ClipOptionsError(f"clip mode must be one of {', '.join(MODES)}, "
                                   f"got {self.mode!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ClipOptionsError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, "
                                   f"got {self.nonfinite!r}")
        check_threshold("max_norm", self.max_norm)
        check_threshold("max_value", self.max_value)
        p = self.norm_value
        if math.isnan(p) or not (p > 0):
            raise ClipOptionsError(f"norm_type must be > 0 or inf, got {self.norm_type!r}")
        if self.percentile is not None and not 0 < float(self.percentile) <= 100:
            raise ClipOptionsError(f"percentile must be in (0, 100], got {self.percentile!r}")
        if self.history is not None and int(self.history) <= 0:
            raise ClipOptionsError(f"history must be > 0, got {self.history!r}")
        if self.ema_alpha is not None and not 0 < float(self.ema_alpha) < 1:
            raise ClipOptionsError(f"ema_alpha must be in (0, 1), got {self.ema_alpha!r}")
        if self.warmup_steps is not None and int(self.warmup_steps) < 0:
            raise ClipOptionsError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        for key in ("z_threshold", "clipping", "eps"):
            if getattr(self, key) is not None:
                check_threshold(key, getattr(self, key))

    @property
    def norm_value(self) -> float:
        try:
            return float(self.norm_type)
        except (TypeError, ValueError):
            raise ClipOptionsError(f"norm_type must be a number or inf, "
                                   f"got {self.norm_type!r}") from None

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
            raise ClipOptionsError(f"unknown clip option(s): {', '.join(unknown)}")
        if isinstance(clip, ClipOptions):
            return replace(clip, **options) if options else clip
        return cls(mode=clip, **options)
