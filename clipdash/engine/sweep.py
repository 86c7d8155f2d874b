"""Sweeps: expand a config's `[sweep]` grid, validate every combination, run them in parallel.

    [sweep]
    "clip.max_norm" = [0.1, 1.0]
    scheduler = [{ name = "StepLR", step_size = 10 }, { name = "ExponentialLR", gamma = 0.9 }]

Each key is a dotted config key (nested `[sweep.clip]` tables work too) with a list of values; a
table value replaces that whole table, and an empty table `{}` removes it (`scheduler = [{}]`
is "no scheduler"). Every combination (first key slowest) becomes an ordinary run directory
`RUNS_DIR/SWEEP/<name>`, named after its values (`max_norm=0.1,scheduler=StepLR`), trained by a
child process (`python -m clipdash.engine.sweep child ...`) so N run in parallel and a crash
stays in its own run. Bookkeeping lives in `SWEEP/.sweep/` (the resolved config handed to each
child, and each child's output log); `SWEEP/results.json` holds the last results.

Validation happens before anything starts: a problem that no combination can escape (an
unreadable config, a malformed `[sweep]`, a sweep key outside the config's sections, every
combination invalid, an existing run whose config differs) is a ConfigError, i.e. exit 2 with
nothing written. A combination whose own config is invalid is reported as an "invalid" run and
the others go ahead.

Re-running a sweep resumes it: finished runs are skipped; runs that stopped, failed or were
lost continue from their latest checkpoint when they have one and start over otherwise.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clipdash.engine.builtins import fmt
from clipdash.engine.errors import ConfigError, RunError
from clipdash.store.layout import CHECKPOINT_DIR, CONFIG_NAME, DEFAULT_RUNS_DIR, is_run_dir
from clipdash.store.names import check_run_name

BOOKKEEPING = ".sweep"
RESULTS_NAME = "results.json"
SECTIONS = ("model", "data", "optimizer", "scheduler", "clip", "train")
TOP_KEYS = ("seed", "device", "name")
POLL_S = 0.2
STOP_GRACE_S = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_NAME = 180


# --------------------------------------------------------------------------- the grid


def flatten(sweep: Any, source: str, prefix: str = "") -> list[tuple[str, list[Any]]]:
    """[(dotted key, alternatives)] from the raw `[sweep]` table, in file order."""
    where = f"sweep.{prefix}".rstrip(".") if prefix else "sweep"
    if not isinstance(sweep, dict):
        raise ConfigError(source, where, f"expected a table of lists, got {fmt(sweep)}")
    if not sweep:
        raise ConfigError(source, where, "empty: give at least one key = [values]")
    out: list[tuple[str, list[Any]]] = []
    for k, v in sweep.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, source, key + ".")
        elif not isinstance(v, list) or not v:
            raise ConfigError(source, f"sweep.{key}" if "." not in key else f'sweep."{key}"',
                              f"expected a non-empty list of alternatives, got {fmt(v)}")
        else:
            head = key.split(".")[0]
            if head not in SECTIONS and head not in TOP_KEYS:
                raise ConfigError(source, f'sweep."{key}"',
                                  f"{head!r} is not a config section or key "
                                  f"({', '.join(SECTIONS + TOP_KEYS)})")
            out.append((key, v))
    return out


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key; a table value replaces the table, an empty one removes it."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("", ".".join(parts[: i + 1]), f"is {fmt(child)}, not a table")
        node = child
    last = parts[-1]
    if isinstance(value, dict) and not value:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def value_label(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number(v)
    if isinstance(v, list):
        return "-".join(value_label(x) for x in v)
    if isinstance(v, dict):
        if not v:
            return "none"
        return str(v.get("name") or v.get("kind") or v.get("mode") or "table")
    return str(v)


def labels(values: Sequence[Any]) -> list[str]:
    """Short labels; tables that share a name get the arguments that tell them apart."""
    out = [value_label(v) for v in values]
    for label in set(out):
        same = [i for i, x in enumerate(out) if x == label]
        if len(same) < 2 or not all(isinstance(values[i], dict) for i in same):
            continue
        keys = sorted({k for i in same for k in values[i]} - {"name", "kind", "mode"})
        differ = [k for k in keys if len({json.dumps(values[i].get(k), sort_keys=True)
                                          for i in same}) > 1]
        for i in same:
            extra = "".join(f"-{k}{value_label(values[i][k])}" for k in differ
                            if k in values[i])
            out[i] = label + extra
    for label in sorted(set(out)):  # still equal (identical tables): number them
        dup = [j for j, x in enumerate(out) if x == label]
        if len(dup) > 1:
            for n, j in enumerate(dup, start=1):
                out[j] = f"{label}-{n}"
    return out


def short_keys(keys: Sequence[str]) -> list[str]:
    """`clip.max_norm` -> `max_norm`, unless two keys would then share a name."""
    last = [k.split(".")[-1] for k in keys]
    return [s if last.count(s) == 1 else k for s, k in zip(last, keys, strict=True)]


def safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text).strip(".") or "run"
    if len(name) > MAX_NAME:
        import hashlib

        name = name[: MAX_NAME - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return name


def hparam_value(v: Any, label: str) -> bool | int | float | str:
    """What TensorBoard's HParams tab shows: numbers, bools and strings as they are."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return label


# --------------------------------------------------------------------------- the plan


@dataclass
class Combo:
    name: str
    values: dict[str, Any]
    hparams: dict[str, bool | int | float | str]
    config: dict[str, Any] | None = None  # resolved, without [sweep]; None when invalid
    error: str | None = None
    action: str = "fresh"  # fresh | resume | restart | skip | busy | invalid
    error_note: str | None = None  # why a busy run is busy


@dataclass
class Plan:
    name: str
    folder: Path
    source: str
    keys: list[str]
    combos: list[Combo] = field(default_factory=list)

    @property
    def bookkeeping(self) -> Path:
        return self.folder / BOOKKEEPING

    def config_file(self, combo: Combo) -> Path:
        return self.bookkeeping / "configs" / f"{combo.name}.toml"

    def log_file(self, combo: Combo) -> Path:
        return self.bookkeeping / "logs" / f"{combo.name}.log"


def plan_sweep(config_path: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR,
               name: str | None = None, overrides: Sequence[str] = ()) -> Plan:
    """Expand and validate every combination; decide what each one needs (see module doc)."""
    from clipdash.engine.config import config_from_dict, dump_toml, load_raw

    source = str(config_path)
    raw = load_raw(config_path, overrides)
    if "sweep" not in raw:
        raise ConfigError(source, "sweep", "no [sweep] table: nothing to sweep "
                                           "(use `clipdash run` for a single run)")
    grid = flatten(raw.pop("sweep"), source)
    keys = [k for k, _ in grid]
    try:
        sweep_name = check_run_name(name or Path(config_path).stem, runs_dir)
    except ValueError as exc:
        raise ConfigError(source, "--name", str(exc)) from None
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ConfigError(source, "--runs-dir", f"{runs_dir} is not a directory")
    plan = Plan(sweep_name, Path(runs_dir) / sweep_name, source, keys)
    if is_run_dir(plan.folder):
        raise ConfigError(source, "", f"{plan.folder} is a run, not a sweep folder "
                                      "(pick another --name)")
    shorts = short_keys(keys)
    all_labels = [labels(values) for _, values in grid]
    seen: dict[str, int] = {}
    for choice in itertools.product(*[range(len(values)) for _, values in grid]):
        values = {k: grid[j][1][i] for j, (k, i) in enumerate(zip(keys, choice, strict=True))}
        tags = [all_labels[j][i] for j, i in enumerate(choice)]
        combo_name = safe_name(",".join(f"{s}={t}" for s, t in zip(shorts, tags, strict=True)))
        if combo_name in seen:
            seen[combo_name] += 1
            combo_name = f"{combo_name}-{seen[combo_name]}"
        seen.setdefault(combo_name, 1)
        hparams = {k: hparam_value(values[k], t) for k, t in zip(keys, tags, strict=True)}
        combo = Combo(combo_name, values, hparams)
        combo_raw = copy.deepcopy(raw)
        try:
            for k, v in values.items():
                try:
                    set_key(combo_raw, k, v)
                except ConfigError as exc:
                    raise ConfigError(source, exc.key, exc.problem) from None
            cfg = config_from_dict(combo_raw, f"{source} [{combo_name}]")
            resolved = cfg.to_dict()
            resolved.pop("sweep", None)
            # Normalised through the TOML writer: what the run's config.toml will read back as.
            combo.config = tomllib.loads(dump_toml(resolved))
        except ConfigError as exc:  # the file is in the header; the key says what is wrong
            combo.error = ": ".join(p for p in (exc.key, exc.problem) if p)
            combo.action = "invalid"
        plan.combos.append(combo)
    if all(c.error for c in plan.combos):
        first = f"{source}: {plan.combos[0].error}"
        more = f" (all {len(plan.combos)} combinations are invalid; this is the first)" \
            if len(plan.combos) > 1 else ""
        raise ConfigError("", "", f"no valid combination: {first}{more}")
    _decide(plan)
    return plan


def _live(status: str) -> bool:
    from clipdash.store.reader import LIVE_STATES

    return status in LIVE_STATES


def _decide(plan: Plan) -> None:
    """What each valid combination needs, given what its run directory already holds."""
    from clipdash.store import RunReader, StoreError
    from clipdash.store.lock import holder

    for combo in plan.combos:
        if combo.error:
            continue
        run_dir = plan.folder / combo.name
        if not run_dir.exists():
            combo.action = "fresh"
            continue
        who = holder(run_dir)
        if who is not None:  # a live writer, even a frozen one whose record reads "lost"
            combo.action = "busy"
            combo.error_note = f"being written by pid {who.get('pid')} on {who.get('host')}"
            continue
        if not is_run_dir(run_dir):
            combo.action = "restart"  # a run that never recorded a step: nothing to keep
            continue
        try:
            with open(run_dir / CONFIG_NAME, "rb") as f:
                existing = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            existing = None
        if existing != combo.config:
            raise ConfigError(plan.source, "", (
                f"{run_dir} exists with a different config than this sweep now gives it; "
                f"sweep under another --name, or delete {plan.folder} to start over"))
        try:
            with RunReader(run_dir) as reader:
                status = reader.status()
        except StoreError:
            status = "unknown"
        if status == "finished":
            combo.action = "skip"
        elif _live(status):
            combo.action = "busy"
        elif any((run_dir / CHECKPOINT_DIR).glob("step-*.pt")):
            combo.action = "resume"
        else:
            combo.action = "restart"


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    name: str
    status: str  # finished | failed | invalid | stopped | skipped | busy | interrupted
    seconds: float = 0.0
    returncode: int | None = None
    message: str | None = None


class Display(Protocol):
    def started(self, combo: Combo, how: str) -> None: ...

    def ended(self, combo: Combo, outcome: Outcome) -> None: ...

    def tick(self, running: Sequence[Combo], done: int, total: int) -> None: ...


def child_command(plan: Plan, combo: Combo, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "clipdash.engine.sweep", "child",
           str(plan.config_file(combo)), "--run-dir", str(plan.folder / combo.name),
           "--sweep", plan.name, "--hparams", json.dumps(combo.hparams)]
    return cmd + (["--resume"] if resume else [])


def child_env(jobs: int) -> dict[str, str]:
    """Split the CPU cores between the parallel runs unless the user already chose."""
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else None


class _Child:
    def __init__(self, combo: Combo, proc: subprocess.Popen[bytes], log: Any) -> None:
        self.combo = combo
        self.proc = proc
        self.log = log
        self.started = time.monotonic()


def run_plan(plan: Plan, jobs: int, display: Display,
             now: Callable[[], float] = time.monotonic) -> list[Outcome]:
    """Run what needs running, `jobs` at a time; Ctrl-C stops the children cleanly."""
    from clipdash.engine.config import dump_toml

    outcomes: dict[str, Outcome] = {}
    queue: deque[Combo] = deque()
    for combo in plan.combos:
        if combo.action == "invalid":
            outcomes[combo.name] = Outcome(combo.name, "invalid", message=combo.error)
        elif combo.action == "skip":
            outcomes[combo.name] = Outcome(combo.name, "skipped", message="already finished")
        elif combo.action == "busy":
            outcomes[combo.name] = Outcome(combo.name, "busy", message=combo.error_note
                                           or "running in another process")
        else:
            queue.append(combo)
    for combo in plan.combos:
        if combo.name in outcomes:
            display.ended(combo, outcomes[combo.name])
    if queue:
        try:
            (plan.bookkeeping / "configs").mkdir(parents=True, exist_ok=True)
            (plan.bookkeeping / "logs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # nothing has started: a usage problem, exit 2
            from clipdash.engine.lifecycle import disk_problem

            why = disk_problem(exc, plan.folder) or exc.strerror or str(exc)
            raise RunError(f"cannot write the sweep folder {plan.folder}: {why}") from None
    env = child_env(jobs)
    running: list[_Child] = []
    total = len(plan.combos)

    def start(combo: Combo) -> None:
        run_dir = plan.folder / combo.name
        if combo.action == "restart":
            shutil.rmtree(run_dir, ignore_errors=True)
        assert combo.config is not None
        try:
            plan.config_file(combo).write_text(dump_toml(combo.config))
            log = open(plan.log_file(combo), "ab")  # noqa: SIM115 - closed when the child ends
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {combo.action}\n".encode())
            log.flush()
        except OSError as exc:  # a full disk mid-sweep fails this run, not the whole sweep
            from clipdash.engine.lifecycle import disk_problem

            why = disk_problem(exc, plan.folder) or exc.strerror or str(exc)
            outcomes[combo.name] = Outcome(combo.name, "failed", message=f"not started: {why}")
            display.ended(combo, outcomes[combo.name])
            return
        proc = subprocess.Popen(child_command(plan, combo, combo.action == "resume"),
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # Ctrl-C reaches only us; we relay it
        running.append(_Child(combo, proc, log))
        display.started(combo, combo.action)

    def finish(child: _Child, interrupted: bool = False) -> None:
        child.log.close()
        code = child.proc.returncode
        status = {0: "finished", 2: "invalid"}.get(code, "failed")
        run_dir = plan.folder / child.combo.name
        message = None
        if code == 0 and is_run_dir(run_dir):
            from clipdash.store import RunReader

            with RunReader(run_dir) as reader:
                status = reader.status()  # finished, or stopped (ctl stop / signal)
                last = reader.last_step()
            if status != "finished":
                message = (f"stopped after {0 if last is None else last + 1} steps; "
                           "running the sweep again resumes it")
        if interrupted and status != "finished":
            status = "interrupted"
        if status != "finished" and message is None:
            message = last_line(plan.log_file(child.combo))
        outcome = Outcome(child.combo.name, status, now() - child.started, code, message)
        outcomes[child.combo.name] = outcome
        display.ended(child.combo, outcome)

    try:
        while queue or running:
            while queue and len(running) < max(1, jobs):
                start(queue.popleft())
            for child in list(running):
                if child.proc.poll() is not None:
                    running.remove(child)
                    finish(child)
            display.tick([c.combo for c in running], len(outcomes), total)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for child in running:  # the tracker turns SIGINT into a clean stop with a checkpoint
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            finish(child, interrupted=True)
        for combo in queue:
            outcomes[combo.name] = Outcome(combo.name, "interrupted", message="not started")
        raise
    return [outcomes[c.name] for c in plan.combos]


def results(plan: Plan, outcomes: Sequence[Outcome]) -> list[Any]:
    """RunMetrics for every combination (invalid ones too), in plan order."""
    from clipdash.analysis.metrics import RunMetrics, run_metrics

    by_name = {o.name: o for o in outcomes}
    out = []
    for combo in plan.combos:
        outcome = by_name.get(combo.name)
        run_dir = plan.folder / combo.name
        if combo.error or not is_run_dir(run_dir):
            m = RunMetrics(name=combo.name, path=str(run_dir),
                           status="invalid" if combo.error else (
                               outcome.status if outcome else "missing"),
                           hparams=dict(combo.hparams),
                           error=combo.error or (outcome.message if outcome else None))
        else:
            m = run_metrics(run_dir)
            m.hparams = dict(combo.hparams)
            if outcome and outcome.status in ("failed", "invalid"):
                m.status, m.error = outcome.status, outcome.message
        out.append(m)
    return out


# --------------------------------------------------------------------------- the child


def write_hparams(run_dir: Path, hparams: dict[str, Any], sweep: str) -> None:
    """The HParams tab's per-run record (session start info), in its own event file.

    Only the session info is written, no experiment summary: TensorBoard uses the first
    experiment summary it finds in the whole logdir and then ignores every other run's session
    info, so `tensorboard --logdir runs` over two sweeps would lose one. Without it, the tab
    builds the experiment from all the runs' session infos and scalar tags.
    """
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    from clipdash.track.tensorboard import TensorBoardSink

    summary = hparams_pb(hparams, trial_id=f"{sweep}/{run_dir.name}")
    sink = TensorBoardSink(run_dir, [])
    try:
        sink.write_raw(0, list(summary.value))
    finally:
        sink.close()


def child_main(argv: Sequence[str]) -> int:
    """One sweep member: `clipdash run` with sweep metadata and HParams, no progress bar."""
    parser = argparse.ArgumentParser(prog="clipdash.engine.sweep child")
    parser.add_argument("config")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--hparams", default="{}")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    from clipdash.engine.config import load_config
    from clipdash.engine.lifecycle import train
    from clipdash.engine.loop import setup

    try:
        cfg = load_config(args.config)
        prepared = setup(cfg)
    except ConfigError as exc:
        print(f"clipdash sweep: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    hparams = json.loads(args.hparams)
    created = not run_dir.exists()
    try:
        if not args.resume:
            write_hparams(run_dir, hparams, args.sweep)
        return train(cfg, prepared, run_dir, resume=args.resume, progress=False,
                     runs_dir=str(run_dir.parent),
                     meta={"sweep": args.sweep, "hparams": hparams})
    except RunError as exc:  # locked by another writer, unsafe checkpoint, disk problems
        print(f"clipdash sweep: {exc}", file=sys.stderr)
        return 2
    finally:
        if created and not is_run_dir(run_dir):  # leave no half-made run behind
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit("usage: python -m clipdash.engine.sweep child CONFIG --run-dir DIR --sweep NAME")
