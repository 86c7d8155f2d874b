"""The life of one run: name it, create or reopen its directory, train, report how it ended.

`clipdash run`, sweep members and lr-find all go through here, so every run gets the same
guarantees:

- Nothing half-made is left behind when a run cannot start (bad runs dir, full disk, a name
  the file system refuses): the error is a RunError (one line; commands exit 2).
- A resume is refused, before the run is touched, while another process writes the run (the
  writer lock, which a frozen trainer still holds), when it finished, when the checkpoint is
  unsafe, or when `--set` changes what the checkpoint was trained with (model, data, optimizer,
  scheduler, seed, clip mode, loss). `clip.max_norm`, `clip.max_value` and `optimizer.lr` are
  applied as control changes from the resume step, with an event, and config.toml is rewritten
  to what the resumed run uses.
- A run that fails while training (any exception, including one raised while the record is
  closed) exits 1 with one line that names the cause (a full disk says so, and where), and the
  traceback in `error.log`. A little space is reserved for that file up front, so it can be
  written even when the disk is full.

Under torch.distributed only rank 0 writes the directory, the record and the checkpoints; the
other ranks train in step with it (`_follow`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdash.engine.config import Config, dump_toml, load_config, parse_toml
from clipdash.engine.errors import ConfigError, RunError
from clipdash.store import lock
from clipdash.store.layout import CONFIG_NAME
from clipdash.store.names import check_run_name, default_run_name

ERROR_LOG = "error.log"
ERROR_RESERVE = ".error.log.reserve"
RESERVE_BYTES = 64 * 1024  # a traceback and then some
LOW_SPACE_BYTES = 1 << 20
# Keys a resume may change in place: applied as control changes (key in the run's control API).
RESUME_CONTROLS: dict[tuple[str, ...], str] = {
    ("clip", "max_norm"): "max_norm", ("clip", "max_value"): "max_value",
    ("optimizer", "lr"): "lr"}
# Keys a resume may change freely: they do not touch the checkpointed state (train.loss does).
RESUME_FREE = ("train", "name", "device", "sweep")
RESUME_FIXED = (("train", "loss"),)


# --------------------------------------------------------------------------- naming


def default_name(config_path: Path, cfg: Config | None = None, suffix: str = "") -> str:
    """`<config name or [name] prefix><suffix>-<timestamp>`, the default for every run kind."""
    prefix = (cfg.name if cfg is not None and cfg.name else None) or Path(config_path).stem
    return default_run_name(prefix + suffix)


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """The directory for a new run named `name` in `runs_dir`; RunError if it cannot be one."""
    try:
        name = check_run_name(name, runs_dir)
    except ValueError as exc:
        raise RunError(f"--name: {exc}") from None
    root = Path(runs_dir)
    if root.exists() and not root.is_dir():
        raise RunError(f"--runs-dir {root} is not a directory")
    run_dir = root / name
    # A component of the name that is a file, or a link out of the runs dir, is refused too.
    for parent in [*reversed(run_dir.relative_to(root).parents)][1:]:
        if (root / parent).is_symlink() or ((root / parent).exists()
                                            and not (root / parent).is_dir()):
            raise RunError(f"{root / parent} is not a directory inside {root}")
    if run_dir.exists() or run_dir.is_symlink():
        raise RunError(f"{run_dir} already exists (pick another --name, or --resume it)")
    return run_dir


# --------------------------------------------------------------------------- resuming


def check_resumable(run_dir: Path) -> None:
    """RunError unless `run_dir` can be resumed: not finished, and no trainer still at it.

    Stopped, failed and lost runs resume. A process that still holds the run's writer lock
    blocks it whatever the record says (a SIGSTOP'd trainer reads "lost" but would write again
    after SIGCONT); a live-looking run whose process is gone counts as lost.
    """
    from clipdash.store.commands import process_gone
    from clipdash.store.reader import LIVE_STATES, RunReader
    from clipdash.store.schema import StoreError

    who = lock.holder(run_dir)
    if who is not None:
        raise RunError(f"run {run_dir.name} is being written by another process (pid "
                       f"{who.get('pid', '?')} on {who.get('host', '?')}): stop it before "
                       "resuming it")
    try:
        with RunReader(run_dir) as reader:
            status, row, last = reader.status(), reader.status_row() or {}, reader.last_step()
    except StoreError as exc:
        raise RunError(str(exc)) from None
    if status == "finished":
        steps = "no" if last is None else last + 1
        raise RunError(f"run {run_dir.name} finished ({steps} steps): nothing to resume "
                       "(start a new run to train further)")
    if status in LIVE_STATES and not process_gone(run_dir):
        raise RunError(f"run {run_dir.name} is {status} (pid {row.get('pid')} on "
                       f"{row.get('host')}): stop it before resuming it")


@dataclass
class ResumeChanges:
    """What `--set` changes on a resume: control changes to apply, and the config to record."""

    controls: dict[str, float] = field(default_factory=dict)
    """Control key (max_norm, max_value, lr) -> new value, applied from the resume step."""


def _leaves(d: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def resume_changes(run_dir: Path, cfg: Config) -> ResumeChanges:
    """Compare the config a resume would use with the one the run was trained with.

    RunError (the run untouched) when a key that the checkpoint depends on changed.
    """
    path = run_dir / CONFIG_NAME
    try:
        # Resolved the same way as the new one, so defaults written out or left out compare equal.
        old = _resolved(load_config(path))
    except ConfigError as exc:
        raise RunError(f"cannot check the resume against the run's config: {exc}") from None
    new = _resolved(cfg)
    before, after = _leaves(old), _leaves(new)
    changes = ResumeChanges()
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b or (key[0] in RESUME_FREE and key[:2] not in RESUME_FIXED):
            continue
        control = RESUME_CONTROLS.get(key)
        if control is not None and b is not None and _settable(control, new):
            changes.controls[control] = float(b)
            continue
        dotted = ".".join(key)
        raise RunError(f"{dotted}: the checkpoint of {run_dir.name} was trained with "
                       f"{dotted} = {a!r}, and a resume cannot change it (now {b!r}); start a "
                       "new run instead")
    return changes


def _resolved(cfg: Config) -> dict[str, Any]:
    return parse_toml(dump_toml(cfg.to_dict()), cfg.source)


def _settable(control: str, new: dict[str, Any]) -> bool:
    mode = new.get("clip", {}).get("mode", "norm")
    return control == "lr" or (control, mode) in (("max_norm", "norm"), ("max_value", "value"))


def check_resume_length(run_dir: Path, total_steps: int) -> None:
    """A run whose checkpoint is past its (new) last step has nothing to train: refuse."""
    from clipdash.engine import checkpoint

    path = checkpoint.latest(run_dir)
    if path is not None and checkpoint.step_of(path) > total_steps:
        raise RunError(f"{run_dir.name}: its checkpoint is at step {checkpoint.step_of(path)}, "
                       f"past the {total_steps} steps this config trains (raise "
                       "train.max_steps or train.epochs)")


# --------------------------------------------------------------------------- training


def train(cfg: Config, prepared: Any, run_dir: Path, *, resume: bool, progress: bool,
          runs_dir: str | Path, meta: dict[str, Any] | None = None,
          changes: ResumeChanges | None = None, hooks: Any = None, report: bool = True) -> int:
    """Create (or reopen) the run directory and train; 0 finished/stopped, 1 failed.

    RunError (nothing left behind) when the run cannot start. `hooks` (a loop.LoopHooks)
    varies the loop (lr-find); `report` prints the closing summary on stdout.
    """
    from clipdash.engine import ranks

    try:
        return _train(cfg, prepared, run_dir, resume=resume, progress=progress,
                      runs_dir=runs_dir, meta=meta, lead=ranks.is_leader(), changes=changes,
                      hooks=hooks, report=report)
    finally:
        ranks.shutdown()


def disk_problem(exc: BaseException | None, run_dir: Path) -> str | None:
    """A one-line account of a file-system failure anywhere in `exc`'s chain, naming the dir."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        text = str(exc).lower()
        if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
            return f"no space left on the disk holding {run_dir}"
        if code == errno.EROFS or "readonly database" in text or "read-only" in text:
            return f"the file system holding {run_dir} is read-only"
        if code in (errno.EACCES, errno.EPERM):
            return f"no permission to write in {run_dir}"
        if code == errno.EIO or "disk i/o error" in text:
            # SQLite reports a full disk as an I/O error when its shared-memory file cannot
            # grow: look at the disk before blaming the hardware.
            if _free_bytes(run_dir) < LOW_SPACE_BYTES:
                return f"no space left on the disk holding {run_dir}"
            return f"an I/O error writing {run_dir}"
        exc = exc.__cause__ or exc.__context__
    return None


def _free_bytes(path: Path) -> int:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return 1 << 62


def _create(cfg: Config, run_dir: Path) -> None:
    """Make the run directory with its config.toml and the error.log reserve; RunError if not."""
    existed = run_dir.exists()  # a sweep member's folder holds its HParams record already
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(run_dir, cfg)
    except OSError as exc:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        problem = disk_problem(exc, run_dir) or (exc.strerror or str(exc))
        raise RunError(f"cannot create the run directory {run_dir}: {problem}") from None


def write_new(path: Path, data: bytes) -> None:
    """Write `path` as a new file of this process's own.

    Run directories are untrusted: a planted symlink named like one of our files must not
    make us write through it (as root, onto anything). Whatever has the name is removed first
    and the file is created with O_EXCL | O_NOFOLLOW.
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_config(run_dir: Path, cfg: Config) -> None:
    tmp = run_dir / f".{CONFIG_NAME}.tmp"
    write_new(tmp, dump_toml(cfg.to_dict()).encode())
    os.replace(tmp, run_dir / CONFIG_NAME)


def _reserve(run_dir: Path) -> None:
    """Hold a little disk space so that error.log can be written on a full disk."""
    with contextlib.suppress(OSError):
        write_new(run_dir / ERROR_RESERVE, b"\0" * RESERVE_BYTES)


def _unreserve(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (run_dir / ERROR_RESERVE).unlink(missing_ok=True)


def _train(cfg: Config, prepared: Any, run_dir: Path, *, resume: bool, progress: bool,
           runs_dir: str | Path, meta: dict[str, Any] | None, lead: bool,
           changes: ResumeChanges | None, hooks: Any, report: bool) -> int:
    from clipdash.engine import checkpoint
    from clipdash.engine.loop import Trainer

    created = lead and not resume
    if created:
        _create(cfg, run_dir)
    elif lead:
        check_resumable(run_dir)  # again: the lock may have been taken since the command looked
    claim: lock.RunLock | None = None
    try:
        claim = _claim(run_dir) if lead else None
        if lead and resume:
            for tmp in checkpoint.cleanup_partial(run_dir):
                print(f"clipdash run: removed {tmp.name}, left by a crash during a checkpoint "
                      "write", file=sys.stderr)
        if lead:
            _reserve(run_dir)

        if claim is not None:
            # The Tracker takes the lock itself before it touches the record (of two resumes
            # racing past this point, one gets RunLocked there, with nothing written).
            claim.release()
            claim = None
        trainer = Trainer(prepared, run_dir, resume=resume, progress=progress, meta=meta,
                          controls=changes.controls if changes else None, hooks=hooks)
        if lead and resume:
            _write_config(run_dir, cfg)  # what the resumed run uses, once it owns the run
    except Exception as exc:
        _unreserve(run_dir)
        if claim is not None:
            claim.release()
        if created:  # nothing was recorded: leave no half-made run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, (RunError, ConfigError)):
            raise
        if isinstance(exc, lock.RunLocked):
            raise RunError(str(exc)) from None
        from clipdash.track.tracker import RecordError

        problem = disk_problem(exc, run_dir)
        if problem is None and not isinstance(exc, (OSError, sqlite3.Error, RecordError)):
            raise
        raise RunError(f"cannot open the record in {run_dir}: "
                       f"{problem or ' '.join(str(exc).split())}") from None
    try:
        if not lead:
            return _follow(trainer)
        if resume and trainer.restored_from is None:
            print(f"clipdash run: {run_dir.name} has no checkpoint: starting over from step 0 "
                  f"in {run_dir}", file=sys.stderr)
        elif resume:
            print(f"clipdash run: resuming {run_dir.name} from step {trainer.step} "
                  f"({trainer.restored_from.name if trainer.restored_from else ''})",
                  file=sys.stderr)
        try:
            state = trainer.run()
            _raise_record_error(trainer)
        except Exception as exc:  # noqa: BLE001 - the run failed; the record says why
            return _report_failure(run_dir, trainer.step, exc)
        if report:
            _report_end(run_dir, runs_dir, trainer, state)
        return 0
    finally:
        _unreserve(run_dir)


def _claim(run_dir: Path) -> lock.RunLock:
    """The run's writer lock while the engine prepares the run (RunError naming the holder).

    Of two resumes started together, one is refused here; a frozen (SIGSTOP) trainer still
    holds its lock, so it blocks a resume whatever its stale heartbeat says. The Tracker then
    takes the lock for the life of the run.
    """
    try:
        return lock.acquire(run_dir)
    except lock.RunLocked as exc:
        raise RunError(str(exc)) from None
    except OSError as exc:  # a read-only copy of a run, a vanished directory
        problem = disk_problem(exc, run_dir) or exc.strerror or str(exc)
        raise RunError(f"cannot take the writer lock of {run_dir}: {problem}") from None


def _raise_record_error(trainer: Any) -> None:
    """A record that failed in the writer thread fails the run (a safety net: the Tracker
    raises RecordError itself from step/flush/close)."""
    error = getattr(getattr(trainer.tracker, "writer", None), "error", None)
    if error is not None:
        raise RuntimeError(f"recording failed: {' '.join(str(error).split())}") from error


def _report_failure(run_dir: Path, step: int, exc: BaseException) -> int:
    log = run_dir / ERROR_LOG
    _unreserve(run_dir)  # frees the space error.log is written into
    try:
        write_new(log, traceback.format_exc().encode())
        where = f"traceback in {log}"
    except OSError as write_exc:
        where = f"could not write {log}: {write_exc.strerror or write_exc}"
    problem = disk_problem(exc, run_dir)
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    cause = f"{problem} ({what})" if problem else what
    print(f"clipdash run: {run_dir.name} failed at step {step}: {cause} ({where})",
          file=sys.stderr)
    return 1


def _report_end(run_dir: Path, runs_dir: str | Path, trainer: Any, state: str) -> None:
    latest = trainer.tracker.latest()
    loss = latest.get("loss")
    print(f"{run_dir.name}: {state} after {trainer.step} steps"
          + (f", loss {loss:.4g}" if loss is not None else "")
          + (f", val loss {trainer.last_metrics['loss']:.4g}" if trainer.last_metrics else "")
          + (f", {trainer.tracker.nonfinite_steps} non-finite steps skipped"
             if trainer.tracker.nonfinite_steps else ""))
    print(f"  record: {run_dir}   watch: clipdash watch {runs_dir}   "
          f"tensorboard --logdir {runs_dir}")


def _follow(trainer: Any) -> int:
    """A non-zero rank: train in step with rank 0, which records and reports."""
    try:
        trainer.run()
    except Exception as exc:  # noqa: BLE001 - rank 0's record says what happened to the run
        print(f"clipdash run: rank {os.environ.get('RANK')} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0
