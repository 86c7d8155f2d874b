"""A small, deliberately slow training run for watching: `clipdash watch` has something live.

    .venv/bin/python scripts/watch_demo_train.py --runs-dir /tmp/runs --name demo --seconds 30

An MLP on a noisy regression task with SGD, StepLR and clipping at max_norm=1.0; every 250th
step its loss is scaled up 50x, so the gradient norm spikes and clipping fires. It obeys pause,
resume, stop and set commands through the Tracker like any run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import clipdash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--name", default="watch-demo")
    ap.add_argument("--seconds", type=float, default=30.0, help="rough length of the run")
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()

    torch.set_num_threads(1)  # a toy model: threads only add contention
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=500, gamma=0.5)
    w_true = torch.randn(16, 1)
    x_val = torch.randn(256, 16)
    y_val = x_val @ w_true
    pause_s = args.seconds / args.steps
    tracker = clipdash.Tracker(model, opt, sched, runs_dir=args.runs_dir, name=args.name,
                               max_norm=1.0, total_steps=args.steps, flush_secs=0.1,
                               tensorboard=False)
    with tracker:
        tracker.handle_signals()
        for step in range(args.steps):
            x = torch.randn(32, 16)
            y = x @ w_true + 0.1 * torch.randn(32, 1)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            (loss * (50.0 if step % 250 == 249 else 1.0)).backward()
            if tracker.clip():
                opt.step()
            tracker.step(loss, epoch=step // 100)
            sched.step()
            if step % 100 == 99:
                with torch.no_grad():
                    tracker.log_eval({"loss": nn.functional.mse_loss(model(x_val), y_val)})
            if tracker.should_stop:
                break
            time.sleep(pause_s)


if __name__ == "__main__":
    main()
