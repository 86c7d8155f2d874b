"""Spike alerts and rewind inside transformers' Trainer and Lightning, on the spike model
(its training forward pass number K is scaled 40x): the alert lands exactly at K, the rewind
restores the framework's own checkpoint before K, and the record keeps one row per step, in
agreement with what the framework itself logged and computed."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from integration_helpers import status, steps
from spike_model import make_model
from torch import nn
from trainer_proc import query, tensorboard_scalars, wait_until

from clipdash import control

K, STEPS, SAVE_EVERY, WINDOW = 45, 70, 10, 20  # the rewind goes to the checkpoint after 40
ALERTS = {"window": WINDOW, "action": "rewind"}


def alerts(run_dir: Path) -> list[tuple[int, str]]:
    rows = query(run_dir, "SELECT step, data FROM events WHERE kind = 'alert' ORDER BY id")
    return [(s, json.loads(d)["metric"]) for s, d in rows]


def rewinds(run_dir: Path) -> list[dict[str, Any]]:
    rows = query(run_dir, "SELECT data FROM events WHERE kind = 'rewind' ORDER BY id")
    return [json.loads(d) for d, in rows]


def data(n: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    return x, torch.sin(2 * x[:, :2])


def check_record(run_dir: Path, losses: dict[int, float]) -> np.ndarray:
    """One row per step, the spike gone, and every loss the one the framework computed."""
    rows = steps(run_dir, "step, loss")
    assert [s for s, _ in rows] == list(range(STEPS)), "one row per step"
    record = np.asarray([v for _, v in rows])
    assert record[K] < 3 * np.median(record[K - 20:K]), "a normal loss at the spiked step"
    assert record.tolist() == pytest.approx([losses[t] for t in range(STEPS)], rel=1e-6)
    board = tensorboard_scalars(run_dir, "loss/train")
    assert [s for s, _ in board] == list(range(STEPS)), "TensorBoard: one value per step"
    assert alerts(run_dir) == [(K, "loss"), (K, "grad_norm_pre")]
    return record


# -- transformers ---------------------------------------------------------------------------------


class HFSpike(nn.Module):
    """The spike model as a Trainer model: a dict with the loss."""

    def __init__(self, spike_at: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = make_model(8, 2, spike_at)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.mse_loss(self.inner(inputs), labels)}


def hf_run(tmp: Path, name: str, spike_at: int = K, skip: int = 0,
           **alerts_options: Any) -> tuple[Any, Path]:
    transformers = pytest.importorskip("transformers")
    from clipdash.integrations.transformers import ClipdashCallback

    x, y = data()
    args = transformers.TrainingArguments(
        output_dir=str(tmp / f"{name}-out"), max_steps=STEPS, per_device_train_batch_size=16,
        learning_rate=0.05, lr_scheduler_type="linear", warmup_steps=5, max_grad_norm=1.0,
        logging_steps=1, save_strategy="steps", save_steps=SAVE_EVERY, eval_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, optim="sgd")
    callback = ClipdashCallback(name=name, runs_dir=tmp / "runs",
                                alerts={**ALERTS, "rewind_skip": skip, **alerts_options})
    trainer = transformers.Trainer(
        model=HFSpike(spike_at), args=args, callbacks=[callback],
        train_dataset=[{"inputs": a, "labels": b} for a, b in zip(x, y, strict=True)])
    return trainer, tmp / "runs" / name


def hf_logged(trainer: Any, key: str) -> dict[int, float]:
    """The Trainer's own log: its step N (after N steps) is clipdash step N - 1."""
    return {e["step"] - 1: e[key] for e in trainer.state.log_history if key in e}


def test_trainer_rewinds_to_its_checkpoint_before_the_spike(tmp_path: Path) -> None:
    trainer, run_dir = hf_run(tmp_path, "hf")
    output = trainer.train()
    assert trainer.state.global_step == STEPS  # the rewound steps were trained again
    logged = hf_logged(trainer, "loss")
    assert sorted(logged) == list(range(STEPS))  # its log history was rewound too
    # Its train_loss is the mean over the steps that stayed (logged losses are rounded).
    assert output.training_loss == pytest.approx(np.mean(list(logged.values())), rel=1e-4)
    record = check_record(run_dir, logged)
    (rewind,), = [rewinds(run_dir)]
    assert (rewind["to"], rewind["before"]) == (40, K) and rewind["from"] in (K + 1, K + 2)
    # The LR schedule is the checkpoint's: the replay trains with the linear schedule's LRs.
    lrs = [r[0] for r in steps(run_dir, "lr")]
    assert lrs == pytest.approx(list(hf_logged(trainer, "learning_rate").values()), rel=1e-9)
    assert status(run_dir) == ("finished", None)
    assert record[K] == pytest.approx(logged[K], rel=1e-6)


class Logged(torch.utils.data.Dataset):
    """The dataset, noting every index the dataloader fetches."""

    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items, self.fetched = items, []  # type: list[dict[str, torch.Tensor]], list[int]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.fetched.append(i)
        return self.items[i]


def test_trainer_replay_continues_the_data_stream_and_skips(tmp_path: Path) -> None:
    """The stream is the Trainer's: after the rewind, `skip` batches are drawn and dropped and
    the replay trains on the batches after them; nothing is drawn twice within an epoch."""
    trainer, run_dir = hf_run(tmp_path, "skip", skip=3)
    dataset = Logged(trainer.train_dataset)
    trainer.train_dataset = dataset
    x, _ = data()
    trained: list[torch.Tensor] = []
    trainer.model.inner.register_forward_pre_hook(
        lambda m, a: trained.append(a[0].detach().clone()) if m.training else None)
    trainer.train()
    (rewind,), = [rewinds(run_dir)]
    done = rewind["from"]  # forward passes (= steps) done when the rewind came
    assert rewind["skip"] == 3 and len(trained) == done + STEPS - 40
    batches = [dataset.fetched[i:i + 16] for i in range(0, len(dataset.fetched), 16)]
    assert len(batches) == len(trained) + 3  # three batches drawn and never trained on
    for epoch in range(0, len(dataset.fetched), 320):  # each sample once per epoch
        chunk = dataset.fetched[epoch:epoch + 320]
        assert len(set(chunk)) == len(chunk)
    for p, batch in enumerate(batches[:done] + batches[done + 3:]):
        assert torch.equal(trained[p], x[batch]), f"pass {p}"
    assert trainer.state.global_step == STEPS and steps(run_dir, "COUNT(*)") == [(STEPS,)]


def pauses_for_want_of_a_checkpoint(run_dir: Path, thread: threading.Thread) -> None:
    """The alert's rewind found no checkpoint before step K: the run pauses, says so, and stops
    when told to."""
    thread.start()
    wait_until(lambda: run_dir.exists() and status(run_dir)[0] == "paused", 60, "the pause")
    message, = query(run_dir, "SELECT message FROM events WHERE kind = 'control'")[0]
    assert f"no checkpoint at or before step {K}" in message
    control.stop(run_dir, timeout=30)
    thread.join(60)
    assert not thread.is_alive() and status(run_dir)[0] == "stopped"


def test_trainer_without_a_checkpoint_before_the_spike_pauses(tmp_path: Path) -> None:
    trainer, run_dir = hf_run(tmp_path, "nockpt")
    trainer.args.save_steps = 1000
    pauses_for_want_of_a_checkpoint(run_dir, threading.Thread(target=trainer.train, daemon=True))


def test_ctl_rewind_a_live_trainer(tmp_path: Path) -> None:
    """`clipdash ctl RUN rewind --to 30 --skip 2` while the Trainer runs (no alert: a spike
    past the end), from another thread through the run's command table."""
    trainer, run_dir = hf_run(tmp_path, "ctl", spike_at=10_000, action="pause")
    trainer.args.max_steps = 10_000
    thread = threading.Thread(target=trainer.train, daemon=True)
    thread.start()
    try:
        wait_until(lambda: run_dir.exists() and status(run_dir)[0] == "running"
                   and (steps(run_dir, "MAX(step)")[0][0] or 0) >= 40, 60, "step 40")
        result = control.rewind(run_dir, to=35, skip=2, timeout=30)
        assert "rewound from step" in result.message and result.step == 30
        wait_until(lambda: status(run_dir)[0] != "running"
                   or (steps(run_dir, "MAX(step)")[0][0] or 0) >= result.step + 5, 60,
                   "steps after the rewind")
        control.stop(run_dir, timeout=30)
    finally:
        thread.join(60)
    rows = [s for s, in steps(run_dir, "step")]
    assert rows == list(range(len(rows))), "one row per step"
    (rewind,), = [rewinds(run_dir)]
    assert (rewind["to"], rewind["before"], rewind["skip"]) == (30, 35, 2)
    assert trainer.state.global_step == len(rows)


# -- Lightning ------------------------------------------------------------------------------------


def lightning_run(tmp: Path, name: str, skip: int = 0, every: int = SAVE_EVERY,
                  max_steps: int = STEPS) -> tuple[Any, Any, Path]:
    L = pytest.importorskip("lightning.pytorch")
    from clipdash.integrations.lightning import ClipdashCallback

    class Module(L.LightningModule):
        """The spike model; `returned` holds what each training_step gave Lightning."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.inner = make_model(8, 2, K)
            self.returned: list[tuple[int, float]] = []  # (global_step, loss)
            self.inputs: list[torch.Tensor] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            self.inputs.append(x.clone())
            loss = nn.functional.mse_loss(self.inner(x), y)
            self.returned.append((self.global_step, float(loss.detach())))
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=25, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    checkpoints = L.callbacks.ModelCheckpoint(dirpath=tmp / f"{name}-ckpt",
                                              every_n_train_steps=every, save_top_k=-1)
    callback = ClipdashCallback(name=name, runs_dir=tmp / "runs",
                                alerts={**ALERTS, "rewind_skip": skip})
    trainer = L.Trainer(max_steps=max_steps, gradient_clip_val=1.0, accelerator="cpu", devices=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback, checkpoints])
    return trainer, Module(), tmp / "runs" / name


def lightning_loader() -> Any:
    x, y = data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_lightning_rewinds_to_its_checkpoint_before_the_spike(tmp_path: Path) -> None:
    trainer, module, run_dir = lightning_run(tmp_path, "pl", skip=2)
    trainer.fit(module, lightning_loader())
    assert trainer.global_step == STEPS
    # What Lightning handed out last for each step (its global_step went back at the rewind).
    losses = dict(module.returned)
    check_record(run_dir, losses)
    (rewind,), = [rewinds(run_dir)]
    done = rewind["from"]
    assert (rewind["to"], rewind["before"], rewind["skip"]) == (40, K, 2) and done in (K + 1,
                                                                                     K + 2)
    assert [s for s, _ in module.returned] == list(range(done)) + list(range(40, STEPS))
    # StepLR(25, 0.5) per step from the restored scheduler state: the replay's LRs are the
    # schedule's, not those of the step the rewind came from.
    lrs = [r[0] for r in steps(run_dir, "lr")]
    assert lrs == pytest.approx([0.05 * 0.5 ** (t // 25) for t in range(STEPS)], rel=1e-12)
    # The data stream ran on: two batches dropped, then the batches after them (20 per epoch).
    x, _ = data()
    stream = [x[16 * (b % 20):16 * (b % 20) + 16] for b in range(done + 2 + STEPS - 40)]
    trained = stream[:done] + stream[done + 2:]
    assert len(module.inputs) == len(trained)
    assert all(torch.equal(a, b) for a, b in zip(module.inputs, trained, strict=True))
    assert status(run_dir) == ("finished", None)


def test_lightning_without_a_checkpoint_before_the_spike_pauses(tmp_path: Path) -> None:
    trainer, module, run_dir = lightning_run(tmp_path, "plnone", every=1000)
    pauses_for_want_of_a_checkpoint(run_dir, threading.Thread(
        target=trainer.fit, args=(module, lightning_loader()), daemon=True))


def test_ctl_rewind_a_live_lightning_fit(tmp_path: Path) -> None:
    trainer, module, run_dir = lightning_run(tmp_path, "plctl", max_steps=100_000)
    module.inner.spike_at = set()  # no alert: the rewind is the user's
    thread = threading.Thread(target=trainer.fit, args=(module, lightning_loader()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: run_dir.exists() and status(run_dir)[0] == "running"
                   and (steps(run_dir, "MAX(step)")[0][0] or 0) >= 40, 60, "step 40")
        result = control.rewind(run_dir, to=35, timeout=30)
        assert "rewound from step" in result.message and result.step == 30
        wait_until(lambda: (steps(run_dir, "MAX(step)")[0][0] or 0) >= result.step + 5, 60,
                   "steps after the rewind")
        control.stop(run_dir, timeout=30)
    finally:
        thread.join(60)
    rows = [s for s, in steps(run_dir, "step")]
    assert rows == list(range(len(rows))), "one row per step"
    (rewind,), = [rewinds(run_dir)]
    assert (rewind["to"], rewind["before"], rewind["source"]) == (30, 35, "api")
    assert trainer.global_step == len(rows) and status(run_dir) == ("stopped", None)
