"""Optimizers and LR schedulers from config: any torch.optim / lr_scheduler class by name.

Arguments are checked against the class signature when the config loads (config.py calls
`validate_*` and `dry_run` here), and every torch construction error is re-raised as a
ConfigError naming the table, so a bad value exits 2 before a run directory exists.

`ScheduleDriver` hides the three ways schedulers are stepped: per optimizer step, per epoch, or
(ReduceLROnPlateau) per evaluation with the validation loss.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from clipdash.engine.builtins import Spec, fmt, is_number
from clipdash.engine.config import Config, OptimizerConfig, SchedulerConfig, Table
from clipdash.engine.errors import ConfigError, did_you_mean

__all__ = ["ScheduleDriver", "build_optimizer", "build_scheduler"]

STEP_DEFAULT = ("CyclicLR", "OneCycleLR")  # built to be stepped every batch
NESTING = ("SequentialLR", "ChainedScheduler")  # take `schedulers`
# LBFGS needs a closure re-evaluating the loss on every step; the loop calls step() plainly.
UNSUPPORTED_OPTIMIZERS = {"LBFGS": "needs a closure, which clipdash run does not provide"}


def optimizer_classes() -> dict[str, type[Optimizer]]:
    return {n: c for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, Optimizer) and c is not Optimizer}


def scheduler_classes() -> dict[str, type]:
    bases = (LRScheduler, ReduceLROnPlateau)
    return {n: c for n, c in vars(lr_scheduler).items()
            if isinstance(c, type) and issubclass(c, bases) and not n.startswith("_")
            and c is not LRScheduler}


def _signature(cls: type, skip: tuple[str, ...]) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters (minus `skip`) and whether **kwargs is accepted."""
    params = dict(inspect.signature(cls).parameters)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items()
             if k not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named, var_kw


def _check_kwargs(t: Table, cls: type, kwargs: dict[str, Any], skip: tuple[str, ...]) -> None:
    """Unknown names and obvious type slips against the signature; torch checks the rest."""
    params, var_kw = _signature(cls, skip)
    for k, v in kwargs.items():
        if k not in params:
            if var_kw:
                continue
            raise t.error(k, f"{cls.__name__} has no argument {k}{did_you_mean(k, params)}")
        default = params[k].default
        if isinstance(default, bool) and not isinstance(v, bool):
            raise t.error(k, f"expected true or false, got {fmt(v)}")
        if is_number(default) and not is_number(v):
            raise t.error(k, f"expected a number, got {fmt(v)}")
        if isinstance(default, str) and not isinstance(v, str):
            raise t.error(k, f"expected a string, got {fmt(v)}")
    for k, p in params.items():
        if p.default is p.empty and k not in kwargs:
            raise t.error(k, f"required by {cls.__name__} but missing")


def validate_optimizer(t: Table) -> OptimizerConfig:
    name = t.get("name", Spec(None, "str"), required=True)
    classes = optimizer_classes()
    if name not in classes:
        raise t.error("name", f"unknown optimizer {fmt(name)}{did_you_mean(name, classes)}")
    if name in UNSUPPORTED_OPTIMIZERS:
        raise t.error("name", f"{name} {UNSUPPORTED_OPTIMIZERS[name]}")
    cls = classes[name]
    params, _ = _signature(cls, ("self", "params"))
    lr_default = params["lr"].default if "lr" in params else inspect.Parameter.empty
    if t.has("lr") or lr_default is inspect.Parameter.empty or not is_number(lr_default):
        lr = t.get("lr", Spec(None, "float", lo=0.0, f32=True), required=True)
    else:
        t.seen.add("lr")
        lr = float(lr_default)  # type: ignore[arg-type]
    kwargs = t.rest()
    _check_kwargs(t, cls, kwargs, ("self", "params", "lr"))
    return OptimizerConfig(name, lr, kwargs)


def validate_scheduler(t: Table, nested: bool = False) -> SchedulerConfig:
    name = t.get("name", Spec(None, "str"), required=True)
    classes = scheduler_classes()
    if name not in classes:
        raise t.error("name", f"unknown scheduler {fmt(name)}{did_you_mean(name, classes)}")
    if nested and name == "ReduceLROnPlateau":
        raise t.error("name", "ReduceLROnPlateau steps on the validation loss and cannot be "
                              "nested in SequentialLR or ChainedScheduler")
    children: list[SchedulerConfig] = []
    if name in NESTING:
        t.seen.add("schedulers")
        raw = t.raw.get("schedulers")
        if not isinstance(raw, list) or not raw or not all(isinstance(x, dict) for x in raw):
            raise t.error("schedulers", f"{name} needs [[{t.key('schedulers')}]] tables, "
                                        f"got {fmt(raw)}")
        children = [validate_scheduler(Table(x, f"{t.key('schedulers')}[{i}]", t.source), True)
                    for i, x in enumerate(raw)]
    if nested:
        if t.has("interval"):
            raise t.error("interval", "set interval on the outermost [scheduler] only")
        interval = None
    else:
        names = _names(name, children)
        default = "step" if any(n in STEP_DEFAULT for n in names) else "epoch"
        interval = t.get("interval", Spec(default, "str", choices=("epoch", "step")))
    kwargs = t.rest()
    _check_kwargs(t, classes[name], kwargs, ("self", "optimizer", "schedulers"))
    if name == "CyclicLR":
        _check_cyclic_bounds(t, kwargs)
    return SchedulerConfig(name, interval, kwargs, children)


def _check_cyclic_bounds(t: Table, kwargs: dict[str, Any]) -> None:
    """CyclicLR takes base_lr > max_lr without a word and then cycles upside down."""
    base, top = kwargs.get("base_lr"), kwargs.get("max_lr")
    bases = base if isinstance(base, list) else [base]
    tops = top if isinstance(top, list) else [top]
    if len(bases) == 1:
        bases = bases * len(tops)
    if len(tops) == 1:
        tops = tops * len(bases)
    for b, m in zip(bases, tops, strict=False):
        if is_number(b) and is_number(m) and b > m:
            raise t.error("base_lr", f"base_lr ({fmt(b)}) is above max_lr ({fmt(m)}): the "
                                     "cycle would run upside down")


def _names(name: str, children: list[SchedulerConfig]) -> list[str]:
    out = [name]
    for c in children:
        out += _names(c.name, c.schedulers)
    return out


# --------------------------------------------------------------------------- construction


def _optimizer_kwargs(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """TOML has no tuples; hand tuple-defaulted arguments (betas, etas) over as tuples."""
    params, _ = _signature(cls, ())
    return {k: tuple(v) if isinstance(v, list) and k in params
            and isinstance(params[k].default, tuple) else v for k, v in kwargs.items()}


def make_optimizer(oc: OptimizerConfig, params: Any, source: str) -> Optimizer:
    cls: Any = optimizer_classes()[oc.name]
    try:
        return cls(params, lr=oc.lr, **_optimizer_kwargs(cls, oc.kwargs))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(source, "optimizer", f"{oc.name} rejected its arguments: {exc}") from exc


def build_optimizer(cfg: Config, model: nn.Module) -> Optimizer:
    """The configured optimizer over all of the model's parameters (one param group)."""
    return make_optimizer(cfg.optimizer, model.parameters(), cfg.source)


def _segment_lengths(sc: SchedulerConfig, length: int) -> list[int]:
    """How long each child of SequentialLR / ChainedScheduler runs, in interval units."""
    if sc.name != "SequentialLR":
        return [length] * len(sc.schedulers)
    milestones = list(sc.kwargs.get("milestones", []))
    bounds = [0, *milestones, length]
    return [max(1, bounds[i + 1] - bounds[i]) for i in range(len(sc.schedulers))]


def make_scheduler(sc: SchedulerConfig, optimizer: Optimizer, length: int, source: str,
                   path: str = "scheduler", strict: bool = True) -> Any:
    """Construct `sc` (children first) on `optimizer`; `length` fills OneCycleLR's total_steps.

    `length` is how many times the scheduler will be stepped; with `strict`, a OneCycleLR given
    a shorter length of its own is refused now (torch raises at the step past its end).
    """
    kwargs = dict(sc.kwargs)
    if sc.name == "OneCycleLR":
        if not {"total_steps", "epochs", "steps_per_epoch"} & set(kwargs):
            kwargs["total_steps"] = max(1, length)
        elif strict:
            _check_one_cycle_length(sc, kwargs, length, source, path)
    if sc.schedulers:
        lengths = _segment_lengths(sc, length)
        kwargs["schedulers"] = [
            make_scheduler(c, optimizer, n, source, f"{path}.schedulers[{i}]", strict)
            for i, (c, n) in enumerate(zip(sc.schedulers, lengths, strict=False))
        ]
    cls = scheduler_classes()[sc.name]
    try:
        return cls(optimizer=optimizer, **kwargs)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        raise ConfigError(source, path, f"{sc.name} rejected its arguments: {exc}") from exc


def _check_one_cycle_length(sc: SchedulerConfig, kwargs: dict[str, Any], length: int,
                            source: str, path: str) -> None:
    total: Any = kwargs.get("total_steps")
    if total is None and is_number(kwargs.get("epochs")) and is_number(
            kwargs.get("steps_per_epoch")):
        total = kwargs["epochs"] * kwargs["steps_per_epoch"]
    if is_number(total) and total < length:
        unit = "epoch" if sc.interval == "epoch" else "step"
        raise ConfigError(source, f"{path}.total_steps",
                          f"OneCycleLR covers {total} {unit}s but the run steps it {length} "
                          "times (torch fails past its end); raise total_steps or leave it out "
                          "to fit the run")


class ScheduleDriver:
    """Steps a scheduler at the right moments; the loop calls all three hooks unconditionally.

    - `after_step(step)` after every optimizer step: steps when interval == "step".
    - `after_epoch(epoch, val_loss)` at the end of every epoch: steps when interval == "epoch".
    - `on_eval(val_loss)` after every evaluation: steps ReduceLROnPlateau (and only it) with the
      validation loss, since evaluations, not epochs, are when a fresh val loss exists.
    """

    def __init__(self, scheduler: Any, interval: str) -> None:
        self.scheduler = scheduler
        self.interval = interval
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)

    def after_step(self, step: int) -> None:
        if self.interval == "step" and not self.plateau:
            self.scheduler.step()

    def after_epoch(self, epoch: int, val_loss: float | None = None) -> None:
        if self.interval == "epoch" and not self.plateau:
            self.scheduler.step()

    def on_eval(self, val_loss: float) -> None:
        # A non-finite loss is passed on: it counts as "no improvement", which is what a
        # diverging run should be told.
        if self.plateau:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


def build_scheduler(cfg: Config, optimizer: Optimizer, steps_per_epoch: int,
                    total_steps: int) -> ScheduleDriver | None:
    """The configured scheduler wrapped in a ScheduleDriver, or None without `[scheduler]`.

    `total_steps` is the run's optimizer-step count (`cfg.train.total_steps(steps_per_epoch)`);
    OneCycleLR without an explicit length gets it, converted to epochs for interval = "epoch".
    """
    sc = cfg.scheduler
    if sc is None:
        return None
    interval = sc.interval or "epoch"
    length = total_steps if interval == "step" else math.ceil(total_steps / max(1, steps_per_epoch))
    return ScheduleDriver(make_scheduler(sc, optimizer, length, cfg.source), interval)


def dry_run(cfg: Config) -> None:
    """Construct optimizer and scheduler on a dummy parameter so torch's own checks run now.

    Skipped for the optimizer when fused/capturable is set (they depend on the real device);
    the scheduler then runs against SGD with momentum so momentum-cycling schedulers pass.
    """
    param = nn.Parameter(torch.zeros(2, 2))  # 2-D: some optimizers (Muon) reject vectors
    oc = cfg.optimizer
    if oc.kwargs.get("fused") or oc.kwargs.get("capturable"):
        optimizer: Optimizer = torch.optim.SGD([param], lr=oc.lr, momentum=0.9)
    else:
        optimizer = make_optimizer(oc, [param], cfg.source)
    if cfg.scheduler is not None:
        make_scheduler(cfg.scheduler, optimizer, 100, cfg.source, strict=False)
