"""What the Tracker records equals what PyTorch computes, checked on real numbers.

Every test trains two identical models in lockstep on the same batches: one through
`clipdash.Tracker`, one through the reference loop (`clip_grad_norm_` / `clip_grad_value_` /
nothing). The recorded values are read back from the store and compared with the reference's
return values, with an independent float64 computation from the gradients themselves, and with
the gradients the optimizer actually saw after `tracker.clip()`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from clipdash import Tracker
from clipdash.store import RunReader

NORM_TYPES = [2.0, 1.0, 3.5, math.inf]
STEPS = 8


class MLP(nn.Module):
    def __init__(self, unused: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 2)
        # Registered but never called: its parameters never get a gradient.
        self.unused = nn.Linear(3, 3) if unused else None

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class RNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 12, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def batches(model: nn.Module, n: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    shape = (8, 6, 3) if isinstance(model, RNN) else (8, 4)
    return [(torch.randn(*shape, generator=gen) * 2, torch.randn(8, 2, generator=gen))
            for _ in range(n)]


def grads_of(model: nn.Module) -> list[Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def norm64(tensors: list[Tensor], norm_type: float) -> float:
    """Independent: the norm of all gradients concatenated into one float64 vector."""
    if not tensors:
        return 0.0
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    return float(torch.linalg.vector_norm(flat, norm_type))


def p_norm(values: np.ndarray, norm_type: float) -> float:
    v = np.abs(values.astype(np.float64))
    return float(v.max()) if math.isinf(norm_type) else float((v ** norm_type).sum()
                                                             ** (1 / norm_type))


@dataclass
class Observed:
    """What the test saw around each `tracker.clip()` (independently of the tracker)."""

    pre: list[float] = field(default_factory=list)        # float64 norm of the raw gradients
    per_param: list[list[float]] = field(default_factory=list)
    post: list[float] = field(default_factory=list)       # float64 norm after tracker.clip()
    ref_pre: list[float] = field(default_factory=list)    # the reference's return value
    max_norm: list[float] = field(default_factory=list)
    stepped: list[bool] = field(default_factory=list)


Reference = Callable[[nn.Module, int], Any]


def lockstep(tmp_path: Path, model: nn.Module, *, steps: int = STEPS, norm_type: float = 2.0,
             max_norms: Callable[[int], float] | None = None, reference: Reference | None = None,
             corrupt: Callable[[nn.Module, int], None] | None = None,
             make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
             **tracker_args: Any) -> tuple[Tracker, nn.Module, nn.Module, Observed]:
    """Train `model` with a Tracker and a deep copy with `reference(model, step)` after backward.

    `max_norms(step)` sets the tracker's max_norm before the step (and is what the default
    reference passes to clip_grad_norm_); `corrupt(model, step)` may damage gradients after
    backward, identically in both models.
    """
    make_optimizer = make_optimizer or (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    ref_model = copy.deepcopy(model)
    opt, ref_opt = make_optimizer(model), make_optimizer(ref_model)
    tracker_args.setdefault("tensorboard", False)
    tracker_args.setdefault("max_norm", 1.0)
    tracker = Tracker(model, opt, run_dir=tmp_path / "run", norm_type=norm_type, **tracker_args)
    loss_fn = nn.MSELoss()
    seen = Observed()
    data = batches(model, steps)
    with tracker:
        for step, (x, y) in enumerate(data):
            max_norm = max_norms(step) if max_norms else tracker_args["max_norm"]
            if max_norms:
                tracker.clipper.set("max_norm", max_norm)
            seen.max_norm.append(max_norm)

            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if corrupt:
                corrupt(model, step)
            raw = [p.grad for p in tracker.params]
            seen.pre.append(norm64([g for g in raw if g is not None], norm_type))
            seen.per_param.append([norm64([g], norm_type) if g is not None else 0.0
                                   for g in raw])
            stepped = tracker.clip()
            seen.stepped.append(stepped)
            seen.post.append(norm64(grads_of(model), norm_type))
            if stepped:
                opt.step()
            tracker.step(loss, epoch=0)

            ref_opt.zero_grad()
            loss_fn(ref_model(x), y).backward()
            if corrupt:
                corrupt(ref_model, step)
            if reference is None:
                ref = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm, norm_type)
            else:
                ref = reference(ref_model, step)
            seen.ref_pre.append(float(ref) if isinstance(ref, Tensor) else math.nan)
            ref_opt.step()
    return tracker, model, ref_model, seen


def recorded(tracker: Tracker) -> list[dict[str, Any]]:
    with RunReader(tracker.run_dir) as reader:
        return list(reader.iter_steps(with_params=True))


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, equal_nan=True, msg=name)


def alternating(step: int) -> float:
    """A threshold far above the norms on even steps (not clipped), far below on odd steps."""
    return 1e3 if step % 2 == 0 else 0.02


# -- clip by norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("model_cls", [MLP, RNN])
def test_norm_mode_matches_clip_grad_norm(tmp_path: Path, model_cls: type[nn.Module],
                                          norm_type: float) -> None:
    torch.manual_seed(0)
    tracker, model, ref_model, seen = lockstep(tmp_path, model_cls(), norm_type=norm_type,
                                               max_norms=alternating)
    rows = recorded(tracker)
    assert [r["step"] for r in rows] == list(range(STEPS))
    n_params = len(list(model.parameters()))
    for i, r in enumerate(rows):
        pre, post, coef = r["grad_norm_pre"], r["grad_norm_post"], r["clip_coef"]
        # clip_grad_norm_'s own return value, on an identical model: the same float32.
        assert pre == seen.ref_pre[i]
        assert pre == pytest.approx(seen.pre[i], rel=1e-5)
        # Post-clip: the norm of the gradients the optimizer actually used.
        assert post == pytest.approx(seen.post[i], rel=1e-5)
        assert r["max_norm"] == pytest.approx(seen.max_norm[i])
        norms = r["param_norms"]
        assert norms.dtype == np.float32 and norms.shape == (n_params,)
        np.testing.assert_allclose(norms, seen.per_param[i], rtol=1e-5)
        assert p_norm(norms, norm_type) == pytest.approx(pre, rel=1e-5)
        if i % 2 == 0:  # threshold far above: not clipped, scale exactly 1
            assert r["clipped"] == 0 and coef == 1.0 and post == pre
        else:
            assert r["clipped"] == 1 and coef < 1.0
            assert coef == pytest.approx(post / pre, rel=1e-5)
            assert post == pytest.approx(seen.max_norm[i], rel=1e-4)
        assert r["finite"] == 1
        assert r["lr"] == pytest.approx(0.05)
    # Clipping is clip_grad_norm_'s arithmetic, so training is bit for bit the reference's.
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_max_norm_change_applies_from_next_step(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def max_norms(step: int) -> float:
        return 5.0 if step < 4 else 0.05

    tracker, model, ref_model, _ = lockstep(tmp_path, MLP(), max_norms=max_norms, max_norm=5.0)
    rows = recorded(tracker)
    assert [r["max_norm"] for r in rows] == [5.0] * 4 + [pytest.approx(0.05)] * 4
    assert all(r["grad_norm_post"] <= 0.05 * (1 + 1e-5) for r in rows[4:])
    assert all(r["clipped"] == 1 for r in rows[4:])
    assert tracker.clipper.get("max_norm") == 0.05
    assert tracker.state_dict()["clipper"] == {"max_norm": 0.05}
    assert_same_params(model, ref_model)


def test_unused_parameter_has_norm_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tracker, model, ref_model, seen = lockstep(tmp_path, MLP(unused=True), max_norms=alternating)
    names = [n for n, _ in model.named_parameters()]
    with RunReader(tracker.run_dir) as reader:
        assert [n for n, _ in reader.params()] == names
    unused = [i for i, n in enumerate(names) if n.startswith("unused.")]
    assert len(unused) == 2
    for i, r in enumerate(recorded(tracker)):
        assert r["param_norms"][unused].tolist() == [0.0, 0.0]
        assert r["grad_norm_pre"] == seen.ref_pre[i]
        assert r["grad_norm_post"] == pytest.approx(seen.post[i], rel=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_param_groups_record_every_lr(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def two_groups(m: nn.Module) -> torch.optim.Optimizer:
        assert isinstance(m, MLP)
        return torch.optim.SGD([{"params": m.body.parameters(), "lr": 0.1},
                                {"params": m.head.parameters(), "lr": 0.01}], lr=0.5)

    tracker, model, ref_model, _ = lockstep(tmp_path, MLP(), make_optimizer=two_groups)
    rows = recorded(tracker)
    assert all(r["lr_groups"] == [0.1, 0.01] and r["lr"] == 0.1 for r in rows)
    with RunReader(tracker.run_dir) as reader:
        assert reader.meta()["n_groups"] == 2
    assert_same_params(model, ref_model)


def test_lr_recorded_is_the_lr_the_step_used(tmp_path: Path) -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x, y = batches(model, 1)[0]
    with Tracker(model, opt, sched, run_dir=tmp_path / "run", tensorboard=False) as tracker:
        for _ in range(6):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if tracker.clip():
                opt.step()
            tracker.step(0.0)
            sched.step()
    assert [r["lr"] for r in recorded(tracker)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


# -- clip by value, no clipping ------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=lambda p: f"p{p:g}")
def test_value_mode_matches_clip_grad_value(tmp_path: Path, norm_type: float) -> None:
    torch.manual_seed(0)
    max_value = 0.05

    def reference(m: nn.Module, step: int) -> None:
        torch.nn.utils.clip_grad_value_(m.parameters(), max_value)

    tracker, model, ref_model, seen = lockstep(
        tmp_path, MLP(), norm_type=norm_type, reference=reference, clip="value",
        max_value=max_value)
    for i, r in enumerate(recorded(tracker)):
        assert r["grad_norm_pre"] == pytest.approx(seen.pre[i], rel=1e-5)
        # Clamping is not a scaling: the post-clip norm is recomputed from the clamped grads.
        assert r["grad_norm_post"] == pytest.approx(seen.post[i], rel=1e-5)
        assert r["grad_norm_post"] <= r["grad_norm_pre"]
        assert r["clip_coef"] == pytest.approx(r["grad_norm_post"] / r["grad_norm_pre"],
                                               rel=1e-5)
        assert r["clipped"] == int(r["clip_coef"] < 1.0)
        assert r["max_norm"] is None and r["max_value"] == max_value
        assert p_norm(r["param_norms"], norm_type) == pytest.approx(r["grad_norm_pre"], rel=1e-5)
    assert any(r["clipped"] for r in recorded(tracker))
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_mode_none_records_without_clipping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tracker, model, ref_model, seen = lockstep(tmp_path, RNN(), reference=lambda m, s: None,
                                               clip="none", max_norm=1e-3)
    for i, r in enumerate(recorded(tracker)):
        assert r["grad_norm_pre"] == pytest.approx(seen.pre[i], rel=1e-5)
        assert r["grad_norm_post"] == r["grad_norm_pre"]
        assert seen.post[i] == seen.pre[i]  # the gradients were not touched
        assert r["clip_coef"] == 1.0 and r["clipped"] == 0 and r["max_norm"] is None
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


# -- non-finite gradients -------------------------------------------------------------------


def nan_at_step_3(m: nn.Module, step: int) -> None:
    if step == 3:
        grad = next(m.parameters()).grad
        assert grad is not None
        grad[0, 0] = math.nan


def test_nonfinite_skip_skips_the_update_and_goes_on(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def reference(m: nn.Module, step: int) -> Tensor:
        total = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        if step == 3:  # what "skip" means: no update at all (momentum untouched too)
            for p in m.parameters():
                p.grad = None
        return total

    tracker, model, ref_model, seen = lockstep(tmp_path, MLP(), reference=reference,
                                               corrupt=nan_at_step_3, nonfinite="skip")
    assert seen.stepped == [True, True, True, False, True, True, True, True]
    rows = recorded(tracker)
    assert len(rows) == STEPS  # the run went on
    assert [r["finite"] for r in rows] == [1, 1, 1, 0, 1, 1, 1, 1]
    assert rows[3]["grad_norm_pre"] is None  # NaN is stored as NULL
    assert not tracker.should_stop
    assert_same_params(model, ref_model)
    with RunReader(tracker.run_dir) as reader:
        events = [e for e in reader.events_after() if e["kind"] == "nonfinite"]
    assert len(events) == 1 and events[0]["step"] == 3 and "skipped" in events[0]["message"]


def test_nonfinite_stop_requests_stop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(model, 1)[0]
    with Tracker(model, opt, run_dir=tmp_path / "run", tensorboard=False,
                 nonfinite="stop") as tracker:
        steps = 0
        for step in range(10):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            nan_at_step_3(model, step)
            if tracker.clip():
                opt.step()
            tracker.step(0.0)
            steps += 1
            if tracker.should_stop:
                break
    assert steps == 4 and tracker.should_stop
    with RunReader(tracker.run_dir) as reader:
        assert reader.status() == "stopped"
        assert [r["finite"] for r in reader.iter_steps()] == [1, 1, 1, 0]


def test_nonfinite_continue_behaves_like_clip_grad_norm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tracker, model, ref_model, seen = lockstep(tmp_path, MLP(), corrupt=nan_at_step_3,
                                               nonfinite="continue")
    assert all(seen.stepped)
    rows = recorded(tracker)
    assert [r["finite"] for r in rows][:4] == [1, 1, 1, 0]
    # A NaN gradient with clip_grad_norm_ poisons every parameter; so does "continue".
    assert all(torch.isnan(p).all() for p in model.parameters())
    assert_same_params(model, ref_model)


def test_step_without_clip_records_loss_and_nan_norms(tmp_path: Path) -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, opt, run_dir=tmp_path / "run", tensorboard=False) as tracker:
        tracker.step(torch.tensor(0.25))
        tracker.step(0.5)
    rows = recorded(tracker)
    assert [r["loss"] for r in rows] == [0.25, 0.5]
    assert rows[0]["grad_norm_pre"] is None and rows[0]["param_norms"] is not None
    assert np.isnan(rows[0]["param_norms"]).all()
