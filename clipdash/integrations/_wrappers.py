"""Seeing through the wrappers frameworks put around models, optimizers and schedulers.

The record must name what the user wrote: `AdamW`, not `AcceleratedOptimizer`;
`h.0.attn.c_attn.weight`, not `_orig_mod.module.h.0.attn.c_attn.weight`. And an LR change must
reach the scheduler that really computes the LR, not a wrapper that only forwards `step()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.optim import Optimizer

# (wrapper class name, the attribute holding the wrapped module): torch.compile, DDP,
# DataParallel, Lightning's strategy wrapper, FSDP1 and activation checkpointing. Matched by
# name so that none of those packages has to be imported to recognise its wrapper.
MODULE_WRAPPERS = {
    "OptimizedModule": "_orig_mod",
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "_LightningModuleWrapperBase": "_forward_module",
    "FullyShardedDataParallel": "_fsdp_wrapped_module",
    "CheckpointWrapper": "_checkpoint_wrapped_module",
}


def missing(module: str, extra: str, exc: ImportError) -> ModuleNotFoundError:
    """The error for a framework that is not installed: the one line that says how to get it."""
    return ModuleNotFoundError(f"clipdash.integrations.{extra} needs the {module!r} package, "
                               f"which is not installed: pip install 'clipdash[{extra}]' ({exc})",
                               name=module)


def _wrapped_child(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls.__name__ in MODULE_WRAPPERS:
            return MODULE_WRAPPERS[cls.__name__]
    return None


def user_facing_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`model.named_parameters()`, with every wrapper's own path segment left out.

    Only a segment that really is a wrapper's attribute is dropped: a user's own submodule called
    `module` keeps its name.
    """
    seen: set[int] = set()
    out: list[tuple[str, nn.Parameter]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                out.append((prefix + name, param))
        skip = _wrapped_child(module)
        for name, child in module.named_children():
            walk(child, prefix if name == skip else f"{prefix}{name}.")

    walk(model, "")
    return out


class NamedView(nn.Module):
    """A model as the Tracker should name it: the same parameters under user-facing names.

    The Tracker only asks its model for `named_parameters()`; this answers with the names
    `user_facing_parameters` gives, and owns nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._named = user_facing_parameters(model)

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        return iter([(prefix + name, p) for name, p in self._named])


def unwrap_optimizer(optimizer: Any) -> Optimizer:
    """The torch optimizer inside Accelerate's / Lightning's wrappers (they hold it as `.optimizer`
    or `._optimizer` and share its param_groups)."""
    seen: set[int] = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, Optimizer):
            break
        optimizer = inner
    return optimizer


def unwrap_scheduler(scheduler: Any) -> Any:
    """The LR scheduler inside Accelerate's AcceleratedScheduler (held as `.scheduler`)."""
    while scheduler is not None and type(scheduler).__name__ == "AcceleratedScheduler":
        scheduler = scheduler.scheduler
    return scheduler
