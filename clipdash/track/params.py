"""Which parameters a Tracker clips and records, and noticing when that set changes.

The set is every parameter of every optimizer given (unfreezing, freezing and
`add_param_group` included), measured in model order so that the total norm is the one
`clip_grad_norm_(model.parameters())` computes, bit for bit, whatever the param-group order.

Columns: each parameter gets a column of the per-step norm blob the first time it is seen
trainable (requires_grad, or holding a gradient); columns are never reused or reordered, so a
parameter that appears at step k has a series from step k. Costs per step:
- `changed()`: one tuple of (id, len) per param group (add_param_group, load_state_dict);
- `scan_pending()`: one `.grad is not None` per optimizer parameter never seen trainable (none
  in a run that trains everything); a parameter unfrozen with `requires_grad_` is noticed when
  its first gradient arrives, i.e. at the `clip()` of the step that would apply it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

Signature = tuple[tuple[int, int, int], ...]
NO_GROUP: dict[str, Any] = {"lr": math.nan}


class ParamSet:
    """The tracked parameters: columns (blob order), the measured order, and the LR groups.

    LR groups are numbered in the order first seen: the groups of the first optimizer, then
    the second's, ...; a group added later gets the next number (`lr_group_N`), so numbers
    never change meaning within a run.
    """

    def __init__(self, model: nn.Module | None, optimizers: Sequence[Optimizer],
                 prior_names: Sequence[str] = ()) -> None:
        self.optimizers = list(optimizers)
        named = list(model.named_parameters()) if model is not None else []
        self._names = {id(p): n for n, p in named}
        self._model_pos = {id(p): i for i, (_, p) in enumerate(named)}
        self.columns: list[nn.Parameter] = []  # blob order
        self.names: list[str] = []
        self._column_of: dict[int, int] = {}
        self.pending: list[nn.Parameter] = []  # in an optimizer, never seen trainable yet
        self.order: list[nn.Parameter] = []  # measured this step: model order
        self.order_columns: list[int] = []  # the blob column of each entry of `order`
        self.identity = True  # order == columns: the per-parameter norms go straight in
        self.groups: list[dict[str, Any]] = []
        self._group_keys: list[tuple[int, int]] = []
        self.signature: Signature = ()
        self._prior = {name: i for i, name in enumerate(prior_names)}
        self.refresh()

    # -- change detection (hot path) -------------------------------------------------------

    def current_signature(self) -> Signature:
        # id(g) too: optimizer.load_state_dict (a resume, a rewind) swaps every group dict but
        # keeps its params list, and the LRs must then be read from the new dicts.
        return tuple((id(g), id(g["params"]), len(g["params"]))
                     for o in self.optimizers for g in o.param_groups)

    def changed(self) -> bool:
        return self.current_signature() != self.signature

    def scan_pending(self) -> bool:
        """True if a parameter never seen trainable now has a gradient (call refresh next)."""
        return any(p.grad is not None for p in self.pending)

    # -- rebuilding (off the hot path: only when something changed) -----------------------

    def refresh(self) -> list[int]:
        """Re-read the optimizers; returns the new columns' indices (empty if none)."""
        self.signature = self.current_signature()
        members: dict[int, nn.Parameter] = {}
        labels: dict[int, str] = {}
        keys = []
        for o_idx, opt in enumerate(self.optimizers):
            for g_idx, group in enumerate(opt.param_groups):
                keys.append((o_idx, g_idx))
                for i, p in enumerate(group["params"]):
                    if id(p) not in members:
                        members[id(p)] = p
                        labels[id(p)] = f"opt{o_idx}.group{g_idx}.param{i}" if len(
                            self.optimizers) > 1 else f"group{g_idx}.param{i}"
        for key in keys:
            if key not in self._group_keys:
                self._group_keys.append(key)
        self.groups = [self._group(o, g) for o, g in self._group_keys]
        fresh = [p for p in self._sorted(members.values())
                 if id(p) not in self._column_of and (p.requires_grad or p.grad is not None)]
        fresh.sort(key=lambda p: self._prior.get(self._name(p, labels), len(self._prior)))
        added = []
        for p in fresh:
            self._column_of[id(p)] = len(self.columns)
            added.append(len(self.columns))
            self.columns.append(p)
            self.names.append(self._name(p, labels))
        self.pending = [p for p in self._sorted(members.values()) if id(p) not in self._column_of]
        self.order = [p for p in self._sorted(members.values()) if id(p) in self._column_of]
        self.order_columns = [self._column_of[id(p)] for p in self.order]
        self.identity = self.order_columns == list(range(len(self.columns)))
        return added

    def _group(self, o_idx: int, g_idx: int) -> dict[str, Any]:
        groups = self.optimizers[o_idx].param_groups
        return groups[g_idx] if g_idx < len(groups) else NO_GROUP

    def _name(self, p: nn.Parameter, labels: dict[int, str]) -> str:
        return self._names.get(id(p)) or labels[id(p)]

    def _sorted(self, params: Any) -> list[nn.Parameter]:
        """Model order; parameters the model does not own follow, in optimizer order."""
        ordered = list(params)
        unknown = len(self._model_pos)
        index = {id(p): i for i, p in enumerate(ordered)}
        return sorted(ordered, key=lambda p: (self._model_pos.get(id(p), unknown), index[id(p)]))

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.groups]
