"""`clipdash.integrations.lightning.ClipdashCallback` against Lightning's own numbers.

The reference is an identical run without clipdash, where Lightning clips: its pre-clip norm is
taken in `on_before_optimizer_step` (Lightning clips after that hook) and recomputed in float64;
the losses are what `training_step` returned; the LRs are StepLR's closed form.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402
from integration_helpers import (  # noqa: E402
    ROOT,
    grad_norm64,
    import_check,
    meta,
    same,
    snapshot,
    start_example,
    status,
    steer_ddp_run,
    steer_live_run,
    steps,
)
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from trainer_proc import query  # noqa: E402

from clipdash.integrations.lightning import ClipdashCallback  # noqa: E402

MAX_STEPS, ACCUM, LR0, STEP_SIZE, GAMMA = 8, 2, 0.2, 3, 0.5
BATCHES_PER_EPOCH = 6  # 48 samples / batch 8: 3 optimizer steps per epoch


class Regressor(L.LightningModule):
    """Records what Lightning itself hands out: training_step's losses and pre-clip norms."""

    def __init__(self, nan_at: int | None = None, raise_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.losses: list[list[float]] = [[]]  # per optimizer step
        self.norms: list[float] = []
        self.nan_at, self.raise_at = nan_at, raise_at
        self.unchanged: dict[int, bool] = {}
        self._before: dict[str, Any] = {}

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.raise_at:
            raise RuntimeError("out of memory (simulated)")
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses[-1].append(float(loss.detach()))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def on_after_backward(self) -> None:
        if self.global_step == self.nan_at:  # NaN + anything accumulated stays NaN
            self.net[0].weight.grad[0, 0] = math.nan

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Callbacks' hooks ran (clipdash clipped); Lightning's own clipping comes after this.
        self._before = snapshot(self, optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.losses[-1] and len(self.losses[-1]) % ACCUM == 0:
            step = self.global_step - 1
            self.unchanged[step] = same(self._before, snapshot(self, self.trainer.optimizers[0]))
            self.losses.append([])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=LR0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, STEP_SIZE, GAMMA)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PreClipNorm(L.Callback):
    """The reference norm: taken where Lightning lets a callback see unclipped gradients."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.validations: list[tuple[int, float]] = []  # (Lightning's step, val_loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.norms.append(grad_norm64(pl_module.parameters()))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            metric = trainer.callback_metrics["val_loss"]
            self.validations.append((trainer.global_step, float(metric)))


def loaders() -> tuple[DataLoader, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=gen)
    y = (x @ torch.tensor([[3.0], [-2.0], [1.0], [4.0]])).sin() * 5
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=48)


def fit(module: Regressor, callbacks: list[Any], **overrides: Any) -> Any:
    options = dict(max_steps=MAX_STEPS, accumulate_grad_batches=ACCUM, gradient_clip_val=1.0,
                   accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=1, val_check_interval=4, callbacks=callbacks)
    options.update(overrides)
    trainer = L.Trainer(**options)
    train, val = loaders()
    trainer.fit(module, train, val)
    return trainer


def steplr(t: int) -> float:
    return LR0 * GAMMA ** (t // STEP_SIZE)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_records_match_lightnings_own_numbers_and_clip_once(tmp_path: Path,
                                                             algorithm: str) -> None:
    clip_val = 1.0 if algorithm == "norm" else 0.2
    reference, probe = Regressor(), PreClipNorm()
    fit(reference, [probe], gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
    module = Regressor()
    trainer = fit(module, [ClipdashCallback(name="mlp", runs_dir=tmp_path / "runs")],
                  gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
    run_dir = tmp_path / "runs" / "mlp"

    rows = steps(run_dir, "step, epoch, loss, lr, grad_norm_pre, grad_norm_post, max_norm, "
                          "clipped")
    assert [r[0] for r in rows] == list(range(MAX_STEPS))  # one record per optimizer step
    pre = [r[4] for r in rows]
    assert pre == pytest.approx(probe.norms, rel=1e-5)
    # The same training as the reference, step by step: clipdash clipped as Lightning would.
    losses = [sum(step) / len(step) for step in reference.losses if step]
    assert [r[2] for r in rows] == pytest.approx(losses, rel=1e-6)
    assert [r[3] for r in rows] == pytest.approx([steplr(t) for t in range(MAX_STEPS)], rel=1e-12)
    assert [r[1] for r in rows] == [t * ACCUM // BATCHES_PER_EPOCH for t in range(MAX_STEPS)]
    info = meta(run_dir)
    if algorithm == "norm":
        assert max(pre) > clip_val > min(r[5] for r in rows)
        assert [r[5] for r in rows] == pytest.approx([min(p, clip_val) for p in pre], rel=1e-5)
        assert info["clip_mode"] == "norm" and {r[6] for r in rows} == {clip_val}
    else:
        assert info["clip_mode"] == "value" and any(r[7] for r in rows)
        assert all(r[5] <= r[4] for r in rows)
    torch.testing.assert_close(dict(module.named_parameters()),
                               dict(reference.named_parameters()), rtol=1e-5, atol=1e-6)
    assert trainer.gradient_clip_val == clip_val  # the user's setting is given back
    # A validation Lightning runs at its step N (after N optimizer steps) sits at N - 1; the
    # sanity check before training is not recorded.
    evals = query(run_dir, "SELECT step, value FROM evals WHERE metric = 'loss' ORDER BY step")
    assert len(probe.validations) == 3
    assert evals == [(n - 1, pytest.approx(v, rel=1e-5)) for n, v in probe.validations]
    assert info["optimizer"] == "Adam" and info["scheduler"] == "StepLR"
    names = [r[0] for r in query(run_dir, "SELECT name FROM params ORDER BY idx")]
    assert names == [n for n, _ in module.named_parameters()]
    assert status(run_dir) == ("finished", None)


def test_a_nan_gradient_step_leaves_parameters_and_adam_state_untouched(tmp_path: Path) -> None:
    module = Regressor(nan_at=3)
    fit(module, [ClipdashCallback(name="nan", runs_dir=tmp_path / "runs")])
    assert module.unchanged == {t: t == 3 for t in range(MAX_STEPS)}
    run_dir = tmp_path / "runs" / "nan"
    assert [r[0] for r in steps(run_dir, "finite")] == [int(t != 3) for t in range(MAX_STEPS)]
    assert query(run_dir, "SELECT step FROM events WHERE kind = 'nonfinite'") == [(3,)]


def test_an_exception_in_fit_fails_the_run_and_keeps_every_step(tmp_path: Path) -> None:
    module = Regressor(raise_at=4)
    callback = ClipdashCallback(name="crash", runs_dir=tmp_path / "runs")
    with pytest.raises(RuntimeError, match="simulated"):
        fit(module, [callback])
    run_dir = tmp_path / "runs" / "crash"
    assert status(run_dir) == ("failed", "RuntimeError: out of memory (simulated)")
    assert [r[0] for r in steps(run_dir, "step")] == [0, 1, 2, 3]


class SigtermAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_the_run_the_lightning_way(tmp_path: Path) -> None:
    callback = ClipdashCallback(name="term", runs_dir=tmp_path / "runs")
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, after the running batch
        fit(Regressor(), [SigtermAt(3), callback], accumulate_grad_batches=1)
    run_dir = tmp_path / "runs" / "term"
    assert status(run_dir) == ("stopped", "SIGTERM")
    assert [r[0] for r in steps(run_dir, "step")] == [0, 1, 2, 3]


def test_without_framework_clipping_nothing_is_clipped(tmp_path: Path) -> None:
    module = Regressor()
    fit(module, [ClipdashCallback(name="free", runs_dir=tmp_path / "runs")],
        gradient_clip_val=None, max_steps=2)
    rows = steps(tmp_path / "runs" / "free", "grad_norm_pre, grad_norm_post, clipped")
    assert meta(tmp_path / "runs" / "free")["clip_mode"] == "none"
    assert all(pre == post and not clipped for pre, post, clipped in rows)


class OwnClipping(Regressor):
    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.clip_gradients(optimizer, 0.5, "norm")


def test_a_module_with_its_own_clipping_is_warned_about(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="overrides configure_gradient_clipping"):
        fit(OwnClipping(), [ClipdashCallback(name="own", runs_dir=tmp_path / "runs")],
            max_steps=1)


def test_import_clipdash_never_imports_lightning_and_missing_is_explained() -> None:
    import_check("lightning")


def test_steer_a_live_trainer_from_another_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = start_example("lightning_module.py", runs, "live", "--max-steps", "1000000",
                         "--val-every", "100000")
    run_dir = runs / "live"
    at = steer_live_run(proc, run_dir, runs / "live.log")
    rows = steps(run_dir, "step, lr, max_norm")
    assert status(run_dir) == ("stopped", None)
    assert rows[-1][0] == at["stop"] - 1
    assert [r[2] for r in rows] == [1.0 if t < at["max_norm"] else 0.05 for t, *_ in rows]
    # examples/lightning_module.py: StepLR(step_size=100, gamma=0.5) from lr 0.1, per step.
    factor = 1e-3 / (0.1 * 0.5 ** (at["lr"] // 100))
    expected = [0.1 * 0.5 ** (t // 100) * (factor if t >= at["lr"] else 1.0) for t, *_ in rows]
    assert [r[1] for r in rows] == pytest.approx(expected, rel=1e-9)


def test_integrations_import_only_what_design_allows() -> None:
    """DESIGN.md: integrations drive the public Tracker; never textual, engine or commands."""
    import ast

    forbidden = ("textual", "clipdash.engine", "clipdash.commands", "clipdash.tui", "clipdash.cli")
    for path in (ROOT / "clipdash" / "integrations").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{path.name} imports {bad}"


def test_ddp_rank_zero_records_and_every_rank_obeys_at_the_same_step(tmp_path: Path) -> None:
    """Lightning's own DDP (strategy="ddp", gloo on CPU, 2 processes)."""
    runs = tmp_path / "runs"
    proc = start_example("lightning_module.py", runs, "ddp", "--max-steps", "1000000",
                         "--val-every", "100000", "--devices", "2", "--strategy", "ddp")
    steer_ddp_run(proc, runs / "ddp", runs / "ddp.log")
