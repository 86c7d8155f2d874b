"""A user's own training loop with `clipdash.Tracker`, alone or under torchrun (gloo, CPU).

    python tests/fsdp_loop.py single OUT [options]
    torchrun --nproc-per-node 2 tests/fsdp_loop.py fsdp2|ddp OUT [options]

Every step trains on the same global batch of GLOBAL samples (drawn from a seeded generator):
alone on all of it, under torchrun each rank on its contiguous share, so the runs are the same
computation split differently. The model is `fully_shard`ed per block and on the root (fsdp2)
or wrapped in DistributedDataParallel (ddp). The run records into OUT/run; at the end every
rank saves the full parameters (gathered from the shards) to OUT/params<rank>.pt.

--steer-at S: rank 0 sets max_norm to --steer-to once step S is recorded (through the store, as
`clipdash ctl` does; applied at the next exchange); --apply-at S sets it directly before step S
instead (the single-process reference). Every rank logs [step, max_norm] to OUT/rank<N>.jsonl.

--pause-at S: rank 0 pauses the run once step S is recorded and resumes it --pause-s seconds
later; --slow-checkpoint makes rank 0's pause checkpoint take that long as well (the other
ranks wait in the control exchange meanwhile). --pg-timeout sets the process group's timeout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clipdash import Tracker, control

GLOBAL = 8  # samples per step, over all ranks
IN, HIDDEN, OUT = 6, 10, 3


def build_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh()),
                         nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh()),
                         nn.Linear(HIDDEN, OUT))


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL, IN, generator=gen) * (1 + step % 3)
    y = torch.randn(GLOBAL, OUT, generator=gen)
    share = GLOBAL // world
    return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def pause_later(run_dir: Path, tracker: Tracker, at: int, seconds: float) -> None:
    while tracker.step_index <= at:
        time.sleep(0.01)
    control.pause(run_dir, timeout=60)
    time.sleep(seconds)
    control.resume(run_dir, timeout=60)


def steer_later(run_dir: Path, tracker: Tracker, at: int, value: float) -> None:
    while tracker.step_index <= at:
        time.sleep(0.01)
    control.set_value(run_dir, "max_norm", value, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["single", "ddp", "fsdp2"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-norm", type=float, default=0.5)
    ap.add_argument("--norm-type", type=float, default=2.0)  # "inf" parses too
    ap.add_argument("--clip", default="norm")
    ap.add_argument("--pause-at", type=int, default=-1)
    ap.add_argument("--pause-s", type=float, default=0.0)
    ap.add_argument("--slow-checkpoint", action="store_true")
    ap.add_argument("--pg-timeout", type=float, default=60.0)
    ap.add_argument("--steer-at", type=int, default=-1)
    ap.add_argument("--apply-at", type=int, default=-1)
    ap.add_argument("--steer-to", type=float, default=0.2)
    ap.add_argument("--drop-grad-until", type=int, default=0,
                    help="before this step, 1.0.bias has no gradient (recorded norm 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank, world = 0, 1
    if args.mode != "single":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.pg_timeout))
        rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    net: nn.Module = model
    if args.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model:
            fully_shard(block)
        fully_shard(model)
    elif args.mode == "ddp":
        net = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    run_dir = args.out / "run"

    def checkpoint(reason: str) -> None:
        if args.slow_checkpoint and rank == 0 and reason == "pause":
            time.sleep(args.pause_s)

    tracker = Tracker(model, optimizer, run_dir=run_dir, clip=args.clip, max_norm=args.max_norm,
                      max_value=0.05, norm_type=args.norm_type, checkpoint=checkpoint,
                      quiet=True, flush_secs=0.05)
    if args.pause_at >= 0 and rank == 0:
        threading.Thread(target=pause_later, daemon=True,
                         args=(run_dir, tracker, args.pause_at, args.pause_s)).start()
    if args.steer_at >= 0 and rank == 0:
        threading.Thread(target=steer_later, daemon=True,
                         args=(run_dir, tracker, args.steer_at, args.steer_to)).start()
    log = open(args.out / f"rank{rank}.jsonl", "w")  # noqa: SIM115 - closed below
    with tracker:
        for step in range(args.steps):
            if step == args.apply_at:
                tracker.clipper.set("max_norm", args.steer_to)
            x, y = batch(step, rank, world)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            if step < args.drop_grad_until:
                model[1][0].bias.grad = None
            if tracker.clip():
                optimizer.step()
            tracker.step(loss)
            log.write(json.dumps([step, tracker.state_dict()["clipper"]]) + "\n")
    log.close()
    params = full_params(model)
    torch.save(params, args.out / f"params{rank}.pt")
    if world > 1:
        dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
