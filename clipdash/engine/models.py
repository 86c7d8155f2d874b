"""Built-in models sized from the data, and the `[model] kind = "pkg.mod:factory"` hook.

The recurrent models exist to make gradient clipping visible: `init = "scaled"` with
`init_scale > 1` gives a vanilla RNN a recurrent spectral radius above 1, the textbook setting
for exploding gradients (Pascanu et al. 2013). Keyword tables live in builtins.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clipdash.engine.builtins import import_factory, is_plugin
from clipdash.engine.config import Config
from clipdash.engine.data import DataBundle
from clipdash.engine.errors import ConfigError

__all__ = ["MLP", "Recurrent", "Transformer", "build_model"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _as_sequence(x: Tensor, is_sequence: bool) -> Tensor:
    """(batch, seq, features); flat inputs become a sequence of length 1."""
    return x if is_sequence else x.reshape(x.shape[0], 1, -1)


class MLP(nn.Module):
    """Feed-forward net on the flattened input (sequences are flattened too)."""

    def __init__(self, in_features: int, out_features: int, hidden: int | list[int],
                 activation: str = "relu", batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = []
        prev = in_features
        for width in widths:
            layers.append(nn.Linear(prev, width))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class Recurrent(nn.Module):
    """RNN / LSTM / GRU (batch_first) whose last time step feeds a Linear head."""

    _CELLS = {"rnn": (nn.RNN, 1), "lstm": (nn.LSTM, 4), "gru": (nn.GRU, 3)}

    def __init__(self, cell: str, input_dim: int, output_dim: int, is_sequence: bool,
                 hidden: int = 128, layers: int = 1, init: str = "default",
                 init_scale: float = 1.0, nonlinearity: str = "tanh") -> None:
        super().__init__()
        cls, self.gates = self._CELLS[cell]
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = cls(input_dim, hidden, num_layers=layers, batch_first=True, **extra)
        self.head = nn.Linear(hidden, output_dim)
        self.is_sequence = is_sequence
        self._init_recurrent(init, init_scale)

    @torch.no_grad()
    def _init_recurrent(self, init: str, scale: float) -> None:
        """Per gate block of every weight_hh: keep torch's init times `scale`, make it
        orthogonal with gain `scale`, or rescale a Gaussian to spectral radius `scale`."""
        hidden = self.rnn.hidden_size
        for layer in range(self.rnn.num_layers):
            weight = getattr(self.rnn, f"weight_hh_l{layer}")
            for g in range(self.gates):
                block = weight[g * hidden:(g + 1) * hidden]
                if init == "orthogonal":
                    nn.init.orthogonal_(block, gain=scale)
                elif init == "scaled":
                    block.normal_(0.0, 1.0 / math.sqrt(hidden))
                    radius = torch.linalg.eigvals(block).abs().max().clamp_min(1e-12)
                    block.mul_(scale / radius)
                else:
                    block.mul_(scale)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(_as_sequence(x, self.is_sequence))
        return self.head(out[:, -1])


class Transformer(nn.Module):
    """Small encoder: input projection + learned positions, mean-pooled into a Linear head."""

    def __init__(self, input_dim: int, output_dim: int, seq_len: int | None, d_model: int = 64,
                 heads: int = 4, layers: int = 2, ff: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.is_sequence = seq_len is not None
        self.proj = nn.Linear(input_dim, d_model)
        self.pos = nn.Parameter(torch.randn(1, seq_len or 1, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True)
        # Nested tensors only pay off with padding masks, and they warn without one.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_sequence(x, self.is_sequence)
        h = self.proj(x) + self.pos[:, : x.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


def _plugin(cfg: Config) -> nn.Module:
    src, kind = cfg.source, cfg.model.kind
    try:
        factory = import_factory(kind)
    except ValueError as exc:
        raise ConfigError(src, "model.kind", str(exc)) from None
    try:
        model = factory(**cfg.model.kwargs)
    except Exception as exc:  # whatever the user's code raises, report it as this key's fault
        raise ConfigError(src, "model.kind", f"{kind} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(src, "model.kind",
                          f"{kind} must return an nn.Module, got {type(model).__name__}")
    return model


def build_model(cfg: Config, data: DataBundle) -> nn.Module:
    """The `[model]` network, with input/output sizes taken from the data."""
    kind, kw = cfg.model.kind, dict(cfg.model.kwargs)
    if is_plugin(kind):
        return _plugin(cfg)
    if kind == "mlp":
        return MLP(data.input_dim * (data.seq_len or 1), data.output_dim, **kw)
    if kind == "transformer":
        return Transformer(data.input_dim, data.output_dim, data.seq_len, **kw)
    return Recurrent(kind, data.input_dim, data.output_dim, data.seq_len is not None, **kw)
