"""`clipdash sweep CONFIG.toml [--jobs N] [--runs-dir DIR] [--name SWEEP] [--json]`.

Runs every combination of the config's `[sweep]` grid as an ordinary run under
`RUNS_DIR/SWEEP/` (see clipdash/engine/sweep.py), N at a time, with a live table on a terminal
(plain lines otherwise), then prints the runs ranked by the validation metric.
Exit codes: 0 every run finished; 1 some run failed or its combination was invalid; 2 a config
problem no combination escapes (nothing is written); 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from clipdash import jsonfmt
from clipdash.commands.errors import UsageError
from clipdash.store.layout import DEFAULT_RUNS_DIR

REFRESH_S = 0.5
PLAIN_EVERY_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.toml", help="a config with a [sweep] table")
    parser.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                        help="runs trained at the same time, each in its own process (default 1)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                        help="where the sweep folder is created (default: ./runs)")
    parser.add_argument("--name", help="sweep folder name (default: the config file's stem)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a base config key, as in run")
    parser.add_argument("--metric", default="val", help="rank by: val (val accuracy if "
                        "recorded, else val loss), val_loss, val_accuracy, train_loss, "
                        "clip_rate, grad_norm")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (progress goes to stderr)")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


class LiveDisplay:
    """A rich table of the runs in flight, redrawn twice a second."""

    def __init__(self, plan: Any, stderr: bool) -> None:
        from rich.console import Console
        from rich.live import Live

        self.plan = plan
        self.console = Console(stderr=stderr)
        self.done: list[str] = []
        self.last = 0.0
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def started(self, combo: Any, how: str) -> None:
        pass

    def ended(self, combo: Any, outcome: Any) -> None:
        mark = {"finished": "[green]done[/]", "skipped": "[dim]skipped (finished before)[/]"}
        text = mark.get(outcome.status, f"[red]{outcome.status}[/]")
        took = f" in {outcome.seconds:.0f}s" if outcome.seconds else ""
        why = f": {outcome.message}" if outcome.message and outcome.status not in (
            "finished", "skipped") else ""
        self.live.console.print(f"{combo.name}: {text}{took}{why}", highlight=False,
                                markup=True)

    def tick(self, running: Sequence[Any], done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < REFRESH_S:
            return
        self.last = now
        from rich.table import Table

        table = Table(title=f"sweep {self.plan.name}: {done}/{total} done", title_justify="left",
                      box=None, header_style="bold")
        for col in ("RUN", "STEP", "LOSS", "GRAD_NORM", "MAX_NORM", "LR"):
            table.add_column(col)
        for combo in running:
            s = _summary(self.plan.folder / combo.name)
            if s is None:
                table.add_row(combo.name, "starting", "", "", "", "")
                continue
            step = "-" if s.step is None else f"{s.step + 1}/{s.total_steps or '?'}"
            table.add_row(combo.name, step, _fmt(s.loss), _fmt(s.grad_norm_pre),
                          _fmt(s.max_norm), _fmt(s.lr))
        self.live.update(table)

    def close(self) -> None:
        self.live.stop()


class PlainDisplay:
    """One line per start and end, and a status line every 15 s (logs, CI, pipes)."""

    def __init__(self, plan: Any, stderr: bool) -> None:
        self.plan = plan
        self.out = sys.stderr if stderr else sys.stdout
        self.last = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def started(self, combo: Any, how: str) -> None:
        verb = {"resume": "resuming", "restart": "restarting"}.get(how, "starting")
        self._print(f"{verb} {combo.name}")

    def ended(self, combo: Any, outcome: Any) -> None:
        took = f" in {outcome.seconds:.0f}s" if outcome.seconds else ""
        why = f": {outcome.message}" if outcome.message and outcome.status != "finished" else ""
        self._print(f"{combo.name}: {outcome.status}{took}{why}")

    def tick(self, running: Sequence[Any], done: int, total: int) -> None:
        if time.monotonic() - self.last < PLAIN_EVERY_S or not running:
            return
        self.last = time.monotonic()
        parts = []
        for combo in running:
            s = _summary(self.plan.folder / combo.name)
            step = "starting" if s is None or s.step is None else \
                f"step {s.step + 1}/{s.total_steps or '?'} loss {_fmt(s.loss)}"
            parts.append(f"{combo.name} ({step})")
        self._print(f"{done}/{total} done; running: " + "; ".join(parts))

    def close(self) -> None:
        pass


def _summary(run_dir: Path) -> Any:
    from clipdash.store import RunReader, StoreError

    try:
        with RunReader(run_dir) as reader:
            return reader.summary()
    except (StoreError, Exception):  # noqa: BLE001 - a run being created: show "starting"
        return None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from clipdash.analysis.metrics import rank, table
    from clipdash.engine.errors import ConfigError, RunError
    from clipdash.engine.sweep import RESULTS_NAME, plan_sweep, results, run_plan

    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        plan = plan_sweep(args.config, args.runs_dir, args.name, args.overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    n_invalid = sum(1 for c in plan.combos if c.error)
    todo = sum(1 for c in plan.combos if c.action in ("fresh", "restart", "resume"))
    to_err = args.json
    header = (f"sweep {plan.name}: {len(plan.combos)} runs in {plan.folder}/ "
              f"({todo} to run, {len(plan.combos) - todo - n_invalid} already done or busy"
              + (f", {n_invalid} invalid" if n_invalid else "") + f"; --jobs {args.jobs})")
    print(header, file=sys.stderr if to_err else sys.stdout, flush=True)
    tty = (sys.stderr if to_err else sys.stdout).isatty()
    display: LiveDisplay | PlainDisplay = (LiveDisplay if tty else PlainDisplay)(plan, to_err)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    try:
        outcomes = run_plan(plan, args.jobs, display)
    except KeyboardInterrupt:
        display.close()
        print(f"clipdash sweep: interrupted; run it again to resume {plan.folder}",
              file=sys.stderr)
        return 130
    except RunError as exc:
        display.close()
        raise UsageError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    display.close()
    elapsed = time.monotonic() - started
    rows = results(plan, outcomes)
    try:
        metric, ordered = rank(rows, args.metric)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    payload = {"sweep": plan.name, "folder": str(plan.folder), "metric": metric,
               "seconds": round(elapsed, 1), "keys": plan.keys,
               "runs": [r.to_json() for r in ordered]}
    if plan.folder.is_dir():
        try:
            (plan.folder / RESULTS_NAME).write_text(jsonfmt.dumps(payload, indent=1) + "\n")
        except OSError as exc:  # the runs are recorded; only the summary file is missing
            print(f"clipdash sweep: could not write {plan.folder / RESULTS_NAME}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
    if args.json:
        print(jsonfmt.dumps(payload, indent=1))
    else:
        print(f"\nresults, ranked by {metric} ({elapsed:.0f}s):")
        for line in table(ordered, metric):
            print(line)
        print(f"\ncompare: clipdash compare {plan.folder}   "
              f"tensorboard --logdir {Path(args.runs_dir)}  (HParams tab)")
    bad = [o for o in outcomes if o.status in ("failed", "invalid", "interrupted")]
    return 1 if bad else 0
