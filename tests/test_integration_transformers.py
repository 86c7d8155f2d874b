"""`clipdash.integrations.transformers.ClipdashCallback` against the Trainer's own numbers.

Every comparison is with what transformers itself reports: the `grad_norm` and `loss` it logs
at `logging_steps=1` in an identical run without clipdash (where the Trainer clips), its
`eval_loss`, and the closed form of its linear schedule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
from integration_helpers import (  # noqa: E402
    ENV,
    ROOT,
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
from trainer_proc import query  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback  # noqa: E402

from clipdash.integrations._wrappers import unwrap_optimizer  # noqa: E402
from clipdash.integrations.transformers import ClipdashCallback  # noqa: E402

MAX_STEPS, ACCUM, WARMUP, LR0, MAX_NORM = 8, 2, 2, 2e-2, 0.7


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1,
                                      n_head=2, bos_token_id=0, eos_token_id=0))


def dataset(n: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": (ids := torch.randint(0, 32, (8,), generator=gen)), "labels": ids}
            for _ in range(n)]


def make_trainer(tmp: Path, callbacks: list[Any], **overrides: Any) -> Trainer:
    options = dict(output_dir=str(tmp / "hf-out"), max_steps=MAX_STEPS,
                   per_device_train_batch_size=4, gradient_accumulation_steps=ACCUM,
                   learning_rate=LR0, warmup_steps=WARMUP, lr_scheduler_type="linear",
                   max_grad_norm=MAX_NORM, logging_steps=1, eval_strategy="steps", eval_steps=4,
                   per_device_eval_batch_size=8, save_strategy="no", report_to="none",
                   use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    options.update(overrides)
    args = transformers.TrainingArguments(**options)
    return Trainer(model=tiny_gpt2(), args=args, train_dataset=dataset(),
                   eval_dataset=dataset(16, seed=1), callbacks=callbacks)


def train_logs(trainer: Trainer) -> dict[str, dict[int, float]]:
    """The Trainer's log history as {key: {its step: value}}."""
    out: dict[str, dict[int, float]] = {}
    for entry in trainer.state.log_history:
        for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
            if key in entry:
                out.setdefault(key, {})[entry["step"]] = entry[key]
    return out


def linear_schedule(t: int) -> float:
    """get_linear_schedule_with_warmup in closed form: the LR step t (0-based) trains with."""
    if t < WARMUP:
        return LR0 * t / WARMUP
    return LR0 * max(0.0, (MAX_STEPS - t) / (MAX_STEPS - WARMUP))


def test_records_match_the_trainers_own_logs_and_clip_once(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    reference = make_trainer(tmp_path, [])
    reference.train()
    ref = train_logs(reference)
    callback = ClipdashCallback(name="gpt", runs_dir=tmp_path / "runs")
    trainer = make_trainer(tmp_path, [callback])
    with caplog.at_level(logging.WARNING, logger="clipdash"):
        trainer.train()
    run_dir = tmp_path / "runs" / "gpt"

    rows = steps(run_dir, "step, epoch, loss, lr, grad_norm_pre, grad_norm_post, max_norm, clipped")
    assert [r[0] for r in rows] == list(range(MAX_STEPS))  # one record per optimizer step
    pre = [r[4] for r in rows]
    # The true pre-clip norms: the reference Trainer clipped after measuring them.
    assert pre == pytest.approx([ref["grad_norm"][t + 1] for t in range(MAX_STEPS)], rel=1e-5)
    assert max(pre) > MAX_NORM > min(pre)  # clipping really fired, and not on every step
    assert [r[5] for r in rows] == pytest.approx([min(p, MAX_NORM) for p in pre], rel=1e-5)
    # The same training as the reference, step by step: clipdash clipped as the Trainer would.
    assert [r[2] for r in rows] == pytest.approx([ref["loss"][t + 1] for t in range(MAX_STEPS)],
                                                 rel=1e-6)
    assert [r[3] for r in rows] == pytest.approx([linear_schedule(t) for t in range(MAX_STEPS)],
                                                 rel=1e-9, abs=1e-12)
    assert {r[6] for r in rows} == {MAX_NORM}
    # Both of the Trainer's param groups (weight decay and none) follow the schedule.
    groups = [np.frombuffer(r[0], dtype=np.float64).tolist() for r in steps(run_dir, "lr_groups")]
    assert groups == [pytest.approx([linear_schedule(t)] * 2, rel=1e-9, abs=1e-12)
                      for t in range(MAX_STEPS)]
    assert [r[1] for r in rows] == [t * 4 * ACCUM // 32 for t in range(MAX_STEPS)]
    assert trainer.args.max_grad_norm == MAX_NORM  # the user's arguments are given back
    assert any("max_grad_norm=0.7) is turned off" in r.getMessage() for r in caplog.records)

    # Evaluations the Trainer logs at its step 4 and 8 (after 4 and 8 steps) sit at 3 and 7.
    evals = query(run_dir, "SELECT step, value FROM evals WHERE metric = 'loss' ORDER BY step")
    assert evals == [(3, pytest.approx(ref["eval_loss"][4], rel=1e-6)),
                     (7, pytest.approx(ref["eval_loss"][8], rel=1e-6))]
    info = meta(run_dir)
    assert info["optimizer"] == "AdamW" and info["scheduler"] == "LambdaLR"
    names = [n for n, _ in query(run_dir, "SELECT name, idx FROM params ORDER BY idx")]
    assert sorted(names) == sorted(n for n, _ in trainer.model.named_parameters())
    assert status(run_dir) == ("finished", None)


class NanAt(TrainerCallback):
    """Makes one gradient NaN at `step`; snapshots the model and optimizer around every step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.before: dict[str, Any] = {}
        self.unchanged: dict[int, bool] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model, optimizer = kw["model"], unwrap_optimizer(kw["optimizer"])
        if state.global_step == self.step:
            next(model.parameters()).grad[0, 0] = math.nan
        self.before = snapshot(model, optimizer)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        after = snapshot(kw["model"], unwrap_optimizer(kw["optimizer"]))
        self.unchanged[state.global_step] = same(self.before, after)


def test_a_nan_gradient_step_leaves_parameters_and_adam_state_untouched(tmp_path: Path) -> None:
    probe = NanAt(step=3)
    # The probe runs before clipdash's hook, so clipdash sees the NaN.
    trainer = make_trainer(tmp_path, [probe, ClipdashCallback(name="nan",
                                                              runs_dir=tmp_path / "runs")])
    trainer.train()
    assert probe.unchanged == {t: t == 3 for t in range(MAX_STEPS)}
    run_dir = tmp_path / "runs" / "nan"
    assert [r[0] for r in steps(run_dir, "finite")] == [int(t != 3) for t in range(MAX_STEPS)]
    events = query(run_dir, "SELECT step FROM events WHERE kind = 'nonfinite'")
    assert events == [(3,)]


class RaiseAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError("the data loader broke")


def test_an_exception_in_train_fails_the_run_and_keeps_every_step(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [ClipdashCallback(name="crash", runs_dir=tmp_path / "runs"),
                                      RaiseAt(5)])
    with pytest.raises(RuntimeError, match="data loader broke"):
        trainer.train()
    run_dir = tmp_path / "runs" / "crash"
    assert status(run_dir) == ("failed", "RuntimeError: the data loader broke")
    assert [r[0] for r in steps(run_dir, "step")] == [0, 1, 2, 3, 4]
    assert trainer.args.max_grad_norm == MAX_NORM


class SignalAt(TrainerCallback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_and_stops_the_trainer_its_own_way(tmp_path: Path,
                                                                        signum: int) -> None:
    previous = signal.getsignal(signum)
    trainer = make_trainer(tmp_path, [SignalAt(3, signum),
                                      ClipdashCallback(name="sig", runs_dir=tmp_path / "runs")])
    trainer.train()  # returns: the signal became a stop, not an exception
    run_dir = tmp_path / "runs" / "sig"
    assert status(run_dir) == ("stopped", None)
    assert [r[0] for r in steps(run_dir, "step")] == [0, 1, 2, 3]
    assert trainer.state.global_step == 4
    assert signal.getsignal(signum) == previous  # the handlers are given back


CRASH_WITHOUT_END_HOOK = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_integration_transformers import ClipdashCallback, RaiseAt, make_trainer
trainer = make_trainer(Path({tmp!r}), [RaiseAt(4)])
trainer.add_callback(ClipdashCallback(name="exit", runs_dir={runs!r}))  # after __init__
trainer.train()  # raises: nothing catches it, and the Trainer has no end hook for it
"""


def test_a_process_dying_without_the_end_hook_fails_the_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = CRASH_WITHOUT_END_HOOK.format(tests=str(ROOT / "tests"), tmp=str(tmp_path),
                                         runs=str(runs))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         cwd=tmp_path, timeout=180)
    assert out.returncode == 1 and "the data loader broke" in out.stderr, out.stderr[-2000:]
    assert status(runs / "exit") == ("failed", "RuntimeError: the data loader broke")
    assert [r[0] for r in steps(runs / "exit", "step")] == [0, 1, 2, 3]


def test_explicit_max_norm_and_tracker_options_win(tmp_path: Path) -> None:
    callback = ClipdashCallback(name="own", runs_dir=tmp_path / "runs", max_norm=0.1,
                                tensorboard=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=2, eval_strategy="no")
    trainer.train()
    rows = steps(tmp_path / "runs" / "own", "max_norm, grad_norm_post")
    assert rows == [(0.1, pytest.approx(0.1, rel=1e-5))] * 2
    assert not list((tmp_path / "runs" / "own").glob("events.out.tfevents*"))
    with pytest.raises(TypeError, match="nonfinit"):
        ClipdashCallback(nonfinit="skip")


def test_import_clipdash_never_imports_transformers_and_missing_is_explained() -> None:
    import_check("transformers")


def test_steer_a_live_trainer_from_another_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = start_example("hf_trainer.py", runs, "live", "--max-steps", "100000",
                         "--eval-steps", "100000", "--max-grad-norm", "1.0")
    run_dir = runs / "live"
    at = steer_live_run(proc, run_dir, runs / "live.log")
    rows = steps(run_dir, "step, lr, max_norm")
    assert status(run_dir) == ("stopped", None)
    assert rows[-1][0] == at["stop"] - 1
    assert [r[2] for r in rows] == [1.0 if t < at["max_norm"] else 0.05 for t, *_ in rows]
    # The LR change survives the cosine schedule: from its step on, every LR is the schedule's
    # times the same factor.
    lrs = {t: lr for t, lr, _ in rows}
    ratios = {t: lrs[t] / cosine(t) for t in lrs if t >= at["lr"]}
    assert lrs[at["lr"]] == pytest.approx(1e-3, rel=1e-9)
    assert min(ratios.values()) == pytest.approx(max(ratios.values()), rel=1e-9)
    assert all(lrs[t] == pytest.approx(cosine(t), rel=1e-9) for t in lrs if t < at["lr"])


def cosine(t: int, lr0: float = 3e-3, warmup: int = 10, total: int = 100000) -> float:
    """examples/hf_trainer.py's schedule (get_cosine_schedule_with_warmup) in closed form."""
    if t < warmup:
        return lr0 * t / warmup
    progress = (t - warmup) / (total - warmup)
    return lr0 * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))



def test_torchrun_rank_zero_records_and_every_rank_obeys_at_the_same_step(tmp_path: Path
                                                                          ) -> None:
    """The Trainer's own DDP under torchrun (gloo on CPU, 2 processes)."""
    runs = tmp_path / "runs"
    proc = start_example("hf_trainer.py", runs, "ddp", "--max-steps", "100000", "--eval-steps",
                         "100000", nproc=2)
    steer_ddp_run(proc, runs / "ddp", runs / "ddp.log")


def accelerate_run(tmp: Path, record: bool) -> tuple[list[float], Path]:
    """README's Accelerate loop: Tracker after `accelerator.prepare` (or the reference, where
    Accelerate clips)."""
    from accelerate import Accelerator

    import clipdash

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x * 3).sum(1, keepdim=True).sin() * 4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + t))
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer, loader, scheduler = accelerator.prepare(
        model, optimizer, torch.utils.data.DataLoader(data, batch_size=8), scheduler)
    run_dir = tmp / ("accelerate" if record else "reference")
    tracker = clipdash.Tracker(accelerator.unwrap_model(model), optimizer.optimizer,
                               scheduler.scheduler, max_norm=1.0, run_dir=run_dir) \
        if record else None
    norms: list[float] = []
    with tracker or contextlib.nullcontext():
        for xb, yb in loader:
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                if not accelerator.sync_gradients:
                    continue
                accelerator.unscale_gradients()  # a no-op here; under fp16 it must come first
                if tracker is None:
                    norms.append(float(accelerator.clip_grad_norm_(model.parameters(), 1.0)))
                    optimizer.step()
                elif tracker.clip():
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if tracker is not None:
                    tracker.step(loss)
    return norms, run_dir


def test_tracker_after_accelerator_prepare_records_accelerates_norms(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    reference, _ = accelerate_run(tmp_path, record=False)
    _, run_dir = accelerate_run(tmp_path, record=True)
    rows = steps(run_dir, "step, grad_norm_pre, lr")
    assert [r[0] for r in rows] == list(range(4))  # 8 batches, 2 per optimizer step
    assert max(reference) > 1.0  # clipping fired
    assert [r[1] for r in rows] == pytest.approx(reference, rel=1e-5)
    assert [r[2] for r in rows] == pytest.approx([0.05 / (1 + t) for t in range(4)], rel=1e-12)
    info = meta(run_dir)
    assert (info["optimizer"], info["scheduler"]) == ("AdamW", "LambdaLR")


def test_parameter_names_see_through_wrappers() -> None:
    from clipdash.integrations._wrappers import user_facing_parameters

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = torch.nn.Linear(2, 2)  # a user's own submodule called "module"

    inner = torch.nn.Sequential(Block(), torch.compile(torch.nn.Linear(2, 1)))
    wrapped = torch.compile(torch.nn.DataParallel(inner))
    assert [n for n, _ in wrapped.named_parameters()][0] == "_orig_mod.module.0.module.weight"
    names = [n for n, _ in user_facing_parameters(wrapped)]
    assert names == ["0.module.weight", "0.module.bias", "1.weight", "1.bias"]
