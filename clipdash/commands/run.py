"""`clipdash run CONFIG.toml [--name] [--runs-dir] [--set KEY=VALUE ...] [--resume RUN]`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from clipdash.commands import torchrun
from clipdash.commands.common import run_dir_arg
from clipdash.commands.errors import UsageError
from clipdash.store.layout import CONFIG_NAME, DEFAULT_RUNS_DIR


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


def _config_path(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(config to load, run directory being resumed or None)."""
    if args.resume:
        run_dir = run_dir_arg(args.resume, args.runs_dir)
        return Path(args.config) if args.config else run_dir / CONFIG_NAME, run_dir
    if not args.config:
        raise UsageError("missing CONFIG.toml")
    return Path(args.config), None


def worker_rank() -> int:
    """This process's rank under torchrun (0 otherwise); read without importing torch."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """The engine's own errors (bad config, a run that cannot start) are usage errors here."""
    from clipdash.engine.errors import ConfigError, RunError

    try:
        yield
    except (ConfigError, RunError) as exc:
        raise UsageError(str(exc)) from None


def _checked(args: argparse.Namespace) -> tuple[Any, Path, Path | None, Any]:
    """(config, config path, run being resumed, its ResumeChanges): every check that needs
    no torch.distributed group, so that the launcher and each rank refuse the same things."""
    from clipdash.engine import lifecycle
    from clipdash.engine.config import check_device, load_config

    config_path, resume_dir = _config_path(args)
    with _usage_errors():
        if resume_dir is not None and worker_rank() == 0:
            # Other ranks would see rank 0's trainer as a live run.
            lifecycle.check_resumable(resume_dir)
        cfg = load_config(config_path, args.overrides)
        check_device(cfg)  # the launcher too: its ranks would each fail with a traceback
        changes = lifecycle.resume_changes(resume_dir, cfg) if resume_dir is not None else None
    return cfg, config_path, resume_dir, changes


def _new_run_dir(args: argparse.Namespace, config_path: Path, cfg: Any) -> Path:
    from clipdash.engine import lifecycle

    with _usage_errors():
        return lifecycle.new_run_dir(
            args.runs_dir, args.name or lifecycle.default_name(config_path, cfg))


def run(args: argparse.Namespace) -> int:
    launcher = torchrun.launcher(args)  # UsageError for bad --nproc-per-node / --nnodes ...
    if torchrun.wanted(args) and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return launch(args, launcher)
    cfg, config_path, resume_dir, changes = _checked(args)
    from clipdash.engine import lifecycle, ranks
    from clipdash.engine.loop import setup

    with _usage_errors():
        prepared = setup(cfg)  # under torchrun this joins the process group
        if resume_dir is not None:
            lifecycle.check_resume_length(resume_dir, prepared.total_steps)
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        # Every rank takes rank 0's name and verdict (default names carry a timestamp).
        try:
            verdict: tuple[Path | None, str | None] = (_new_run_dir(args, config_path, cfg), None)
        except UsageError as exc:
            verdict = (None, str(exc))
        found, problem = ranks.agree(verdict)
        if problem or found is None:
            raise UsageError(problem or "no run directory")
        run_dir = found
    with _usage_errors():
        return lifecycle.train(cfg, prepared, run_dir, resume=resume_dir is not None,
                               progress=not args.no_progress, runs_dir=args.runs_dir,
                               changes=changes)


def launch(args: argparse.Namespace, launcher: list[str]) -> int:
    """`--nproc-per-node N`: check the config, then run N ranks via torch.distributed.run.

    The launcher runs in its own session, so Ctrl-C reaches the ranks once, through this
    process, as a SIGTERM (they then stop together at the same step). The exit code is the
    run's: 0 finished or stopped, 1 failed.
    """
    cfg, config_path, resume_dir, _ = _checked(args)
    worker = ["run", "--runs-dir", args.runs_dir]
    if args.config:
        worker.insert(1, args.config)
    if resume_dir is not None:
        worker += ["--resume", str(resume_dir)]
        run_dir = resume_dir
    else:
        if args.node_rank == 0:
            run_dir = _new_run_dir(args, config_path, cfg)
        else:  # node 0 may have made it already; its rank 0 names and checks the run
            if not args.name:
                raise UsageError("--node-rank > 0 needs the --name that node 0 uses")
            run_dir = Path(args.runs_dir) / args.name
        worker += ["--name", str(run_dir.relative_to(args.runs_dir))]
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


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
