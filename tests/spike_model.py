"""A plug-in model for the alert tests: its training forward pass number `spike_at` (0-based)
(or each pass in a list) is scaled by `factor`, a spike no schedule explains.

    [model]
    kind = "spike_model:make_model"
    in_dim = 8
    out_dim = 1
    spike_at = 57

The pass counter is a plain attribute, not a buffer: a rewind restores the weights, not the
count, so the step run again after a rewind is a normal one.
"""

from __future__ import annotations

from torch import Tensor, nn


class SpikeAt(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, spike_at: int | list[int], hidden: int = 16,
                 factor: float = 40.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        self.spike_at = {spike_at} if isinstance(spike_at, int) else set(spike_at)
        self.factor = factor
        self.passes = 0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x.flatten(1))
        if self.training:
            if self.passes in self.spike_at:
                out = out * self.factor
            self.passes += 1
        return out


def make_model(in_dim: int, out_dim: int, spike_at: int | list[int], hidden: int = 16,
               factor: float = 40.0) -> nn.Module:
    return SpikeAt(in_dim, out_dim, spike_at, hidden, factor)
