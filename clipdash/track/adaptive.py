"""Adaptive clipping modes: percentile (AutoClip), zscore (ZClip) and agc (NFNets' unit-wise AGC).

Each is a `Clipper` (see clippers.py): it scales the gradients in place and returns the post-clip
total norm and the threshold in effect, which the tracker records as `max_norm` for that step.
Like the fixed mode they never read a device value on the host: the norm history is a device
ring buffer indexed by a host-side step counter, statistics are device tensors, and every
decision is a `torch.where`. Only `state_dict()` (checkpoints) copies state to the host.

Rules, as implemented (the tests recompute each with numpy on the same norms):

percentile (Seetharaman et al. 2020, "AutoClip"):
    history = the finite pre-clip total norms of the last `history` steps, INCLUDING the current
    step (as AutoClip's reference code appends before taking the percentile); non-finite norms
    leave a gap. `history` absent keeps every step, up to ALL_HISTORY_CAP steps (then the most
    recent ones). threshold = numpy-style linear-interpolated p-th percentile of that history
    (`max_norm` until a finite norm has been seen). Gradients are scaled by threshold / (norm +
    1e-6) when norm > threshold.

zscore (Kumar et al. 2025, "ZClip"):
    The first `warmup_steps` steps clip at the fixed `max_norm` (as ZClip's reference does) and
    collect their finite norms; then mean = their mean, var = their population variance. From
    then on, threshold = mean + z_threshold * sqrt(var); a norm above it is clipped to it
    (ZClip's "clip to the boundary"; its reciprocal "adaptive_scaling" variant is not used). The
    EMA is then updated with the norm after clipping, g' = min(norm, threshold):
        mean <- a * mean + (1 - a) * g'
        var  <- a * var  + (1 - a) * (g' - mean)^2      (the updated mean, as in ZClip)
    with a = ema_alpha. Non-finite norms leave the statistics untouched.

agc (Brock et al. 2021, NFNets, "adaptive gradient clipping"):
    Unit-wise: a unit is a row of a parameter in PyTorch layout (an output unit of a Linear, an
    output channel of a conv: dim 0, reducing over the others); a bias or other vector (and a
    scalar) is a single unit, as in the paper's reference code. For each unit,
        bound = clipping * max(||W_unit||, eps)
        g_unit <- g_unit * bound / max(||g_unit||, 1e-6)   when ||g_unit|| >= bound
    Norms are `norm_type` norms (2: Frobenius, as in the paper). There is no single threshold, so
    the recorded max_norm is the norm of all units' bounds: the total gradient norm at which
    every unit would sit exactly on its bound (a total norm above it means some unit was clipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from clipdash.track.clippers import EPS, Clipper
from clipdash.track.options import ClipOptions

ALL_HISTORY_CAP = 1 << 16  # "all" history: at most this many recent norms
_FIRST_CAPACITY = 256  # an unbounded history starts this small and doubles (host-side decision)
AGC_MIN_GRAD_NORM = 1e-6  # the paper's reference code: max(||g||, 1e-6) in the divisor


def _scale(total: Tensor, threshold: Tensor) -> Tensor:
    """The clip coefficient: 1 unless the norm is strictly above the threshold (NaN: never)."""
    return torch.where(total > threshold, threshold / (total + EPS), torch.ones_like(total))


def _apply_coef(grads: list[Tensor], coef: Tensor) -> None:
    if grads:
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))


class PercentileClipper(Clipper):
    """AutoClip: clip at the p-th percentile of the recent pre-clip norms (current included)."""

    mode = "percentile"
    settable = ("percentile",)

    def __init__(self, device: torch.device, options: ClipOptions) -> None:
        super().__init__(device)
        self.percentile = float(options.percentile)  # type: ignore[arg-type]
        self.window = options.history
        self.cap = self.window if self.window is not None else ALL_HISTORY_CAP
        self.fallback = torch.full((), options.max_norm, dtype=torch.float32, device=device)
        self.count = 0  # steps seen (host-side: indexing the ring never reads the device)
        self.buf = torch.full((self._capacity_for(1),), math.nan, device=device)

    def _capacity_for(self, n: int) -> int:
        if self.window is not None:
            return self.window
        size = _FIRST_CAPACITY
        while size < n and size < self.cap:
            size *= 2
        return min(size, self.cap)

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        need = self._capacity_for(self.count + 1)
        if need > self.buf.numel():  # grow an unbounded history: a host decision on a host int
            grown = torch.full((need,), math.nan, device=self.device)
            grown[: self.buf.numel()] = self.buf
            self.buf = grown
        value = total.detach().to(torch.float32)
        self.buf[self.count % self.buf.numel()] = torch.where(
            torch.isfinite(value), value, torch.full_like(value, math.nan))
        self.count += 1
        q = torch.nanquantile(self.buf, self.percentile / 100.0)
        threshold = torch.where(torch.isnan(q), self.fallback, q)
        coef = _scale(total, threshold)
        _apply_coef(grads, coef)
        self.threshold = threshold
        return total * coef, threshold

    def history(self) -> Tensor:
        """The norms currently in the window (NaN gaps removed), oldest first; for tests/tools."""
        n = self.buf.numel()
        if self.count <= n:
            ordered = self.buf[: self.count]
        else:
            start = self.count % n
            ordered = torch.cat([self.buf[start:], self.buf[:start]])
        return ordered[~torch.isnan(ordered)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "count": self.count, "buf": self.buf.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "buf" in state:
            self.buf = state["buf"].to(self.device, torch.float32, copy=True)
            self.count = int(state["count"])


class ZScoreClipper(Clipper):
    """ZClip: clip norms more than z_threshold EMA standard deviations above the EMA mean."""

    mode = "zscore"
    settable = ("z_threshold",)

    def __init__(self, device: torch.device, options: ClipOptions) -> None:
        super().__init__(device)
        self.z_threshold = float(options.z_threshold)  # type: ignore[arg-type]
        self.alpha = float(options.ema_alpha)  # type: ignore[arg-type]
        self.warmup_steps = int(options.warmup_steps)  # type: ignore[arg-type]
        self.max_norm = torch.full((), options.max_norm, dtype=torch.float32, device=device)
        self.warm = torch.full((max(1, self.warmup_steps),), math.nan, device=device)
        self.mean = torch.full((), math.nan, device=device)
        self.var = torch.full((), math.nan, device=device)
        self.count = 0

    def _start_statistics(self) -> None:
        # NaN when no warmup norm was finite: the first finite norm then starts the EMA.
        warm = self.warm[: self.warmup_steps]
        self.mean = torch.nanmean(warm) if self.warmup_steps else self.mean
        self.var = torch.nanmean((warm - self.mean) ** 2) if self.warmup_steps else self.var

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        value = total.detach().to(torch.float32)
        finite = torch.isfinite(value)
        if self.count < self.warmup_steps:
            self.warm[self.count] = torch.where(finite, value, torch.full_like(value, math.nan))
            threshold = self.max_norm
        else:
            if self.count == self.warmup_steps:
                self._start_statistics()
            threshold = self.mean + self.z_threshold * torch.sqrt(self.var)
            clipped_norm = torch.where(value > threshold, threshold, value)
            fresh = torch.isnan(self.mean)
            a = self.alpha
            mean = torch.where(fresh, clipped_norm, a * self.mean + (1 - a) * clipped_norm)
            var = torch.where(fresh, torch.zeros_like(value),
                              a * self.var + (1 - a) * (clipped_norm - mean) ** 2)
            self.mean = torch.where(finite, mean, self.mean)
            self.var = torch.where(finite, var, self.var)
        self.count += 1
        coef = _scale(total, threshold)
        _apply_coef(grads, coef)
        self.threshold = threshold
        return total * coef, threshold

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "count": self.count, "warm": self.warm.cpu().clone(),
                "mean": self.mean.cpu().clone(), "var": self.var.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "count" in state:
            self.count = int(state["count"])
            self.warm = state["warm"].to(self.device, torch.float32, copy=True)
            self.mean = state["mean"].to(self.device, torch.float32, copy=True)
            self.var = state["var"].to(self.device, torch.float32, copy=True)


def unit_view(t: Tensor) -> Tensor:
    """[units, elements]: rows (dim 0) of a matrix or conv kernel; a vector is one unit."""
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)


def _broadcast_shape(t: Tensor) -> tuple[int, ...]:
    """The shape a per-unit vector needs to broadcast over `t` (see unit_view)."""
    return (t.shape[0],) + (1,) * (t.dim() - 1) if t.dim() > 1 else ()


class AGCClipper(Clipper):
    """Unit-wise adaptive gradient clipping: ||g_unit|| <= clipping * max(||W_unit||, eps)."""

    mode = "agc"
    settable = ("clipping",)

    def __init__(self, device: torch.device, options: ClipOptions) -> None:
        super().__init__(device)
        self.clipping = float(options.clipping)  # type: ignore[arg-type]
        self.eps = float(options.eps)  # type: ignore[arg-type]

    def apply(self, grads: list[Tensor], params: Sequence[Tensor], per_param: Tensor,
              total: Tensor, norm_type: float) -> tuple[Tensor, Tensor]:
        if not grads:
            return total, self.threshold
        post_per_param, bound_per_param = [], []
        for g, p in zip(grads, params, strict=True):
            w_norm = torch.linalg.vector_norm(unit_view(p.detach()), norm_type, dim=1,
                                              dtype=torch.float32)
            g_norm = torch.linalg.vector_norm(unit_view(g), norm_type, dim=1,
                                              dtype=torch.float32)
            bound = self.clipping * torch.clamp(w_norm, min=self.eps)
            scale = torch.where(g_norm < bound, torch.ones_like(g_norm),
                                bound / torch.clamp(g_norm, min=AGC_MIN_GRAD_NORM))
            g.mul_(scale.to(g.dtype).reshape(_broadcast_shape(g)))
            post_per_param.append(torch.linalg.vector_norm(g_norm * scale, norm_type))
            bound_per_param.append(torch.linalg.vector_norm(bound, norm_type))
        post = torch.linalg.vector_norm(torch.stack(post_per_param), norm_type)
        threshold = torch.linalg.vector_norm(torch.stack(bound_per_param), norm_type)
        self.threshold = threshold.to(self.device)
        return post.to(total.device), self.threshold



ADAPTIVE: dict[str, Any] = {
    "percentile": PercentileClipper,
    "zscore": ZScoreClipper,
    "agc": AGCClipper,
}
