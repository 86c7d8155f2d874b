"""`clipdash lr-find CONFIG.toml [--start-lr 1e-7] [--end-lr 10] [--steps 100] [--set K=V]`.

The learning-rate range test (Smith 2015/2017): an exponential LR ramp over a short recorded run,
then suggested LRs (base and max LR for CyclicLR, a constant LR) and a text plot of loss vs LR.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from clipdash import jsonfmt
from clipdash.commands.errors import UsageError
from clipdash.store.layout import DEFAULT_RUNS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.toml", help="the config to test")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last LR (default 10)")
    parser.add_argument("--steps", type=int, default=100,
                        help="optimizer steps of the ramp (default 100)")
    parser.add_argument("--name", help="run name (default: <config name>-lrfind-<timestamp>)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                        help="where the run directory is created (default: ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a dotted config key, as in run")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--json", action="store_true", help="LRs, losses and suggestions as JSON")


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.start_lr) and args.start_lr > 0):
        raise UsageError(f"--start-lr must be > 0, got {args.start_lr:g}")
    if not (math.isfinite(args.end_lr) and args.end_lr > args.start_lr):
        raise UsageError(f"--end-lr must be above --start-lr, got {args.end_lr:g}")
    if args.steps < 2:
        raise UsageError(f"--steps must be >= 2, got {args.steps}")
    from clipdash.analysis.textplot import plot
    from clipdash.engine.config import load_config
    from clipdash.engine.errors import ConfigError, RunError
    from clipdash.engine.lifecycle import default_name, new_run_dir
    from clipdash.engine.lr_find import lr_find, prepare_config

    config_path = Path(args.config)
    try:
        cfg = prepare_config(load_config(config_path, args.overrides), args.start_lr, args.steps)
        run_dir = new_run_dir(args.runs_dir,
                              args.name or default_name(config_path, cfg, "-lrfind"))
        result = lr_find(cfg, run_dir, args.start_lr, args.end_lr, args.steps,
                         progress=not args.no_progress and not args.json)
    except (ConfigError, RunError) as exc:
        raise UsageError(str(exc)) from None
    if result.failed:
        return 1
    if args.json:
        print(jsonfmt.dumps(result.to_json(), indent=1))
        return 0
    s = result.suggestion
    n = len(result.lrs)
    how = "stopped early: the loss diverged" if result.stopped_early else "full ramp"
    print(f"{run_dir.name}: {n} steps, lr {args.start_lr:.3g} -> "
          f"{result.lrs[-1] if result.lrs else args.start_lr:.3g} ({how})")
    from clipdash.analysis.lr_find import smooth

    points = list(zip(result.lrs, result.losses, strict=True))
    smoothed = list(zip(result.lrs, smooth(result.losses).tolist(), strict=True))
    vlines = {}
    if s is not None and s.max_lr is not None:
        vlines = {"b base_lr": s.base_lr, "s steepest": s.steepest, "m max_lr": s.max_lr}
    finite = [v for v in result.losses if math.isfinite(v)]
    # Clip the y range to 4x the first losses so a final blow-up does not flatten the curve.
    cap = 4 * max(finite[: max(1, n // 10)]) if finite else math.inf
    lines = plot({"loss": [(x, y) for x, y in points if y <= cap],
                  "smoothed": [(x, y) for x, y in smoothed if y <= cap]},
                 logx=True, xlabel="learning rate", ylabel="training loss",
                 markers={"loss": ".", "smoothed": "*"}, overlap=False,
                 vlines={k: v for k, v in vlines.items() if v is not None})
    print()
    for line in lines:
        print(line)
    print()
    if s is None or s.max_lr is None:
        print(f"no suggestion: {s.note if s else 'no steps recorded'}")
        return 0
    print(f"suggested LR (constant schedule, steepest descent): {_g(s.steepest)}")
    print(f"CyclicLR bounds (Smith 2017): base_lr {_g(s.base_lr)} (the loss starts to fall), "
          f"max_lr {_g(s.max_lr)} (it stops falling); conservative max: {_g(s.min_loss_div10)}")
    if s.note:
        print(f"note: {s.note}")
    up = 4 * max(1, result.steps_per_epoch)
    print("\n[scheduler]\nname = \"CyclicLR\"\n"
          f"base_lr = {s.base_lr:.3g}\nmax_lr = {s.max_lr:.3g}\nstep_size_up = {up}"
          "   # Smith: 2-10 epochs' worth of steps per half cycle")
    print(f"\nrecord: {run_dir}   watch: clipdash watch {args.runs_dir}")
    return 0
