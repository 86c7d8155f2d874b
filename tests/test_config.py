"""Config loading: every bad config fails at load time naming file and dotted key."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from clipdash.engine.config import Config, config_from_dict, dump_toml, load_config
from clipdash.engine.errors import ConfigError

BASE: dict[str, Any] = {
    "seed": 3,
    "model": {"kind": "mlp", "hidden": 16},
    "data": {"kind": "regression", "n_samples": 64},
    "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9},
    "clip": {"mode": "norm", "max_norm": 1.0},
    "train": {"epochs": 2},
}


def write(tmp_path: Path, d: dict[str, Any]) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(dump_toml(d))
    return path


def with_(**changes: Any) -> dict[str, Any]:
    """BASE with `section__key=value` changes (value None deletes the key)."""
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        node = d
        for s in sections:
            node = node.setdefault(s, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return d


def error_for(tmp_path: Path, d: dict[str, Any], overrides: tuple[str, ...] = ()) -> str:
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def test_base_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.model.kwargs == {"hidden": 16, "activation": "relu", "batchnorm": False,
                                "dropout": 0.0}
    assert cfg.data.batch_size == 64
    assert cfg.data.kwargs["input_dim"] == 10
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.kwargs == {"momentum": 0.9}
    assert cfg.scheduler is None
    assert (cfg.clip.norm_type, cfg.clip.nonfinite, cfg.clip.z_threshold) == (2.0, "skip", None)
    assert cfg.train.loss == "mse" and cfg.train.eval_every == 100
    assert cfg.train.checkpoint_every == 0 and cfg.device == "auto"


@pytest.mark.parametrize("d, expected", [
    ({**BASE, "clp": {"max_norm": 1.0}}, "clp: unknown section (did you mean clip?)"),
    (with_(clip__max_nrom=1.0), "clip.max_nrom: unknown key (did you mean max_norm?)"),
    (with_(train__epochs="ten"), 'train.epochs: expected an integer, got "ten"'),
    (with_(train__epochs=True), "train.epochs: expected an integer, got true"),
    (with_(clip__max_norm=0.0), "clip.max_norm: must be > 0, got 0.0"),
    (with_(clip__max_norm=-1.0), "clip.max_norm: must be > 0, got -1.0"),
    (with_(clip__max_norm=math.nan), "clip.max_norm: must be finite, got nan"),
    (with_(clip__max_norm=math.inf), "clip.max_norm: must be finite, got inf"),
    (with_(optimizer__lr=-0.1), "optimizer.lr: must be >= 0, got -0.1"),
    (with_(clip__norm_type=0), "clip.norm_type: must be > 0 (or inf), got 0"),
    (with_(clip__norm_type=-1.0), "clip.norm_type: must be > 0 (or inf), got -1.0"),
    (with_(clip__norm_type=math.nan), 'clip.norm_type: expected a number or "inf", got nan'),
    (with_(optimizer__name="Adamm"), 'optimizer.name: unknown optimizer "Adamm" (did you mean '
                                     "Adam?)"),
    (with_(optimizer__name="sgd"), 'optimizer.name: unknown optimizer "sgd" (did you mean SGD?)'),
    (with_(optimizer__momentun=0.9), "optimizer.momentun: SGD has no argument momentun (did "
                                     "you mean momentum?)"),
    (with_(optimizer__nesterov=1), "optimizer.nesterov: expected true or false, got 1"),
    (with_(scheduler__name="StepLr", scheduler__step_size=2),
     'scheduler.name: unknown scheduler "StepLr" (did you mean StepLR?)'),
    (with_(scheduler__name="StepLR", scheduler__step_size=2, scheduler__T_max=3),
     "scheduler.T_max: StepLR has no argument T_max"),
    (with_(scheduler__name="StepLR"), "scheduler.step_size: required by StepLR but missing"),
    (with_(scheduler__name="StepLR", scheduler__step_size=2, scheduler__interval="batch"),
     'scheduler.interval: must be one of epoch | step, got "batch"'),
    (with_(model__kind="nosuch_pkg_xyz.mod:make"),
     "model.kind: cannot import nosuch_pkg_xyz.mod: ModuleNotFoundError: No module named "
     "'nosuch_pkg_xyz'"),
    (with_(data__kind="json:no_such_factory"),
     "data.kind: module json has no attribute no_such_factory"),
    (with_(model__kind="mpl"), 'model.kind: unknown model kind "mpl" (did you mean mlp?); '
                               'built-ins: mlp, rnn, lstm, gru, transformer, or '
                               '"package.module:factory"'),
    (with_(model__hiden=3), 'model.hiden: unknown key for model kind "mlp" (did you mean '
                            "hidden?)"),
    (with_(model__activation="sigmoid"),
     'model.activation: must be one of relu | tanh | gelu, got "sigmoid"'),
    (with_(model__kind="transformer", model__hidden=None, model__d_model=30),
     "model.heads: d_model (30) must be divisible by heads (4)"),
    (with_(data__batch_size=0), "data.batch_size: must be > 0, got 0"),
    (with_(data__val_fraction=1.0), "data.val_fraction: must be < 1, got 1.0"),
    ({**BASE, "model": {"hidden": 3}}, "model.kind: required key is missing"),
    ({**BASE, "clip": 1.0}, "clip: expected a table, got 1.0"),
    ({**BASE, "device": "gpu"}, 'device: expected auto | cpu | cuda | cuda:N, got "gpu"'),
    ({**BASE, "nmae": "x"}, "nmae: unknown key (did you mean name?)"),
    (with_(clip__z_threshold=2.0), 'clip.z_threshold: only used by mode "zscore", not "norm"'),
    (with_(clip__mode="percentile", clip__percentile=0.0),
     "clip.percentile: must be > 0, got 0.0"),
    (with_(clip__mode="zscore", clip__ema_alpha=1.0), "clip.ema_alpha: must be < 1, got 1.0"),
    (with_(clip__nonfinite="ignore"),
     'clip.nonfinite: must be one of skip | stop | continue, got "ignore"'),
    (with_(train__loss="l1"), 'train.loss: must be one of mse | cross_entropy, got "l1"'),
    (with_(train__loss="cross_entropy"),
     'train.loss: "cross_entropy" does not fit data kind "regression" (it needs mse)'),
    (with_(train__checkpoint_every=-1), "train.checkpoint_every: must be >= 0, got -1"),
    ({**BASE, "sweep": {"clip.max_norm": []}}, "sweep.clip.max_norm: expected a non-empty "
                                               "list, got []"),
    ({**BASE, "sweep": {"lr": 0.1}}, "sweep.lr: expected a non-empty list, got 0.1"),
])
def test_bad_config(tmp_path: Path, d: dict[str, Any], expected: str) -> None:
    assert error_for(tmp_path, d) == expected


def test_values_torch_rejects_fail_at_load(tmp_path: Path) -> None:
    assert error_for(tmp_path, with_(optimizer__momentum=-1.0)) == (
        "optimizer: SGD rejected its arguments: Invalid momentum value: -1.0")
    # Adagrad has neither momentum nor betas for CyclicLR's default cycle_momentum to cycle.
    cyclic = with_(optimizer__name="Adagrad", optimizer__momentum=None, scheduler__name="CyclicLR",
                   scheduler__base_lr=0.01, scheduler__max_lr=0.1)
    assert error_for(tmp_path, cyclic).startswith("scheduler: CyclicLR rejected its arguments:")
    seq = with_(scheduler__name="SequentialLR", scheduler__milestones=[2, 4],
                scheduler__schedulers=[{"name": "ConstantLR"}, {"name": "ExponentialLR",
                                                                "gamma": 0.9}])
    assert error_for(tmp_path, seq).startswith("scheduler: SequentialLR rejected its arguments:")


def test_nested_scheduler_errors_name_the_entry(tmp_path: Path) -> None:
    children = [{"name": "ConstantLR"}, {"name": "LinearLR", "gamma": 0.5}]
    d = with_(scheduler__name="SequentialLR", scheduler__milestones=[3],
              scheduler__schedulers=children)
    assert error_for(tmp_path, d) == "scheduler.schedulers[1].gamma: LinearLR has no argument gamma"
    children = [{"name": "ConstantLR", "interval": "step"}]
    d = with_(scheduler__name="ChainedScheduler", scheduler__schedulers=children)
    assert error_for(tmp_path, d) == (
        "scheduler.schedulers[0].interval: set interval on the outermost [scheduler] only")
    d = with_(scheduler__name="SequentialLR", scheduler__milestones=[3])
    assert error_for(tmp_path, d).startswith("scheduler.schedulers: SequentialLR needs")


def test_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config: No such file"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = 1\n[clip]\nmax_norm = = 2\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: invalid TOML: ")
    assert "line 3" in str(info.value)


def test_malformed_override_names_it(tmp_path: Path) -> None:
    for bad in ("clip.max_norm", "=3", "clip..max_norm=1", "clip.max norm=1"):
        message = error_for(tmp_path, BASE, (bad,))
        assert message == f"--set {bad}: malformed override (expected KEY=VALUE, e.g. " \
                          "clip.max_norm=0.5)"


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, with_(optimizer__momentum=None))
    cfg = load_config(path, ["clip.max_norm=0.5", "optimizer.name=Adam", "train.max_steps=7",
                             'scheduler.name="StepLR"', "scheduler.step_size=3",
                             "clip.norm_type=inf", "model.hidden=[8, 4]", "name=my run"])
    assert cfg.clip.max_norm == 0.5 and isinstance(cfg.clip.max_norm, float)
    assert cfg.optimizer.name == "Adam"
    assert cfg.train.max_steps == 7 and cfg.train.epochs == 2
    assert cfg.scheduler is not None and cfg.scheduler.kwargs == {"step_size": 3}
    assert cfg.clip.norm_type == math.inf
    assert cfg.model.kwargs["hidden"] == [8, 4]
    assert cfg.name == "my run"
    # ...but Adam has no momentum: the unknown kwarg is still reported with the file.
    with pytest.raises(ConfigError, match="exp.toml: optimizer.momentum: Adam has no argument"):
        load_config(write(tmp_path, BASE), ["optimizer.name=Adam"])
    nested = with_(scheduler__name="SequentialLR", scheduler__milestones=[3],
                   scheduler__schedulers=[{"name": "ConstantLR"},
                                          {"name": "ExponentialLR", "gamma": 0.9}])
    cfg = load_config(write(tmp_path, nested), ["scheduler.schedulers[1].gamma=0.5"])
    assert cfg.scheduler is not None and cfg.scheduler.schedulers[1].kwargs == {"gamma": 0.5}
    assert error_for(tmp_path, nested, ("scheduler.schedulers[5].gamma=1",)) == (
        "scheduler.schedulers[5].gamma: override: no element [5] in scheduler.schedulers")
    assert error_for(tmp_path, BASE, ("seed.x=1",)) == (
        "seed.x: override: seed is 3, not a table")


def test_defaults_follow_the_data_and_scheduler(tmp_path: Path) -> None:
    d = with_(data__kind="temporal_order", data__n_samples=None, train__epochs=None,
              scheduler__name="OneCycleLR", scheduler__max_lr=0.5)
    cfg = load_config(write(tmp_path, d))
    assert cfg.train.loss == "cross_entropy"
    assert (cfg.train.epochs, cfg.train.max_steps) == (10, None)
    assert cfg.scheduler is not None and cfg.scheduler.interval == "step"
    cfg = load_config(write(tmp_path, with_(train__max_steps=50, train__epochs=None)))
    assert (cfg.train.epochs, cfg.train.max_steps) == (None, 50)
    assert cfg.train.total_steps(steps_per_epoch=13) == 50
    cfg = load_config(write(tmp_path, with_(train__max_steps=50)))
    assert cfg.train.total_steps(steps_per_epoch=13) == 26
    cfg = load_config(write(tmp_path, with_(clip__mode="zscore", clip__warmup_steps=0)))
    assert cfg.clip.adaptive() == {"z_threshold": 2.5, "ema_alpha": 0.97,
                                           "warmup_steps": 0}
    cfg = load_config(write(tmp_path, with_(clip__mode="percentile")))
    assert cfg.clip.adaptive() == {"percentile": 10.0}
    cfg = load_config(write(tmp_path, with_(clip__norm_type="inf")))
    assert cfg.clip.norm_type == math.inf


def test_optimizer_lr_defaults_to_the_class_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, with_(optimizer__name="Adam", optimizer__lr=None,
                                            optimizer__momentum=None,
                                            optimizer__betas=[0.8, 0.9])))
    assert cfg.optimizer.lr == 0.001 and cfg.optimizer.kwargs == {"betas": [0.8, 0.9]}


ROUND_TRIP_CASES = [
    BASE,
    with_(model__kind="gru", model__hidden=8, model__init="scaled", model__init_scale=1.5,
          data__kind="addition", clip__mode="agc", clip__norm_type=math.inf,
          scheduler__name="SequentialLR", scheduler__milestones=[3],
          scheduler__schedulers=[{"name": "LinearLR", "start_factor": 0.5},
                                 {"name": "ChainedScheduler",
                                  "schedulers": [{"name": "ExponentialLR", "gamma": 0.9},
                                                 {"name": "ConstantLR", "factor": 0.5}]}]),
    {**with_(train__max_steps=9, clip__mode="percentile", clip__history=50),
     "name": 'odd "name" é', "device": "cuda:1",
     "sweep": {"clip.max_norm": [0.1, math.inf], "optimizer": {"lr": [0.1, 0.01]}}},
]


@pytest.mark.parametrize("d", ROUND_TRIP_CASES)
def test_round_trip(tmp_path: Path, d: dict[str, Any]) -> None:
    cfg = load_config(write(tmp_path, d))
    text = dump_toml(cfg.to_dict())
    again = config_from_dict(tomllib.loads(text), "config.toml")
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(cfg, Config) and again.source == "config.toml"


def test_dump_toml_handles_awkward_values() -> None:
    d = {"a": 1, "s": "line\nbreak \"q\" \x01 \x7f", "f": [math.inf, -math.inf, 1e-300],
         "t": {"nested": {"deep": True}, "arr": [{"x": 1, "sub": {"y": [1, 2]}}, {"x": 2}]},
         "key with space": "v", "none": None, "empty": []}
    back = tomllib.loads(dump_toml(d))
    del d["none"]
    assert back == d


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, clipdash.engine.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- threads


def test_threads_key_is_validated(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, with_(train__threads=3))).train.threads == 3
    assert error_for(tmp_path, with_(train__threads=0)) == "train.threads: must be >= 1, got 0"
    assert error_for(tmp_path, with_(train__threads="4")).startswith(
        "train.threads: expected an integer")


def test_threads_default_follows_the_environment_and_the_ranks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from clipdash.engine.loop import threads_for

    cfg = load_config(write(tmp_path, BASE))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_for(cfg) == 3  # the user (or a sweep splitting the cores) chose
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads_for(cfg) == 4  # small models get slower past a few threads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads_for(cfg) == 2  # 8 ranks on this machine share its 16 cores
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads_for(cfg) == 1
    cfg.train.threads = 5
    assert threads_for(cfg) == 5  # an explicit key wins over everything


def test_setup_applies_threads(tmp_path: Path) -> None:
    code = ("import torch\n"
            "from clipdash.engine.config import load_config\n"
            "from clipdash.engine.loop import setup\n"
            f"setup(load_config({str(write(tmp_path, with_(train__threads=2)))!r}))\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.stdout.strip() == "2", out.stderr


def test_total_steps_is_the_one_the_loop_uses(tmp_path: Path) -> None:
    from clipdash.engine.loop import setup

    for train in ({"epochs": 3}, {"max_steps": 7}, {"epochs": 3, "max_steps": 7},
                  {"epochs": 2**62, "max_steps": 5}):
        cfg = config_from_dict(with_(train=train), "x.toml")
        s = setup(cfg)
        assert s.total_steps == cfg.train.total_steps(s.steps_per_epoch)
        expected = min(train.get("epochs", 2**63) * s.steps_per_epoch,
                       train.get("max_steps", 2**63))
        assert s.total_steps == expected
