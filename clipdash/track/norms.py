"""Gradient norms without host synchronisation.

One fused `_foreach_norm` pass gives every parameter's norm; the total is the norm of those
norms (exact for any p-norm, and the max for p = inf), exactly as `clip_grad_norm_` computes it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_norm_type(norm_type: float | str) -> float:
    value = float(norm_type)
    if not (value > 0 or math.isinf(value)) or math.isnan(value):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    return value


def per_param_norms(grads: list[Tensor], norm_type: float, out: Tensor | None = None) -> Tensor:
    """float32 vector of each gradient's norm (one kernel launch per device and dtype group).

    With `out` (a float32 vector of len(grads)), the norms are written there, allocating nothing.
    """
    if not grads:
        return torch.zeros(0) if out is None else out
    return torch.stack(torch._foreach_norm(grads, norm_type, dtype=torch.float32), out=out)


def total_from_per_param(per_param: Tensor, norm_type: float) -> Tensor:
    if per_param.numel() == 0:
        return per_param.new_zeros(())
    return torch.linalg.vector_norm(per_param, norm_type)
