"""The run config: typed dataclasses, loaded from TOML, validated completely at load time.

Everything a run needs is checked here, before a run directory exists, so `clipdash run` can exit
2 with `<file>: <dotted.key>: <problem>` instead of failing an hour in. Model and data kwargs are
checked against the torch-free tables in builtins.py; optimizer and scheduler arguments need the
torch classes, so those checks live in optim.py and are imported only when a config is validated.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipdash.engine.builtins import (
    DATA_KWARGS,
    DATA_LOSS,
    INT64_MAX,
    MODEL_KWARGS,
    Spec,
    defaults,
    fmt,
    import_factory,
    is_plugin,
)
from clipdash.engine.distconfig import DistributedConfig
from clipdash.engine.distconfig import parse as parse_distributed
from clipdash.engine.errors import ConfigError, did_you_mean
from clipdash.store.names import check_run_name
from clipdash.track.alerts import AlertOptions, AlertOptionsError
from clipdash.track.options import ClipOptions, ClipOptionsError

__all__ = [
    "ClipConfig", "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimizerConfig",
    "SchedulerConfig", "TrainConfig", "apply_overrides", "config_from_dict", "dump_toml",
    "load_config",
]

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_POS_INT = Spec(None, "int", lo=0, lo_open=True)
MAX_TOML_DEPTH = 64  # tables/arrays nested deeper than any config needs (and than tomllib's stack)


@dataclass
class ModelConfig:
    kind: str
    """A built-in (mlp, rnn, lstm, gru, transformer) or a `pkg.mod:factory` plug-in."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Built-ins: every accepted keyword with defaults filled in. Plug-ins: the other keys of
    `[model]`, passed to the factory untouched."""


@dataclass
class DataConfig:
    kind: str
    """A built-in (regression, classification, addition, temporal_order) or `mod:factory`."""
    batch_size: int = 64
    """Samples per optimizer step."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Generator keywords (defaults filled in for built-ins; passed through for plug-ins)."""


@dataclass
class OptimizerConfig:
    name: str
    """A torch.optim class name, e.g. SGD or AdamW."""
    lr: float
    """Initial learning rate (the class default when left out)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Other keyword arguments of the class, checked against its signature."""


@dataclass
class SchedulerConfig:
    name: str
    """A torch.optim.lr_scheduler class name."""
    interval: str | None = "epoch"
    """epoch | step: when the scheduler steps. None for schedulers nested in SequentialLR or
    ChainedScheduler, which follow the outer one. ReduceLROnPlateau ignores it: it steps at
    every evaluation, with the validation loss."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the class except `optimizer` (and `schedulers`, see below).
    OneCycleLR may leave out total_steps/epochs/steps_per_epoch: the loop fills total_steps."""
    schedulers: list[SchedulerConfig] = field(default_factory=list)
    """Children of SequentialLR / ChainedScheduler (`[[scheduler.schedulers]]` tables)."""


@dataclass(frozen=True)
class ClipConfig(ClipOptions):
    """[clip]: the one clip-options type (track/options.py holds every mode's parameters, their
    defaults, docs and checks), plus the TensorBoard switch the table also carries.

    Frozen, like ClipOptions: derive a changed one with dataclasses.replace (checked again).
    """

    per_param_scalars: bool = field(default=False, metadata={"spec": Spec(False, "bool")})
    """Also write one TensorBoard scalar tag per parameter (off: thousands of tags hurt)."""

    def options(self) -> ClipOptions:
        """The clip options alone, as the Tracker takes them."""
        return ClipOptions(**{f.name: getattr(self, f.name) for f in fields(ClipOptions)})


@dataclass
class TrainConfig:
    epochs: int | None = 10
    """Passes over the training set (None when only max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps; with epochs too, training stops at whichever comes first."""
    loss: str | None = None
    """mse | cross_entropy. Built-in data kinds imply one; None means "use
    DataBundle.default_loss" (plug-in data, decided from the target dtype)."""
    eval_every: int = 100
    """Steps between validation passes (there is always one at the end)."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 turns periodic checkpoints off (pause/stop still save)."""
    threads: int | None = None
    """CPU threads torch uses in this run. Absent: $OMP_NUM_THREADS when set, else
    min(4, cores / ranks on this machine), so ranks and sweep jobs do not oversubscribe."""

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps this run will take, given the loader length."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.epochs is not None:
            limits.append(self.epochs * steps_per_epoch)
        return min(*limits, INT64_MAX)  # epochs = 2**62 means "until max_steps", not overflow


@dataclass
class Config:
    model: ModelConfig
    """[model]"""
    data: DataConfig
    """[data]"""
    optimizer: OptimizerConfig
    """[optimizer]"""
    scheduler: SchedulerConfig | None = None
    """[scheduler]; None when the table is absent."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    """[clip]"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """[train]"""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """[distributed]: strategy and backend under torchrun."""
    alerts: AlertOptions = field(default_factory=AlertOptions)
    """[alerts]: spike alerts and what they do (track/alerts.py documents every key)."""
    seed: int = 0
    """Seeds torch (model init) and the built-in data generators."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda | cuda:N."""
    name: str | None = None
    """Run-name prefix (the default run name uses the config file's stem)."""
    sweep: dict[str, Any] | None = None
    """[sweep] kept raw: dotted key -> list of values. Interpreted by the sweep runner."""
    source: str = field(default="<config>", compare=False)
    """Where this config came from, for error messages raised after loading."""

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain TOML-ready data (None values left out)."""
        d: dict[str, Any] = {"seed": self.seed, "device": self.device, "name": self.name}
        d["model"] = {"kind": self.model.kind, **self.model.kwargs}
        d["data"] = {"kind": self.data.kind, "batch_size": self.data.batch_size,
                     **self.data.kwargs}
        d["optimizer"] = {"name": self.optimizer.name, "lr": self.optimizer.lr,
                          **self.optimizer.kwargs}
        if self.scheduler is not None:
            d["scheduler"] = _scheduler_dict(self.scheduler)
        d["clip"] = {k: getattr(self.clip, k) for k in self.clip.__dataclass_fields__}
        d["train"] = {k: getattr(self.train, k) for k in self.train.__dataclass_fields__}
        d["distributed"] = self.distributed.to_dict()
        d["alerts"] = self.alerts.to_dict()
        d["sweep"] = self.sweep
        return _drop_none(d)


def _scheduler_dict(s: SchedulerConfig) -> dict[str, Any]:
    d: dict[str, Any] = {"name": s.name, "interval": s.interval, **s.kwargs}
    if s.schedulers:
        d["schedulers"] = [_scheduler_dict(c) for c in s.schedulers]
    return d


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading


def parse_toml(text: str | bytes, source: str, key: str = "") -> dict[str, Any]:
    """tomllib.loads, with every way it can fail (bad UTF-8, deep nesting) a ConfigError."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        _check_depth(text, source, key)
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(source, key, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                                       f"offset {exc.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, key, f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, key, "invalid TOML: nested too deeply") from None


def _check_depth(text: str, source: str, key: str) -> None:
    """Refuse inline arrays/tables nested deeper than MAX_TOML_DEPTH before tomllib recurses.

    Brackets inside strings and comments are counted too: the bound is loose enough (64) that
    no real config comes near it either way.
    """
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_TOML_DEPTH:
        raise ConfigError(source, key, f"nested more than {MAX_TOML_DEPTH} levels deep")


def load_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The TOML table of a config file with `--set dotted.key=VALUE` overrides applied."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read config: {exc.strerror or exc}") from exc
    raw = parse_toml(data, source)
    apply_overrides(raw, overrides, source)
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a TOML config."""
    return config_from_dict(load_raw(path, overrides), str(path))


_SEGMENT = re.compile(r"^([A-Za-z0-9_-]+)((?:\[\d+\])*)$")


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> None:
    """Set `a.b[1].c=VALUE` keys in the raw table, in place, before validation.

    VALUE is parsed as a TOML value (`0.5`, `"x"`, `[1, 2]`, `inf`); if that fails it is taken
    as a bare string, so `optimizer.name=Adam` works without shell-quoting quotes.
    """
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        segments = key.split(".")
        matches = [_SEGMENT.match(s) for s in segments]
        if not sep or not key or not all(matches):
            raise ConfigError(source, f"--set {text}",
                              "malformed override (expected KEY=VALUE, e.g. clip.max_norm=0.5)")
        try:
            value = parse_toml(f"v = {value_text.strip()}", source, f"--set {key}")["v"]
        except ConfigError as exc:
            if "invalid TOML" not in exc.problem or "nested" in exc.problem:
                raise
            value = value_text.strip()
        node: Any = raw
        steps: list[str | int] = []
        for m in matches:
            assert m is not None
            steps.append(m.group(1))
            steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
        where = ""
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise ConfigError(source, key, f"override: no element [{step}] in {where}")
                where += f"[{step}]"
                if last:
                    node[step] = value
                else:
                    node = node[step]
                continue
            if not isinstance(node, dict):
                raise ConfigError(source, key, f"override: {where} is {fmt(node)}, not a table")
            where = f"{where}.{step}" if where else step
            if last:
                node[step] = value
            else:
                nxt_is_index = isinstance(steps[i + 1], int)
                node = node.setdefault(step, [] if nxt_is_index else {})


class Table:
    """Reads typed keys out of one raw TOML table and reports leftover keys as unknown."""

    def __init__(self, raw: Any, path: str, source: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(source, path, f"expected a table, got {fmt(raw)}")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, spec: Spec, required: bool = False) -> Any:
        """The checked value, or the spec's default when absent."""
        self.seen.add(name)
        if name not in self.raw:
            if required:
                raise self.error(name, "required key is missing")
            return defaults({name: spec})[name]
        try:
            return spec.check(self.raw[name])
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def rest(self) -> dict[str, Any]:
        """Keys not read yet (a plug-in's or a torch class's keyword arguments)."""
        return {k: v for k, v in self.raw.items() if k not in self.seen}

    def finish(self, known: Iterable[str], context: str = "") -> None:
        for k in self.raw:
            if k not in self.seen:
                raise self.error(k, f"unknown key{context}{did_you_mean(k, known)}")


_SECTIONS = ("model", "data", "optimizer", "scheduler", "clip", "train", "distributed", "alerts",
             "sweep")
_TOP_KEYS = ("seed", "device", "name")


def config_from_dict(raw: dict[str, Any], source: str) -> Config:
    """Validate a parsed TOML table (after overrides) into a Config; raises ConfigError."""
    from clipdash.engine import optim  # torch is needed for optimizer/scheduler checks only

    top = Table(raw, "", source)
    for k, v in raw.items():
        if k not in _SECTIONS and k not in _TOP_KEYS:
            what = "unknown section" if isinstance(v, dict) else "unknown key"
            raise top.error(k, what + did_you_mean(k, _SECTIONS + _TOP_KEYS))
    seed = top.get("seed", Spec(0, "int", lo=0, hi=2**64 - 1))  # torch.manual_seed's range
    device = top.get("device", Spec("auto", "str"))
    if not _DEVICE.match(device):
        raise top.error("device", f"expected auto | cpu | cuda | cuda:N, got {fmt(device)}")
    name = top.get("name", Spec(None, "str"))
    if name is not None:
        try:
            if "/" in check_run_name(name):
                raise ValueError(f"must be one name without slashes, got {fmt(name)}")
        except ValueError as exc:
            raise top.error("name", str(exc)) from None

    model = _model(Table(raw.get("model", {}), "model", source))
    data = _data(Table(raw.get("data", {}), "data", source))
    opt_table = Table(raw.get("optimizer", {}), "optimizer", source)
    optimizer = optim.validate_optimizer(opt_table)
    scheduler = None
    if "scheduler" in raw:
        scheduler = optim.validate_scheduler(Table(raw["scheduler"], "scheduler", source))
    clip = _clip(Table(raw.get("clip", {}), "clip", source))
    train = _train(Table(raw.get("train", {}), "train", source), data)
    alerts = _alerts(Table(raw.get("alerts", {}), "alerts", source))
    sweep = _sweep(raw["sweep"], source) if "sweep" in raw else None
    distributed = parse_distributed(Table(raw.get("distributed", {}), "distributed", source),
                                    device)
    cfg = Config(model=model, data=data, optimizer=optimizer, scheduler=scheduler, clip=clip,
                 train=train, distributed=distributed, alerts=alerts, seed=seed, device=device,
                 name=name, sweep=sweep, source=source)
    # Values torch itself rejects (momentum=-1, SequentialLR milestones that don't fit) only
    # show up on construction; do it now, on a dummy parameter, while exit 2 is still possible.
    optim.dry_run(cfg)
    return cfg


def check_device(cfg: Config) -> None:
    """ConfigError when `device` names CUDA this machine lacks (it would fail mid-setup).

    Not part of loading: a config for a GPU machine still loads (and round-trips) elsewhere.
    """
    device = cfg.device
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise ConfigError(cfg.source, "device", f"{fmt(device)} but CUDA is not available on "
                                                "this machine (use \"auto\" or \"cpu\")")
    if index >= count:
        raise ConfigError(cfg.source, "device",
                          f"{fmt(device)} but this machine has {count} CUDA device(s)")


def _kind(t: Table, table: dict[str, dict[str, Spec]], what: str) -> str:
    kind: str = t.get("kind", Spec(None, "str"), required=True)
    if is_plugin(kind):
        try:
            import_factory(kind)
        except ValueError as exc:
            raise t.error("kind", str(exc)) from None
    elif kind not in table:
        names = ", ".join(table)
        raise t.error("kind", f"unknown {what} kind {fmt(kind)}{did_you_mean(kind, table)}; "
                              f"built-ins: {names}, or \"package.module:factory\"")
    return kind


def _builtin_kwargs(t: Table, specs: dict[str, Spec], kind: str, extra: Iterable[str]) -> dict:
    kwargs = {k: t.get(k, spec) for k, spec in specs.items()}
    t.finish([*extra, *specs], f" for {t.path} kind {fmt(kind)}")
    return kwargs


def _model(t: Table) -> ModelConfig:
    kind = _kind(t, MODEL_KWARGS, "model")
    if is_plugin(kind):
        return ModelConfig(kind, t.rest())
    kwargs = _builtin_kwargs(t, MODEL_KWARGS[kind], kind, ["kind"])
    if kind == "transformer" and kwargs["d_model"] % kwargs["heads"]:
        raise t.error("heads", f"d_model ({kwargs['d_model']}) must be divisible by heads "
                               f"({kwargs['heads']})")
    return ModelConfig(kind, kwargs)


def _data(t: Table) -> DataConfig:
    kind = _kind(t, DATA_KWARGS, "data")
    batch_size = t.get("batch_size", Spec(64, "int", lo=0, lo_open=True))
    if is_plugin(kind):
        return DataConfig(kind, batch_size, t.rest())
    return DataConfig(kind, batch_size,
                      _builtin_kwargs(t, DATA_KWARGS[kind], kind, ["kind", "batch_size"]))


def _clip(t: Table) -> ClipConfig:
    """The `[clip]` table: ClipOptions checks every key (the message names it)."""
    known = [f.name for f in fields(ClipConfig)]
    t.seen.update(known)
    t.finish(known)
    try:
        return ClipConfig(**{k: t.raw[k] for k in known if k in t.raw}).resolved()
    except ClipOptionsError as exc:
        raise t.error(exc.key or "mode", exc.problem) from None


def _train(t: Table, data: DataConfig) -> TrainConfig:
    epochs = t.get("epochs", _POS_INT)
    max_steps = t.get("max_steps", _POS_INT)
    if epochs is None and max_steps is None:
        epochs = 10
    implied = DATA_LOSS.get(data.kind)
    loss = t.get("loss", Spec(implied, "str", choices=("mse", "cross_entropy")))
    if implied is not None and loss != implied:
        # The other loss would fail on shapes (labels vs. MSE) or silently learn nothing.
        raise t.error("loss", f"{fmt(loss)} does not fit data kind {fmt(data.kind)} "
                              f"(it needs {implied})")
    eval_every = t.get("eval_every", Spec(100, "int", lo=0, lo_open=True))
    checkpoint_every = t.get("checkpoint_every", Spec(0, "int", lo=0))
    threads = t.get("threads", Spec(None, "int", lo=1, hi=4096))
    t.finish([*TrainConfig.__dataclass_fields__])
    return TrainConfig(epochs, max_steps, loss, eval_every, checkpoint_every, threads)


def _alerts(t: Table) -> AlertOptions:
    known = list(AlertOptions.__dataclass_fields__)
    t.seen.update(known)
    t.finish(known)
    try:
        return AlertOptions(**{k: t.raw[k] for k in known if k in t.raw})
    except AlertOptionsError as exc:  # "window must be ...": the key is the first word
        key, _, problem = str(exc).partition(" ")
        raise t.error(key, problem) from None


def _sweep(raw: Any, source: str, path: str = "sweep") -> dict[str, Any]:
    """A table whose leaves are non-empty lists (nested tables allowed: [sweep.clip])."""
    if not isinstance(raw, dict):
        raise ConfigError(source, path, f"expected a table of lists, got {fmt(raw)}")
    if not raw:
        raise ConfigError(source, path, "empty: give at least one key = [values]")
    for k, v in raw.items():
        if isinstance(v, dict):
            _sweep(v, source, f"{path}.{k}")
        elif not isinstance(v, list) or not v:
            raise ConfigError(source, f"{path}.{k}", f"expected a non-empty list, got {fmt(v)}")
    return raw


# --------------------------------------------------------------------------- writing

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch == "\x7f":  # TOML forbids raw control characters
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # repr round-trips exactly and is valid TOML (1e-05, 0.1)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                          if x is not None)
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    # Plain keys first: after a [header] every key belongs to that header.
    for k, v in table.items():
        if v is not None and not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in table.items():
        sub = ".".join(_toml_key(p) for p in [*path, k])
        if isinstance(v, dict):
            lines += ["", f"[{sub}]"]
            _emit(v, [*path, k], lines)
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{sub}]]"]
                _emit(item, [*path, k], lines)


def dump_toml(d: dict[str, Any]) -> str:
    """A small TOML writer (tables, arrays of tables, inf/nan, escaped strings); None is omitted.

    Enough for resolved configs, so the project needs no TOML-writing dependency.
    """
    lines: list[str] = []
    _emit(d, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"
