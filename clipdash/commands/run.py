"""`clipdash run CONFIG.toml [--name] [--runs-dir] [--set KEY=VALUE ...] [--resume RUN]`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from clipdash.commands import torchrun
from clipdash.commands.common import run_dir_arg
from clipdash.commands.errors import UsageError
from clipdash.store.layout import CONFIG_NAME, DEFAULT_RUNS_DIR

ERROR_LOG = "error.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.toml", nargs="?",
                        help="the run's config (with --resume: default is the run's config.toml)")
    parser.add_argument("--name", help="run name (default: <config name>-<timestamp>)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                        help="where the run directory is created (default: ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a dotted config key, TOML-typed "
                        "(e.g. --set clip.max_norm=0.5); repeatable")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue RUN from its latest checkpoint, in the same directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="train on N ranks with torch.distributed (launched through "
                        "torch.distributed.run; gloo on CPU, nccl on CUDA)")
    torchrun.add_arguments(parser)


def default_name(config_path: Path) -> str:
    return f"{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _config_path(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(config to load, run directory being resumed or None)."""
    if args.resume:
        run_dir = run_dir_arg(args.resume, args.runs_dir)
        if worker_rank() == 0:  # other ranks would see rank 0's trainer as a live run
            check_resumable(run_dir)
        return Path(args.config) if args.config else run_dir / CONFIG_NAME, run_dir
    if not args.config:
        raise UsageError("missing CONFIG.toml")
    return Path(args.config), None


def check_resumable(run_dir: Path) -> None:
    """UsageError unless `run_dir` can be resumed: not finished, and no trainer still at it.

    Stopped, failed and lost runs resume; a live run whose process is gone (killed seconds ago,
    before its heartbeat went stale) counts as lost.
    """
    from clipdash.store.commands import process_gone
    from clipdash.store.reader import RunReader
    from clipdash.store.schema import StoreError

    try:
        with RunReader(run_dir) as reader:
            status, row, last = reader.status(), reader.status_row() or {}, reader.last_step()
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if status == "finished":
        steps = "no" if last is None else last + 1
        raise UsageError(f"run {run_dir.name} finished ({steps} steps): nothing to resume "
                         "(start a new run to train further)")
    if status in ("running", "paused") and not process_gone(run_dir):
        raise UsageError(f"run {run_dir.name} is {status} (pid {row.get('pid')} on "
                         f"{row.get('host')}): stop it before resuming it")


def worker_rank() -> int:
    """This process's rank under torchrun (0 otherwise); read without importing torch."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def run(args: argparse.Namespace) -> int:
    launcher = torchrun.launcher(args)  # UsageError for bad --nproc-per-node / --nnodes ...
    if torchrun.wanted(args) and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return launch(args, launcher)
    config_path, resume_dir = _config_path(args)
    from clipdash.engine import ranks
    from clipdash.engine.config import load_config
    from clipdash.engine.errors import ConfigError
    from clipdash.engine.loop import setup

    try:
        cfg = load_config(config_path, args.overrides)
        prepared = setup(cfg)  # under torchrun this joins the process group
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        run_dir = Path(args.runs_dir) / (args.name or default_name(config_path))
        problem = (f"{run_dir} already exists (pick another --name, or --resume it)"
                   if run_dir.exists() else None)
        # Every rank takes rank 0's name and verdict (default names carry a timestamp).
        run_dir, problem = ranks.agree((run_dir, problem))
        if problem:
            raise UsageError(problem)
    return train(cfg, prepared, run_dir, resume=resume_dir is not None,
                 progress=not args.no_progress, runs_dir=args.runs_dir)


def launch(args: argparse.Namespace, launcher: list[str]) -> int:
    """`--nproc-per-node N`: check the config, then run N ranks via torch.distributed.run.

    The launcher runs in its own session, so Ctrl-C reaches the ranks once, through this
    process, as a SIGTERM (they then stop together at the same step). The exit code is the
    run's: 0 finished or stopped, 1 failed.
    """
    config_path, resume_dir = _config_path(args)
    from clipdash.engine.config import load_config
    from clipdash.engine.errors import ConfigError

    try:
        load_config(config_path, args.overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    worker = ["run", "--runs-dir", args.runs_dir]
    if args.config:
        worker.insert(1, args.config)
    if resume_dir is not None:
        worker += ["--resume", str(resume_dir)]
        run_dir = resume_dir
    else:
        run_dir = Path(args.runs_dir) / (args.name or default_name(config_path))
        if run_dir.exists() and args.node_rank == 0:  # node 0 may have made it already
            raise UsageError(f"{run_dir} already exists (pick another --name, or --resume it)")
        worker += ["--name", run_dir.name]
    for override in args.overrides:
        worker += ["--set", override]
    if args.no_progress:
        worker.append("--no-progress")
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "clipdash", *worker]
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        # To the ranks themselves where we can see them: they stop together and exit 0, and
        # the launcher then ends quietly (signalled, it prints a traceback and exits 1).
        ranks = _children(proc.pid)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not ranks:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    from clipdash.store.layout import is_run_dir
    from clipdash.store.reader import RunReader

    if is_run_dir(run_dir):
        with RunReader(run_dir) as reader:
            state = reader.status()
        if state in ("finished", "stopped"):
            return 0
        if state == "failed":
            return 1
    return code if code in (0, 2) else 1


def train(cfg: object, prepared: object, run_dir: Path, *, resume: bool, progress: bool,
          runs_dir: str, meta: dict | None = None) -> int:
    """Create (or reopen) the run directory and train; 0 finished/stopped, 1 failed.

    Under torch.distributed only rank 0 writes the directory, the record and the checkpoints;
    the other ranks train in step with it.
    """
    from clipdash.engine import ranks

    try:
        return _train(cfg, prepared, run_dir, resume=resume, progress=progress,
                      runs_dir=runs_dir, meta=meta, lead=ranks.is_leader())
    finally:
        ranks.shutdown()


def _train(cfg: object, prepared: object, run_dir: Path, *, resume: bool, progress: bool,
           runs_dir: str, meta: dict | None, lead: bool) -> int:
    from clipdash.engine.checkpoint import CheckpointError
    from clipdash.engine.config import dump_toml
    from clipdash.engine.loop import Trainer

    created = lead and not run_dir.exists()
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / CONFIG_NAME).write_text(
                dump_toml(cfg.to_dict()))  # type: ignore[attr-defined]
    try:
        trainer = Trainer(prepared, run_dir, resume=resume, progress=progress,  # type: ignore[arg-type]
                          meta=meta)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    except Exception:
        if created:  # nothing was recorded: leave no half-made run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not lead:
        return _follow(trainer)
    if resume and trainer.restored_from is None:
        print(f"clipdash run: {run_dir.name} has no checkpoint: starting over from step 0 in "
              f"{run_dir}", file=sys.stderr)
    elif resume:
        print(f"clipdash run: resuming {run_dir.name} from step {trainer.step} "
              f"({trainer.restored_from.name if trainer.restored_from else ''})", file=sys.stderr)
    try:
        state = trainer.run()
    except Exception as exc:  # noqa: BLE001 - the run failed; the record says why
        (run_dir / ERROR_LOG).write_text(traceback.format_exc())
        print(f"clipdash run: {run_dir.name} failed at step {trainer.step}: "
              f"{type(exc).__name__}: {exc} (traceback in {run_dir / ERROR_LOG})", file=sys.stderr)
        return 1
    latest = trainer.tracker.latest()
    loss = latest.get("loss")
    print(f"{run_dir.name}: {state} after {trainer.step} steps"
          + (f", loss {loss:.4g}" if loss is not None else "")
          + (f", val loss {trainer.last_metrics['loss']:.4g}" if trainer.last_metrics else "")
          + (f", {trainer.tracker.nonfinite_steps} non-finite steps skipped"
             if trainer.tracker.nonfinite_steps else ""))
    print(f"  record: {run_dir}   watch: clipdash watch {runs_dir}   "
          f"tensorboard --logdir {runs_dir}")
    return 0


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _follow(trainer: object) -> int:
    """A non-zero rank: train in step with rank 0, which records and reports."""
    try:
        trainer.run()  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - rank 0's record says what happened to the run
        print(f"clipdash run: rank {os.environ.get('RANK')} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0
