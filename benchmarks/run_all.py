"""The whole benchmark suite in one command, one table of ratios measured side by side.

    .venv/bin/python benchmarks/run_all.py            # the full suite (about 10 minutes)
    .venv/bin/python benchmarks/run_all.py --smoke    # tiny sizes, no targets (CI runs this)

Each benchmark runs in its own interpreter (one torch thread, so neighbours on a shared machine
disturb it less) and reports JSON; every ratio in the table is between variants measured in the
same process, interleaved, as medians of repeats. The machine is described at the top, since
ratios on a 2-core VM and on a workstation are not the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    smoke: tuple[str, ...]


SUITE = (
    Bench("overhead: MLP (~1 ms step)", "bench_tracker.py", ("--model", "mlp"),
          ("--model", "mlp", "--steps", "5", "--repeats", "1", "--warmup", "1")),
    Bench("overhead: transformer (20-50 ms step)", "bench_tracker.py",
          ("--model", "transformer", "--steps", "100", "--repeats", "7", "--warmup", "10"),
          ("--model", "transformer", "--steps", "2", "--repeats", "1", "--warmup", "1")),
    Bench("overhead: 522 parameter tensors", "bench_tracker.py",
          ("--model", "many", "--steps", "100", "--repeats", "7", "--warmup", "10"),
          ("--model", "many", "--steps", "2", "--repeats", "1", "--warmup", "1")),
    Bench("recording throughput and store size", "bench_recording.py", (),
          ("--steps", "200", "--repeats", "1")),
    Bench("start-up", "bench_launch.py", ("--repeat", "5"), ("--repeat", "1")),
)


def describe_machine() -> str:
    import torch  # noqa: PLC0415 - only for the description, after the benchmarks' own imports

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (f"{cpu}, {os.cpu_count()} CPUs, {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__}")


def run_one(bench: Bench, smoke: bool, out: Path) -> dict | None:
    args = bench.smoke if smoke else bench.full
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(HERE / bench.script), *args, "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        print(f"FAILED {bench.name}:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def rows_for(bench: Bench, result: dict) -> list[tuple[str, str, str]]:
    """(measure, figure, target) rows of one benchmark's result."""
    if "tracker_over_plain" in result:
        ms = result["ms_per_step"]
        target = "<= 1.02" if result["model"] == "transformer" else "<= 1.05"
        rows = [(f"{bench.name}: plain / tracker / naive ms",
                 f"{ms['plain']:.2f} / {ms['tracker']:.2f} / {ms['naive']:.2f}", ""),
                ("  tracker / plain", f"{result['tracker_over_plain']:.3f}", target),
                ("  naive / tracker", f"{result['naive_over_tracker']:.2f}",
                 ">= 2" if result["model"] == "mlp" else "")]
        return rows
    if "launch_s" in result:
        launch = result["launch_s"]
        return [
            ("start-up: clipdash run -> first recorded step, s (CPU s)",
             f"{launch['launch']['wall']:.2f} ({launch['launch']['cpu']:.2f})", "<= 1.5"),
            ("  floor: import torch + first torch.optim step (imports torch._dynamo)",
             f"{launch['optimizer']['wall']:.2f} ({launch['optimizer']['cpu']:.2f})", ""),
            ("  import torch alone",
             f"{launch['torch']['wall']:.2f} ({launch['torch']['cpu']:.2f})", ""),
        ]
    rates = result["steps_per_s"]
    size = result["store_bytes_per_step"]
    per_million = 1e6 / 2**20
    return [
        ("recording: tracker steps/s (scalars/s)",
         f"{rates['tracker']:.0f} ({rates['tracker'] * result['scalars_per_step']:.0f})", ""),
        ("  tracker / SummaryWriter.add_scalar", f"{result['tracker_over_add_scalar']:.1f}x",
         ">= 15x"),
        ("  tracker / EventFileWriter", f"{rates['tracker'] / rates['event_writer']:.1f}x", ""),
        ("store MiB per 1M steps (with / without per-param norms)",
         f"{size['with_params'] * per_million:.0f} / {size['without'] * per_million:.0f}", ""),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs")
    args = p.parse_args(argv)
    print(describe_machine())
    table: list[tuple[str, str, str]] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="clipdash-suite-") as tmp:
        for i, bench in enumerate(SUITE):
            print(f"running {bench.name} ...", flush=True)
            result = run_one(bench, args.smoke, Path(tmp) / f"{i}.json")
            if result is None:
                failed += 1
                continue
            table.extend(rows_for(bench, result))
    try:
        import torch  # noqa: PLC0415

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        table.append(("GPU overhead and sync-free check", "skipped: no CUDA device here", ""))
    width = max(len(r[0]) for r in table)
    fig = max(len(r[1]) for r in table)
    print(f"\n{'measure':{width}}  {'figure':>{fig}}  target")
    for measure, figure, target in table:
        print(f"{measure:{width}}  {figure:>{fig}}  {target}")
    if args.smoke:
        print("(smoke run: tiny sizes, the figures mean nothing)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
