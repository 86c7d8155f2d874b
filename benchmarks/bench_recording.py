"""How fast can clipdash record, and how big is the record?

    .venv/bin/python benchmarks/bench_recording.py            # about 30 s
    .venv/bin/python benchmarks/bench_recording.py --steps 2000 --repeats 3   # a smoke run

No model is trained: the gradients are set once, so what is timed is recording alone.

- `tracker`: `Tracker.clip()` + `Tracker.step()` for N steps into SQLite and TensorBoard, until
  the writer thread has everything on disk. scalars/step counts every recorded number (the
  step's fields, the LR and one norm per parameter tensor).
- `add_scalar`: `torch.utils.tensorboard.SummaryWriter.add_scalar`, once per number, the same
  numbers per step (the usual way).
- `event_writer`: tensorboard's own `EventFileWriter`, one `Summary` event per step holding every
  number (the fastest way tensorboard itself offers).
- store size: bytes per step of `clipdash.sqlite` with and without per-parameter norms, and what
  that makes for a million steps.

Each variant runs `--repeats` times, interleaved; the figures are medians. Two clocks: wall time
(the target) and process CPU time (every thread: the tracker's and SummaryWriter's writer
threads are counted), which other processes on a shared machine disturb much less. Target
(issue 11): tracker scalars/s >= 15 x add_scalar's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import clipdash

STEP_FIELDS = 8  # loss, lr, pre, post, max_norm, coef, clipped, finite
TARGET = 15.0


def model_with(n_params: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.ParameterList([nn.Parameter(torch.randn(64)) for _ in range(n_params)])
    for p in model:
        p.grad = torch.randn_like(p)
    return model


def run_tracker(run_dir: Path, steps: int, n_params: int, *, tensorboard: bool = True,
                record_params: bool = True) -> tuple[float, float]:
    model = model_with(n_params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.tensor(1.0)
    tracker = clipdash.Tracker(model, opt, run_dir=run_dir, max_norm=1.0,
                               tensorboard=tensorboard, record_params=record_params, quiet=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        tracker.clip()
        tracker.step(loss)
    tracker.flush()
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    tracker.close()
    return elapsed


def _timed_writes(writer: SummaryWriter | EventFileWriter, steps: int, n_params: int,
                  write_step: Callable[[list[str], int], None]) -> tuple[float, float]:
    """Seconds to write `steps` steps of STEP_FIELDS + n_params numbers and flush them."""
    tags = [f"v/{i}" for i in range(STEP_FIELDS + n_params)]
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        write_step(tags, step)
    writer.flush()
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    writer.close()
    return elapsed


def run_add_scalar(run_dir: Path, steps: int, n_params: int) -> tuple[float, float]:
    writer = SummaryWriter(str(run_dir))

    def write_step(tags: list[str], step: int) -> None:
        for tag in tags:
            writer.add_scalar(tag, 0.5, step)

    return _timed_writes(writer, steps, n_params, write_step)


def run_event_writer(run_dir: Path, steps: int, n_params: int) -> tuple[float, float]:
    writer = EventFileWriter(str(run_dir))

    def write_step(tags: list[str], step: int) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=t, simple_value=0.5) for t in tags])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    return _timed_writes(writer, steps, n_params, write_step)


def store_bytes_per_step(tmp: Path, steps: int, n_params: int, record_params: bool) -> float:
    run_dir = tmp / f"size-{record_params}"
    run_tracker(run_dir, steps, n_params, tensorboard=False, record_params=record_params)
    size = sum(f.stat().st_size for f in run_dir.glob("clipdash.sqlite*"))
    return size / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--params", type=int, default=26, help="parameter tensors")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    scalars = STEP_FIELDS + args.params
    variants: dict[str, Callable[[Path, int, int], tuple[float, float]]] = {
        "tracker": run_tracker, "add_scalar": run_add_scalar, "event_writer": run_event_writer}
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="clipdash-bench-rec-") as tmp_name:
        tmp = Path(tmp_name)
        for r in range(args.repeats):
            for name, fn in variants.items():
                seconds[name].append(fn(tmp / f"{name}-{r}", args.steps, args.params))
        size_with = store_bytes_per_step(tmp, args.steps, args.params, True)
        size_without = store_bytes_per_step(tmp, args.steps, args.params, False)
    rates = {name: args.steps / statistics.median(t[0] for t in ts)
             for name, ts in seconds.items()}
    cpu_rates = {name: args.steps / statistics.median(t[1] for t in ts)
                 for name, ts in seconds.items()}
    print(f"{args.steps} steps x {scalars} numbers per step ({args.params} parameter tensors), "
          f"{args.repeats} repeats, medians")
    for name, rate in rates.items():
        print(f"  {name:12s} {rate:10.0f} steps/s  {rate * scalars:12.0f} scalars/s  "
              f"({cpu_rates[name]:.0f} steps per CPU second)")
    ratio = rates["tracker"] / rates["add_scalar"]
    print(f"  tracker / add_scalar = {ratio:.1f}x (target >= {TARGET:g}x)  "
          f"{'OK' if ratio >= TARGET else 'MISSED'}")
    cpu_ratio = cpu_rates["tracker"] / cpu_rates["add_scalar"]
    print(f"  tracker / add_scalar by CPU time = {cpu_ratio:.1f}x")
    print(f"  tracker / EventFileWriter = {rates['tracker'] / rates['event_writer']:.1f}x "
          f"(by CPU time {cpu_rates['tracker'] / cpu_rates['event_writer']:.1f}x)")
    print(f"  store: {size_with:.0f} B/step with per-parameter norms "
          f"({size_with * 1e6 / 2**20:.0f} MiB per 1M steps), {size_without:.0f} B/step without "
          f"({size_without * 1e6 / 2**20:.0f} MiB per 1M steps)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "steps_per_s": rates, "steps_per_cpu_s": cpu_rates, "scalars_per_step": scalars,
            "tracker_over_add_scalar": ratio, "tracker_over_add_scalar_cpu": cpu_ratio,
            "store_bytes_per_step": {"with_params": size_with, "without": size_without}}))
    return 1 if args.check and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
