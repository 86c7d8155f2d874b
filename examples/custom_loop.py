"""A hand-written PyTorch training loop with clipdash: clip, record and steer in four lines.

    python examples/custom_loop.py            # then, in another terminal: clipdash watch
    clipdash ctl custom-loop set max_norm=0.5 # steer it while it runs

The model is a small LSTM on the "adding problem" (Hochreiter & Schmidhuber, 1997): sum the two
marked numbers of a long sequence. The data is generated here; nothing is downloaded.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import clipdash


def adding_problem(n: int, seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    values = torch.rand(n, seq_len, generator=gen)
    marks = torch.zeros(n, seq_len)
    first = torch.randint(0, seq_len // 2, (n,), generator=gen)
    second = torch.randint(seq_len // 2, seq_len, (n,), generator=gen)
    marks[torch.arange(n), first] = 1.0
    marks[torch.arange(n), second] = 1.0
    x = torch.stack([values, marks], dim=-1)
    y = (values * marks).sum(dim=1, keepdim=True)
    return x, y


class Summer(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default="custom-loop")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = adding_problem(2048, 40, gen)
    x_val, y_val = adding_problem(512, 40, gen)
    model = Summer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.3)
    loss_fn = nn.MSELoss()

    tracker = clipdash.Tracker(model, optimizer, scheduler, name=args.name,
                               runs_dir=args.runs_dir, max_norm=1.0)
    tracker.handle_signals()  # Ctrl-C: finish the step, flush, and mark the run "stopped"
    with tracker:
        for epoch in range(args.epochs):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                optimizer.zero_grad()
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                if tracker.clip():            # measure, clip; False = skip a non-finite step
                    optimizer.step()
                tracker.step(loss, epoch)     # record; apply commands; wait while paused
                if tracker.should_stop:
                    break
            scheduler.step()
            with torch.no_grad():
                val_loss = loss_fn(model(x_val), y_val)
            tracker.log_eval({"loss": val_loss})
            print(f"epoch {epoch}: val loss {float(val_loss):.4f}")
            if tracker.should_stop:
                break
    print(f"recorded in {tracker.run_dir}; try `clipdash export {tracker.run_dir} | head`")


if __name__ == "__main__":
    main()
