"""Lightning with clipdash: one line, `callbacks=[ClipdashCallback(...)]`.

    python examples/lightning_module.py            # then, in another terminal: clipdash watch
    clipdash ctl lightning-mlp set max_norm=0.5    # steer it while it trains
    python examples/lightning_module.py --devices 2 --strategy ddp   # rank 0 records, all obey

A small MLP learns a synthetic regression (y = sin of a random projection of x, plus noise);
nothing is downloaded, and the default run takes seconds on a CPU. `Trainer(gradient_clip_val=...)`
stays as users write it: clipdash takes that threshold over (`gradient_clip_algorithm="value"`
means clip by value) and turns Lightning's own clipping off, so the record holds the true
pre-clip norms.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipdash.integrations.lightning import ClipdashCallback


def regression_data(n: int, dim: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    w = torch.randn(dim, 1, generator=torch.Generator().manual_seed(1234))
    y = torch.sin(x @ w) * 3 + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


class MLP(L.LightningModule):
    def __init__(self, dim: int = 16, hidden: int = 64, lr: float = 0.1, step_size: int = 100,
                 gamma: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.hparams.step_size,
                                                    gamma=self.hparams.gamma)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--gradient-clip-val", type=float, default=1.0)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--val-every", type=int, default=100, help="batches between validations")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default="lightning-mlp")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    train = DataLoader(regression_data(4096, 16, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(regression_data(256, 16, seed=1), batch_size=256)
    trainer = L.Trainer(
        max_steps=args.max_steps, gradient_clip_val=args.gradient_clip_val,
        accumulate_grad_batches=args.accumulate, accelerator="cpu", devices=args.devices,
        strategy=args.strategy, val_check_interval=args.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ClipdashCallback(name=args.name, runs_dir=args.runs_dir)])  # the one line
    model = MLP()
    trainer.fit(model, train, val)
    if trainer.world_size > 1:  # the same steps and the same weights on every rank
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        print(f"rank {trainer.global_rank}: {trainer.global_step} steps, "
              f"parameter checksum {checksum:.15g}", flush=True)
    if trainer.is_global_zero:
        print(f"recorded in {args.runs_dir}/{args.name}; try `clipdash export "
              f"{args.runs_dir}/{args.name} | head`")


if __name__ == "__main__":
    main()
