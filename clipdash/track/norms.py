"""Gradient norms without host synchronisation.

One fused `_foreach_norm` pass gives every parameter's norm; the total is the norm of those
norms (exact for any p-norm, and the max for p = inf), exactly as `clip_grad_norm_` computes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

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


class ShardedNorms:
    """Global per-parameter norms of FSDP2 (DTensor) gradients from the local shards.

    Each rank measures its shards; the p-th powers of the local norms are summed over the
    ranks in one all-reduce (the max for p = inf), as `torch.nn.utils.get_total_norm` reduces
    a DTensor's partial norm. A gradient replicated over some mesh dimensions (or a plain
    tensor, held whole by every rank) is counted once by dividing its power by the number of
    copies. The reduction runs in float64: p-th powers of large norms overflow float32.
    """

    def __init__(self, params: Sequence[Tensor], device: torch.device) -> None:
        import torch.distributed as dist  # noqa: PLC0415 - only a sharded model needs it

        world = dist.get_world_size()
        copies = [_copies(p, world) for p in params]
        self.weights = (torch.tensor([1.0 / c for c in copies], dtype=torch.float64,
                                     device=device) if any(c != 1 for c in copies) else None)
        self._dist = dist

    def reduce_(self, per_param: Tensor, norm_type: float) -> Tensor:
        """Replace the local norms in `per_param` (one per column) by the global ones."""
        dist = self._dist
        if math.isinf(norm_type):
            dist.all_reduce(per_param, op=dist.ReduceOp.MAX)
            return per_param
        powers = per_param.double().pow_(norm_type)
        if self.weights is not None:
            powers.mul_(self.weights)
        dist.all_reduce(powers, op=dist.ReduceOp.SUM)
        return per_param.copy_(powers.pow_(1.0 / norm_type))


def is_sharded(params: Sequence[Tensor]) -> bool:
    """True if any parameter is a DTensor (a `fully_shard`ed model)."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)


def local_shards(grads: Sequence[Tensor]) -> list[Tensor]:
    """This rank's shards of DTensor gradients (views: scaling them scales the gradient)."""
    dtensor = _dtensor_type()
    # `_local_tensor` is the shard itself; `to_local()` would add an autograd node per call.
    return [cast(Any, g)._local_tensor if dtensor is not None and isinstance(g, dtensor) else g
            for g in grads]


def _copies(param: Tensor, world: int) -> int:
    """How many ranks hold each element of `param`'s gradient."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(param, dtensor):
        return world
    mesh, copies = getattr(param, "device_mesh"), 1  # noqa: B009 - a DTensor's, untyped
    for dim, placement in enumerate(getattr(param, "placements")):  # noqa: B009
        if placement.is_replicate():
            copies *= mesh.size(dim)
    return copies


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor  # noqa: PLC0415
    except ImportError:  # a torch built without distributed
        return None
    return DTensor
