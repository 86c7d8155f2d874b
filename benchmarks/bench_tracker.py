"""What does recording every step cost? clipdash.Tracker against a plain loop and the naive way.

    .venv/bin/python benchmarks/bench_tracker.py            # about a minute
    .venv/bin/python benchmarks/bench_tracker.py --quick    # a smoke run, a few seconds

Three loops train the same MLP (a step takes ~1 ms on a laptop-class CPU) on the same batches:

- plain:   zero_grad, forward, backward, `clip_grad_norm_`, `optimizer.step()`; nothing recorded.
- tracker: the same loop with `clipdash.Tracker` recording everything: loss, LR, pre/post-clip
  norms, per-parameter norms, coefficient, flags, into SQLite and TensorBoard.
- naive:   the usual hand-rolled logging: `p.grad.norm().item()` per parameter and
  `SummaryWriter.add_scalar` per parameter and per metric, every step.

The variants run interleaved (plain, tracker, naive, plain, ...) for several repeats and the
medians are compared, so a neighbour's load hits all three alike. Each timed block ends only once
everything it recorded is written (the tracker's writer thread and the SummaryWriter are flushed),
so background work is counted. Targets: tracker/plain <= 1.05 (MLP, 522-tensor model), <= 1.02
(transformer); naive/tracker >= 2 on the MLP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Importing SummaryWriter and clipdash up front keeps import costs out of the timings.
from torch.utils.tensorboard import SummaryWriter

import clipdash

MAX_NORM = 1.0
# tracker / plain targets (issue 11): the bigger the step, the smaller the allowed share.
TARGET_PLAIN = {"mlp": 1.05, "transformer": 1.02, "many": 1.05}
Setup = Callable[[Path], tuple[Callable[[int], None], Callable[[], None]]]


def make_model(width: int, depth: int, inputs: int, classes: int, norm: bool) -> nn.Module:
    layers: list[nn.Module] = []
    d = inputs
    for _ in range(depth):
        layers += [nn.Linear(d, width), *([nn.LayerNorm(width)] if norm else []), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


class TinyTransformer(nn.Module):
    """A small encoder classifier: a 20-50 ms step on one CPU thread, ~50 parameter tensors."""

    def __init__(self, width: int, depth: int, inputs: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(inputs, width)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width,
                                           batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(x)).mean(1))


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[argparse.Namespace], nn.Module]
    example_shape: Callable[[argparse.Namespace], tuple[int, ...]]
    batch: int  # default batch size
    description: str


MODELS = {
    "mlp": ModelSpec(lambda a: make_model(a.width, a.depth, a.inputs, a.classes, a.layernorm),
                     lambda a: (a.inputs,), 64, "MLP with LayerNorm (~1 ms step)"),
    "transformer": ModelSpec(lambda a: TinyTransformer(128, 4, a.inputs, a.classes),
                             lambda a: (32, a.inputs), 8,
                             "transformer encoder 128x4, 32 tokens (20-50 ms step)"),
    # 260 narrow Linear layers: 522 parameter tensors, the shape of a big model's parameter list.
    "many": ModelSpec(lambda a: make_model(8, 260, a.inputs, a.classes, False),
                      lambda a: (a.inputs,), 64, "deep narrow MLP"),
}


class Workload:
    """Identical model, optimizer and batches for every variant."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        gen = torch.Generator().manual_seed(0)
        shape = MODELS[args.model].example_shape(args)
        self.batches = [
            (torch.randn(args.batch, *shape, generator=gen),
             torch.randint(0, args.classes, (args.batch,), generator=gen))
            for _ in range(16)
        ]
        self.loss_fn = nn.CrossEntropyLoss()

    def fresh(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = MODELS[self.args.model].build(self.args)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]


def plain(w: Workload) -> Setup:
    def setup(_: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
        model, opt = w.fresh()
        params = list(model.parameters())

        def run(steps: int) -> None:
            for i in range(steps):
                x, y = w.batch(i)
                opt.zero_grad()
                loss = w.loss_fn(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
                opt.step()

        return run, lambda: None

    return setup


def tracked(w: Workload) -> Setup:
    def setup(tmp: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
        model, opt = w.fresh()
        tracker = clipdash.Tracker(model, opt, run_dir=tmp / "tracker", max_norm=MAX_NORM,
                                   tensorboard=True, record_params=True, quiet=True)
        step = 0

        def run(steps: int) -> None:
            nonlocal step
            for i in range(steps):
                x, y = w.batch(i)
                opt.zero_grad()
                loss = w.loss_fn(model(x), y)
                loss.backward()
                if tracker.clip():
                    opt.step()
                tracker.step(loss, 0)
                step += 1
            tracker.flush()  # wait until SQLite and TensorBoard have everything

        return run, tracker.close

    return setup


def naive(w: Workload) -> Setup:
    def setup(tmp: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
        model, opt = w.fresh()
        named = list(model.named_parameters())
        params = [p for _, p in named]
        writer = SummaryWriter(str(tmp / "naive"))
        step = 0

        def run(steps: int) -> None:
            nonlocal step
            for i in range(steps):
                x, y = w.batch(i)
                opt.zero_grad()
                loss = w.loss_fn(model(x), y)
                loss.backward()
                for name, p in named:
                    if p.grad is not None:
                        writer.add_scalar(f"grad_norm/{name}", p.grad.norm().item(), step)
                pre = torch.nn.utils.clip_grad_norm_(params, MAX_NORM).item()
                coef = min(1.0, MAX_NORM / (pre + 1e-6))
                opt.step()
                writer.add_scalar("loss/train", loss.item(), step)
                writer.add_scalar("lr/group_0", opt.param_groups[0]["lr"], step)
                writer.add_scalar("grad_norm/pre_clip", pre, step)
                writer.add_scalar("grad_norm/post_clip", pre * coef, step)
                writer.add_scalar("clip/max_norm", MAX_NORM, step)
                writer.add_scalar("clip/coef", coef, step)
                writer.add_scalar("clip/clipped", float(coef < 1.0), step)
                step += 1
            writer.flush()

        return run, writer.close

    return setup


Times = dict[str, dict[str, list[float]]]  # clock -> variant -> ms/step per repeat


def measure(setups: dict[str, Setup], steps: int, warmup: int, repeats: int,
            tmp: Path) -> Times:
    """ms/step of each variant per repeat, on the wall clock and in process CPU time.

    Variants are interleaved and their order rotates every repeat. CPU time counts every
    thread of the process (the tracker's writer thread too) and is much less disturbed than
    the wall clock by other processes on a shared machine.
    """
    states = {}
    for name, setup in setups.items():
        run, close = setup(tmp / name)
        run(warmup)
        states[name] = (run, close)
    times: Times = {"wall": {name: [] for name in setups}, "cpu": {name: [] for name in setups}}
    names = list(setups)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            run, _ = states[name]
            w0, c0 = time.perf_counter(), time.process_time()
            run(steps)
            times["wall"][name].append((time.perf_counter() - w0) / steps * 1e3)
            times["cpu"][name].append((time.process_time() - c0) / steps * 1e3)
    for _, close in states.values():
        close()
    return times


def report(label: str, times: dict[str, list[float]], target: float,
           naive_target: float | None) -> tuple[float, float]:
    """Print one clock's figures; return (tracker/plain, naive/tracker) of the medians."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{label}:")
    for name, ts in times.items():
        print(f"  {name:8s} {med[name]:7.3f} ms/step   (min {min(ts):.3f}, max {max(ts):.3f})")
    # Paired per-repeat ratios: steadier than a ratio of medians when the machine is shared.
    paired = statistics.median(t / p for t, p in zip(times["tracker"], times["plain"],
                                                     strict=True))
    ratio_plain, ratio_naive = med["tracker"] / med["plain"], med["naive"] / med["tracker"]
    over_t, over_n = (med["tracker"] - med["plain"]) * 1e3, (med["naive"] - med["plain"]) * 1e3
    print(f"  tracker / plain = {ratio_plain:.3f}  (paired {paired:.3f}; target <= {target})  "
          f"{'OK' if ratio_plain <= target else 'MISSED'}")
    verdict = ("" if naive_target is None else f"(target >= {naive_target:g})  "
               + ("OK" if ratio_naive >= naive_target else "MISSED"))
    print(f"  naive / tracker = {ratio_naive:.2f}   {verdict}")
    ratio = (f"{over_n / over_t:.0f}x the tracker's" if over_t > 0 else
             "the tracker loop is faster: clip() costs less than clip_grad_norm_")
    print(f"  overhead per step: tracker {over_t:+.1f} us, naive {over_n:+.1f} us ({ratio})")
    return ratio_plain, ratio_naive


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=11, help="timed blocks per variant")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="200 steps x 3 repeats (smoke test)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=6, help="hidden layers")
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=None, help="default: the model's own")
    p.add_argument("--no-layernorm", dest="layernorm", action="store_false",
                   help="plain Linear+ReLU layers (fewer parameter tensors)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: steady timings on a shared machine; "
                        "0: torch's default)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--model", choices=sorted(MODELS), default="mlp",
                   help="mlp (default), transformer (20-50 ms steps), many (522 tensors)")
    p.add_argument("--json", metavar="FILE", help="also write the medians and ratios as JSON")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = MODELS[args.model].batch
    if args.quick:
        args.steps, args.repeats, args.warmup = 200, 3, 30
    if args.threads:
        torch.set_num_threads(args.threads)

    w = Workload(args)
    n_params = sum(1 for _ in w.fresh()[0].parameters())
    print(f"torch {torch.__version__}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    if args.model == "mlp":
        kind = "MLP with LayerNorm" if args.layernorm else "MLP"
        kind += f" {args.inputs}-{'-'.join([str(args.width)] * args.depth)}-{args.classes}"
    else:
        kind = MODELS[args.model].description
    print(f"{kind}, batch {args.batch}, {n_params} parameter tensors; {args.repeats} repeats x "
          f"{args.steps} steps per variant, interleaved; medians")
    setups = {"plain": plain(w), "tracker": tracked(w), "naive": naive(w)}
    with tempfile.TemporaryDirectory(prefix="clipdash-bench-") as tmp:
        times = measure(setups, args.steps, args.warmup, args.repeats, Path(tmp))
    target = TARGET_PLAIN[args.model]
    naive_target = 2.0 if args.model == "mlp" else None  # the target is for the MLP
    ratio_plain, ratio_naive = report("wall clock", times["wall"], target, naive_target)
    report("process CPU time (all threads)", times["cpu"], target, naive_target)
    if args.json:
        medians = {k: statistics.median(v) for k, v in times["wall"].items()}
        Path(args.json).write_text(json.dumps({
            "model": args.model, "params": n_params, "ms_per_step": medians,
            "tracker_over_plain": ratio_plain, "naive_over_tracker": ratio_naive}))
    ok = ratio_plain <= target and (naive_target is None or ratio_naive >= naive_target)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
