"""Built-in data sets and models, and the plug-in factories for both."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clipdash.engine.config import Config, config_from_dict
from clipdash.engine.data import build_data
from clipdash.engine.errors import ConfigError
from clipdash.engine.models import Recurrent, build_model

SMALL = {"regression": {"n_samples": 40}, "classification": {"n_samples": 40},
         "addition": {"n_samples": 40, "seq_len": 12},
         "temporal_order": {"n_samples": 40, "seq_len": 12}}


def cfg_for(data: dict[str, Any], model: dict[str, Any] | None = None, seed: int = 0) -> Config:
    raw = {"seed": seed, "model": model or {"kind": "mlp"}, "data": data,
           "optimizer": {"name": "SGD", "lr": 0.1}}
    return config_from_dict(raw, "exp.toml")


def test_regression_defaults_and_determinism() -> None:
    start = time.perf_counter()
    a = build_data(cfg_for({"kind": "regression"}, seed=5))
    b = build_data(cfg_for({"kind": "regression"}, seed=5))
    c = build_data(cfg_for({"kind": "regression"}, seed=6))
    assert time.perf_counter() - start < 3.0
    assert a.train_tensors is not None and b.train_tensors is not None
    assert c.train_tensors is not None and a.val_tensors is not None
    x, y = a.train_tensors
    assert x.shape == (1639, 10) and y.shape == (1639, 1)  # 2048 - int(0.2 * 2048)
    assert a.val_tensors[0].shape == (409, 10)
    assert (a.input_dim, a.output_dim, a.task, a.seq_len, a.default_loss) == (
        10, 1, "regression", None, "mse")
    assert torch.equal(x, b.train_tensors[0]) and torch.equal(y, b.train_tensors[1])
    assert not torch.equal(x, c.train_tensors[0])
    assert 0.9 < float(y.std()) < 1.2  # unit-variance signal plus 0.1 noise
    assert isinstance(a.train, TensorDataset) and len(a.train) == 1639
    assert torch.equal(a.train[0][0], x[0])


@pytest.mark.parametrize("kind", list(SMALL))
def test_every_builtin_is_deterministic(kind: str) -> None:
    one = build_data(cfg_for({"kind": kind, **SMALL[kind]}, seed=1)).train_tensors
    two = build_data(cfg_for({"kind": kind, **SMALL[kind]}, seed=1)).train_tensors
    other = build_data(cfg_for({"kind": kind, **SMALL[kind]}, seed=2)).train_tensors
    assert one is not None and two is not None and other is not None
    assert all(torch.equal(p, q) for p, q in zip(one, two, strict=True))
    assert not torch.equal(one[0], other[0])


def test_classification() -> None:
    d = build_data(cfg_for({"kind": "classification", "n_classes": 3, "val_fraction": 0.0}))
    assert d.val is None and d.val_tensors is None
    assert d.train_tensors is not None
    x, y = d.train_tensors
    assert x.shape == (2048, 20) and y.dtype == torch.long
    assert set(y.tolist()) == {0, 1, 2}
    assert (d.output_dim, d.task, d.default_loss) == (3, "classification", "cross_entropy")


def test_adding_problem_targets_are_the_marked_sums() -> None:
    d = build_data(cfg_for({"kind": "addition", "seq_len": 30, "n_samples": 200}))
    assert d.train_tensors is not None
    x, y = d.train_tensors
    assert x.shape == (160, 30, 2) and y.shape == (160, 1)
    assert (d.input_dim, d.seq_len, d.output_dim, d.task) == (2, 30, 1, "regression")
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((160,), 2.0))
    assert torch.all(markers[:, :15].sum(1) == 1) and torch.all(markers[:, 15:].sum(1) == 1)
    assert torch.allclose((x[..., 0] * markers).sum(1, keepdim=True), y)


@pytest.mark.parametrize("n_classes", [4, 8])
def test_temporal_order_labels_encode_the_order(n_classes: int) -> None:
    d = build_data(cfg_for({"kind": "temporal_order", "seq_len": 40, "n_samples": 300,
                            "n_classes": n_classes}))
    assert d.train_tensors is not None
    x, y = d.train_tensors
    assert x.shape == (240, 40, 8) and torch.all(x.sum(-1) == 1)
    assert (d.input_dim, d.output_dim, d.seq_len, d.default_loss) == (
        8, n_classes, 40, "cross_entropy")
    symbols = x.argmax(-1)
    assert torch.all(symbols[:, 0] == 4) and torch.all(symbols[:, -1] == 5)
    for row, label in zip(symbols.tolist(), y.tolist(), strict=True):
        relevant = [s - 6 for s in row if s >= 6]  # X -> 0, Y -> 1, in order of appearance
        assert len(relevant) == n_classes.bit_length() - 1
        assert int("".join(map(str, relevant)), 2) == label
    assert set(y.tolist()) == set(range(n_classes))


MODELS = [{"kind": "mlp", "hidden": [8, 8], "batchnorm": True, "dropout": 0.1},
          {"kind": "rnn", "hidden": 8, "init": "scaled", "init_scale": 1.2},
          {"kind": "lstm", "hidden": 8, "layers": 2, "init": "orthogonal"},
          {"kind": "gru", "hidden": 8},
          {"kind": "transformer", "d_model": 8, "heads": 2, "layers": 1, "ff": 16}]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m["kind"])
@pytest.mark.parametrize("kind", list(SMALL))
def test_model_output_shapes(model: dict[str, Any], kind: str) -> None:
    cfg = cfg_for({"kind": kind, **SMALL[kind]}, model)
    data = build_data(cfg)
    net = build_model(cfg, data)
    assert data.train_tensors is not None
    x, y = data.train_tensors
    out = net(x[:5])
    assert out.shape == (5, data.output_dim)
    loss_fn = nn.CrossEntropyLoss() if data.default_loss == "cross_entropy" else nn.MSELoss()
    loss = loss_fn(out, y[:5])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_recurrent_inits() -> None:
    data = build_data(cfg_for({"kind": "addition", **SMALL["addition"]}))
    scaled = build_model(cfg_for({"kind": "addition"},
                                 {"kind": "rnn", "hidden": 16, "init": "scaled",
                                  "init_scale": 1.5}), data)
    assert isinstance(scaled, Recurrent)
    w = scaled.rnn.weight_hh_l0.detach()
    assert float(torch.linalg.eigvals(w).abs().max()) == pytest.approx(1.5, rel=1e-4)
    ortho = build_model(cfg_for({"kind": "addition"},
                                {"kind": "gru", "hidden": 6, "init": "orthogonal",
                                 "init_scale": 2.0}), data)
    assert isinstance(ortho, Recurrent)
    w = ortho.rnn.weight_hh_l0.detach()
    for g in range(3):
        block = w[g * 6:(g + 1) * 6]
        assert torch.allclose(block @ block.T, 4.0 * torch.eye(6), atol=1e-5)


def test_mlp_hidden_as_int() -> None:
    cfg = cfg_for({"kind": "regression", **SMALL["regression"]},
                  {"kind": "mlp", "hidden": 7, "activation": "gelu"})
    net = build_model(cfg, build_data(cfg))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 7), (7, 1)]
    assert any(isinstance(m, nn.GELU) for m in net.modules())


PLUGIN = '''
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class Scalars(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.full((3,), float(i)), float(i) * 2.0


def make_data(n=30, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, 4, generator=g)
    y = torch.arange(n) % classes
    return TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:])


def make_scalars():
    return Scalars(), None


def make_model(width=4, out=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(20, width), nn.Linear(width, out))


def not_a_model():
    return "nope"


VALUE = 3
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"cd_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_factory adds the cwd
    yield name
    sys.modules.pop(name, None)


def test_plugin_data_and_model(plugin_module: str) -> None:
    cfg = cfg_for({"kind": f"{plugin_module}:make_data", "n": 26, "batch_size": 4},
                  {"kind": f"{plugin_module}:make_model", "width": 6})
    assert cfg.data.kwargs == {"n": 26} and cfg.model.kwargs == {"width": 6}
    data = build_data(cfg)
    assert (data.input_dim, data.seq_len, data.output_dim, data.task, data.default_loss) == (
        4, 5, 3, "classification", "cross_entropy")
    assert data.train_tensors is not None and data.val_tensors is not None
    assert data.train_tensors[1].dtype == torch.long and len(data.val_tensors[0]) == 6
    net = build_model(cfg, data)
    assert net(data.train_tensors[0][:2]).shape == (2, 3)
    # Built-in models size themselves from a plug-in's data too.
    lstm = build_model(cfg_for(cfg.to_dict()["data"], {"kind": "lstm", "hidden": 4}), data)
    assert lstm(data.train_tensors[0][:2]).shape == (2, 3)


def test_plugin_scalar_regression_targets(plugin_module: str) -> None:
    data = build_data(cfg_for({"kind": f"{plugin_module}:make_scalars"}))
    assert (data.input_dim, data.output_dim, data.task, data.seq_len) == (3, 1, "regression", None)
    assert data.val is None and data.train_tensors is None
    x, y = data.train[5]
    assert torch.equal(y, torch.tensor([10.0])) and x.shape == (3,)


def test_plugin_failures_name_the_key(plugin_module: str) -> None:
    with pytest.raises(ConfigError, match=r"^exp\.toml: model\.kind: .* is not callable$"):
        cfg_for({"kind": "regression"}, {"kind": f"{plugin_module}:VALUE"})
    cfg = cfg_for({"kind": "regression", **SMALL["regression"]},
                  {"kind": f"{plugin_module}:not_a_model"})
    with pytest.raises(ConfigError, match=r"^exp\.toml: model\.kind: .* must return an "
                                          r"nn\.Module, got str$"):
        build_model(cfg, build_data(cfg))
    cfg = cfg_for({"kind": "regression", **SMALL["regression"]},
                  {"kind": f"{plugin_module}:make_model", "depth": 3})
    with pytest.raises(ConfigError, match=r"^exp\.toml: model\.kind: .* failed: TypeError: "):
        build_model(cfg, build_data(cfg))
    cfg = cfg_for({"kind": f"{plugin_module}:make_data", "bogus": 1})
    with pytest.raises(ConfigError, match=r"^exp\.toml: data\.kind: .* failed: TypeError: "):
        build_data(cfg)
