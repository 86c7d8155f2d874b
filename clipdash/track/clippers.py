"""Clipping rules. Each turns this step's norms into a scale factor without leaving the device.

A clipper gets the gradients and their pre-clip norms, modifies the gradients in place, and
returns (post-clip total norm, threshold in effect). Thresholds live in device tensors so that a
change from the dashboard is a tensor fill, never a recompile or a sync.

The tracker calls `record`, which also writes post, coefficient and threshold into its staging
row; the default derives them from `apply`, and NormClipper computes them in place with the
same kernels as `clip_grad_norm_` (so its results are bit for bit those of clip_grad_norm_).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from clipdash.track.norms import per_param_norms, total_from_per_param
from clipdash.track.options import ClipOptions, check_option

# clip_grad_norm_ adds this to the total before dividing; recording the same coefficient lets a
# user compare our post-clip norms with theirs bit for bit.
EPS = 1e-6


class Clipper:
    """Base: no clipping. Subclasses override `apply`."""

    mode = "none"
    settable: tuple[str, ...] = ()

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.threshold = torch.full((), math.nan, device=device)

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        return total, self.threshold

    def record(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
               total: Tensor, norm_type: float, post: Tensor, coef: Tensor,
               threshold: Tensor) -> None:
        """Clip, then write the post-clip norm, post/pre (1 when pre is 0) and the threshold
        into the 0-d tensors `post`, `coef` and `threshold` (views of the tracker's row)."""
        post_norm, thresh = self.apply(grads, params, per_param, total, norm_type)
        post.copy_(post_norm)
        coef.copy_(torch.where(total > 0, post_norm / total, torch.ones_like(total)))
        threshold.copy_(thresh)

    # A settable key lives in the attribute of its name (a float on the host); subclasses that
    # keep a device copy refresh it in `set`.

    def set(self, key: str, value: float) -> float:
        """Change a threshold from the next step (checked as ClipOptions checks it); returns
        the old value."""
        old = self.get(key)
        setattr(self, key, float(check_option(key, value)))
        return old

    def get(self, key: str) -> float:
        if key not in self.settable:
            raise KeyError(key)
        return float(getattr(self, key))

    def state_dict(self) -> dict[str, Any]:
        return {key: self.get(key) for key in self.settable}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.settable:
            if key in state:
                self.set(key, state[key])


class NormClipper(Clipper):
    """clip_grad_norm_: scale every gradient by min(1, max_norm / (total + eps))."""

    mode = "norm"
    settable = ("max_norm",)

    def __init__(self, device: torch.device, max_norm: float) -> None:
        super().__init__(device)
        # The device tensor is what the hot path reads; the host copy is for reporting.
        self.threshold = torch.full((), float(max_norm), dtype=torch.float32, device=device)
        self.max_norm = float(max_norm)

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        post, coef, threshold = (torch.empty_like(total) for _ in range(3))
        self.record(grads, params, per_param, total, norm_type, post, coef, threshold)
        return post, threshold

    def record(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
               total: Tensor, norm_type: float, post: Tensor, coef: Tensor,
               threshold: Tensor) -> None:
        # clip_grad_norm_'s arithmetic (max_norm / (total + eps) is reciprocal() * max_norm in
        # torch), in place: the same bits as clip_grad_norm_ for 2 fewer allocations.
        torch.add(total, EPS, out=coef)
        coef.reciprocal_().mul_(self.threshold).clamp_(max=1.0)
        if grads:
            dtype = grads[0].dtype
            torch._foreach_mul_(grads, coef if dtype == coef.dtype else coef.to(dtype))
        # Derived, not recomputed: the norm of the scaled gradients is the scaled norm.
        torch.mul(total, coef, out=post)
        threshold.copy_(self.threshold)

    def set(self, key: str, value: float) -> float:
        old = super().set(key, value)
        self.threshold.fill_(self.max_norm)
        return old


class ValueClipper(Clipper):
    """clip_grad_value_: clamp every element to [-max_value, max_value]; norms are recomputed."""

    mode = "value"
    settable = ("max_value",)

    def __init__(self, device: torch.device, max_value: float) -> None:
        super().__init__(device)
        self.max_value = float(max_value)

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        if not grads:
            return total, self.threshold
        torch._foreach_clamp_min_(grads, -self.max_value)
        torch._foreach_clamp_max_(grads, self.max_value)
        return total_from_per_param(per_param_norms(grads, norm_type), norm_type), self.threshold



def make_clipper(mode: str, device: torch.device, **options: Any) -> Clipper:
    """The clipper for a `[clip] mode`, from ClipOptions keywords (checked there; what is not
    given takes ClipOptions' default). Adaptive modes register themselves in ADAPTIVE."""
    opts = ClipOptions(mode=mode, **options).resolved()
    if mode == "norm":
        return NormClipper(device, opts.max_norm)
    if mode == "value":
        return ValueClipper(device, opts.max_value)
    if mode == "none":
        return Clipper(device)
    from clipdash.track.adaptive import ADAPTIVE  # noqa: PLC0415 - adaptive modes are optional

    return ADAPTIVE[mode](device, opts)
