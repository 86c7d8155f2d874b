"""Built-in synthetic data sets and the `[data] kind = "mod:factory"` plug-in hook.

The built-ins are generated in memory from `cfg.seed` (a private torch.Generator, so the global
RNG that seeds model init is untouched) in well under a second. Two of them are the classic
long-range-dependency benchmarks where gradient clipping matters: the adding problem and the
temporal order problem (Hochreiter & Schmidhuber 1997; Pascanu, Mikolov & Bengio 2013).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from clipdash.engine.builtins import DATA_LOSS, fmt, import_factory
from clipdash.engine.config import Config
from clipdash.engine.errors import ConfigError

__all__ = ["DataBundle", "build_data"]


@dataclass
class DataBundle:
    """What the loop and the model builder need to know about the data."""

    train: Dataset
    val: Dataset | None
    input_dim: int
    """Features per time step (sequences) or per sample."""
    output_dim: int
    """Regression targets per sample, or the number of classes."""
    task: str
    """"regression" (float targets of shape (output_dim,)) or "classification" (int64 labels)."""
    seq_len: int | None
    """Time steps for sequence inputs (batch, seq_len, input_dim); None for flat inputs."""
    default_loss: str
    """mse | cross_entropy, used when `[train] loss` is not given."""
    train_tensors: tuple[Tensor, Tensor] | None = None
    """(inputs, targets) when the whole set is two tensors: the loop slices them directly."""
    val_tensors: tuple[Tensor, Tensor] | None = None


def _split(x: Tensor, y: Tensor, val_fraction: float) -> tuple[tuple[Tensor, Tensor],
                                                               tuple[Tensor, Tensor] | None]:
    # Samples are i.i.d., so a contiguous split is as good as a shuffled one.
    n_val = int(len(x) * val_fraction)
    n_train = len(x) - n_val
    val = (x[n_train:], y[n_train:]) if n_val else None
    return (x[:n_train], y[:n_train]), val


def regression(g: torch.Generator, n_samples: int, input_dim: int, output_dim: int,
               noise: float) -> tuple[Tensor, Tensor]:
    """y = sin(x W1) W2 scaled to unit variance, plus noise: smooth but not linearly solvable."""
    x = torch.randn(n_samples, input_dim, generator=g)
    w1 = torch.randn(input_dim, 32, generator=g) / input_dim**0.5
    w2 = torch.randn(32, output_dim, generator=g)
    clean = torch.sin(2.0 * x @ w1) @ w2
    clean = clean / clean.std(dim=0).clamp_min(1e-6)
    return x, clean + noise * torch.randn(n_samples, output_dim, generator=g)


def classification(g: torch.Generator, n_samples: int, input_dim: int,
                   n_classes: int) -> tuple[Tensor, Tensor]:
    """Overlapping Gaussian clusters (centres ~2.8 std apart): high but not perfect accuracy."""
    centres = torch.randn(n_classes, input_dim, generator=g) * (2.0 / input_dim**0.5)
    y = torch.randint(0, n_classes, (n_samples,), generator=g)
    x = centres[y] + torch.randn(n_samples, input_dim, generator=g)
    return x, y


def addition(g: torch.Generator, seq_len: int, n_samples: int) -> tuple[Tensor, Tensor]:
    """The adding problem: channel 0 holds U(0,1) values, channel 1 marks two of them (one in
    each half, as in Pascanu et al. 2013); the target is the sum of the marked values."""
    values = torch.rand(n_samples, seq_len, generator=g)
    half = seq_len // 2
    first = torch.randint(0, half, (n_samples,), generator=g)
    second = torch.randint(half, seq_len, (n_samples,), generator=g)
    markers = torch.zeros(n_samples, seq_len)
    rows = torch.arange(n_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), target.unsqueeze(-1)


# Symbols: 4 distractors, B (start), E (end), X, Y -- Hochreiter & Schmidhuber's task 6a/6b.
_DISTRACTORS, _B, _E, _X = 4, 4, 5, 6
_VOCAB = 8
# Windows (fractions of the length) where the relevant X/Y symbols appear.
_WINDOWS = {4: ((0.1, 0.2), (0.5, 0.6)), 8: ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76))}


def temporal_order(g: torch.Generator, seq_len: int, n_samples: int,
                   n_classes: int) -> tuple[Tensor, Tensor]:
    """Distractor symbols with X/Y at two (or three) random positions far apart; the class is
    their order (XX, XY, YX, YY, or the 8 orders of three). Inputs are one-hot (seq_len, 8)."""
    seq = torch.randint(0, _DISTRACTORS, (n_samples, seq_len), generator=g)
    seq[:, 0] = _B
    seq[:, -1] = _E
    rows = torch.arange(n_samples)
    label = torch.zeros(n_samples, dtype=torch.long)
    for lo_f, hi_f in _WINDOWS[n_classes]:
        lo = max(1, int(lo_f * seq_len))
        hi = min(seq_len - 1, max(lo + 1, int(hi_f * seq_len)))
        pos = torch.randint(lo, hi, (n_samples,), generator=g)
        is_y = torch.randint(0, 2, (n_samples,), generator=g)
        seq[rows, pos] = _X + is_y
        label = label * 2 + is_y
    return torch.nn.functional.one_hot(seq, _VOCAB).float(), label


_GENERATORS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "regression": regression,
    "classification": classification,
    "addition": addition,
    "temporal_order": temporal_order,
}


def _builtin(cfg: Config) -> DataBundle:
    kind = cfg.data.kind
    kwargs = dict(cfg.data.kwargs)
    val_fraction = kwargs.pop("val_fraction")
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = _GENERATORS[kind](g, **kwargs)
    train, val = _split(x, y, val_fraction)
    task = "classification" if DATA_LOSS[kind] == "cross_entropy" else "regression"
    output_dim = int(kwargs["n_classes"]) if task == "classification" else y.shape[-1]
    return DataBundle(
        train=TensorDataset(*train), val=TensorDataset(*val) if val else None,
        input_dim=x.shape[-1], output_dim=output_dim, task=task,
        seq_len=x.shape[1] if x.dim() == 3 else None, default_loss=DATA_LOSS[kind],
        train_tensors=train, val_tensors=val)


class _VectorTargets(Dataset):
    """Shows scalar float targets as shape (1,), matching a model output of (batch, 1)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        x, y = self.inner[i]
        return x, torch.as_tensor(y, dtype=torch.float32).reshape(1)


def _tensors(ds: Any, classify: bool) -> tuple[Tensor, Tensor] | None:
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        x, y = ds.tensors
        if classify:
            y = y.long()
        elif y.dim() == 1:
            y = y.unsqueeze(-1)
        return x, y
    return None


def _plugin(cfg: Config) -> DataBundle:
    """Call `make_data(**kwargs)` and infer shapes from the first training sample.

    Input `()` counts as 1 feature, `(F,)` as F features, `(T, F)` as a sequence of T steps of F
    features, anything larger as `numel` flat features. Integer targets make a classification
    task with max(label) + 1 classes (over up to 1000 samples); float targets a regression task
    with `numel` outputs (scalar targets are presented as shape (1,)).
    """
    src, key = cfg.source, "data.kind"
    try:
        factory = import_factory(cfg.data.kind)
    except ValueError as exc:
        raise ConfigError(src, key, str(exc)) from None
    try:
        result = factory(**cfg.data.kwargs)
    except Exception as exc:  # whatever the user's code raises, report it as this key's fault
        raise ConfigError(src, key, f"{cfg.data.kind} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ConfigError(src, key, f"{cfg.data.kind} must return (train, val), got "
                                    f"{type(result).__name__}")
    train, val = result
    try:
        empty = len(train) == 0
    except TypeError:
        raise ConfigError(src, key, "the training set must be a map-style Dataset with len(), "
                                    f"got {type(train).__name__}") from None
    if empty:
        raise ConfigError(src, key, f"{cfg.data.kind} returned an empty training set")
    try:
        x, y = (torch.as_tensor(v) for v in train[0])
    except Exception as exc:  # noqa: BLE001 - strings, nested ragged lists, objects
        kinds = ", ".join(type(v).__name__ for v in train[0]) if isinstance(
            train[0], (tuple, list)) else type(train[0]).__name__
        raise ConfigError(src, key, f"samples must be (input, target) pairs of tensors or "
                                    f"numbers; the first one holds ({kinds}): "
                                    f"{type(exc).__name__}: {exc}") from None
    classify = not (y.is_floating_point() or y.is_complex()) and y.dtype != torch.bool
    seq_len = x.shape[0] if x.dim() == 2 else None
    input_dim = x.shape[-1] if x.dim() in (1, 2) else max(1, x.numel())
    if classify:
        labels = [int(torch.as_tensor(train[i][1])) for i in range(min(len(train), 1000))]
        output_dim = max(labels) + 1
        if output_dim < 2:
            raise ConfigError(src, key, f"integer targets need at least 2 classes, saw labels "
                                        f"up to {fmt(max(labels))}")
    else:
        output_dim = max(1, y.numel())
        if y.dim() == 0:
            train, val = _VectorTargets(train), (_VectorTargets(val) if val is not None else None)
    return DataBundle(
        train=train, val=val, input_dim=int(input_dim), output_dim=int(output_dim),
        task="classification" if classify else "regression", seq_len=seq_len,
        default_loss="cross_entropy" if classify else "mse",
        train_tensors=_tensors(result[0], classify),
        val_tensors=_tensors(result[1], classify) if result[1] is not None else None)


def build_data(cfg: Config) -> DataBundle:
    """The training and validation sets for `cfg.data`, deterministic for `cfg.seed`."""
    return _plugin(cfg) if ":" in cfg.data.kind else _builtin(cfg)
