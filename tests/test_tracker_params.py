"""The parameter set may change while training; several optimizers clip as one; model order.

Every test trains a Tracker model and a deep copy in lockstep. The copy's loop is the reference:
`clip_grad_norm_` over the parameters its optimizer(s) update, in model order. The recorded
norms are checked against an independent float64 recomputation from the gradients, and the
gradients the optimizer applied against the reference's.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from clipdash import Tracker
from clipdash.store import RunReader, schema
from clipdash.store.layout import DB_NAME

MAX_NORM = 0.5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.norm(self.a(x))))))


def data(n: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen) * 3, torch.randn(16, 3, generator=gen))
            for _ in range(n)]


def norm64(grads: list[Tensor]) -> float:
    if not grads:
        return 0.0
    return float(torch.cat([g.detach().double().flatten() for g in grads]).norm())


def steps_table(run_dir: Path) -> list[dict]:
    with RunReader(run_dir) as r:
        return list(r.iter_steps())


def raw_blobs(run_dir: Path) -> tuple[list[tuple[str, int | None]], list[bytes | None]]:
    conn = sqlite3.connect(run_dir / DB_NAME)
    try:
        params = conn.execute("SELECT name, first_step FROM params ORDER BY idx").fetchall()
        blobs = [r[0] for r in conn.execute("SELECT param_norms FROM steps ORDER BY step")]
    finally:
        conn.close()
    return params, blobs


def train_pair(tmp_path: Path, steps: int, change, make_opts, **tracker_args):
    """Train model + reference copy; `change(model, opts, step)` mutates both alike.

    Returns (tracker losses, reference losses, recorded pre norms, float64 pre norms,
    applied post-clip norms, run_dir).
    """
    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    opts, ref_opts = make_opts(model), make_opts(ref)
    run_dir = tmp_path / "run"
    tracker = Tracker(model, opts if len(opts) > 1 else opts[0], run_dir=run_dir,
                      max_norm=MAX_NORM, tensorboard=False, buffer_steps=4, quiet=True,
                      **tracker_args)
    loss_fn = nn.MSELoss()
    losses, ref_losses, pre64, post64 = [], [], [], []
    with tracker:
        for step, (x, y) in enumerate(data(steps)):
            change(model, opts, step)
            change(ref, ref_opts, step)
            for o in (*opts, *ref_opts):
                o.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            applied = [p for o in opts for g in o.param_groups for p in g["params"]]
            pre64.append(norm64([p.grad for p in applied if p.grad is not None]))
            assert tracker.clip()
            post64.append(norm64([p.grad for p in applied if p.grad is not None]))
            for o in opts:
                o.step()
            tracker.step(loss)
            losses.append(loss.item())

            ref_loss = loss_fn(ref(x), y)
            ref_loss.backward()
            ref_ids = {id(p) for o in ref_opts for g in o.param_groups for p in g["params"]}
            nn.utils.clip_grad_norm_([p for p in ref.parameters() if id(p) in ref_ids],
                                     MAX_NORM)
            for o in ref_opts:
                o.step()
            ref_losses.append(ref_loss.item())
    rows = steps_table(run_dir)
    return losses, ref_losses, [r["grad_norm_pre"] for r in rows], pre64, post64, run_dir


def test_unfreezing_is_clipped_recorded_and_gets_its_own_series(tmp_path: Path) -> None:
    k, steps = 5, 12

    def change(model: nn.Module, opts: list, step: int) -> None:
        if step == 0:
            model.b.requires_grad_(False)
        if step == k:
            model.b.requires_grad_(True)

    losses, ref_losses, pre, pre64, post64, run_dir = train_pair(
        tmp_path, steps, change, lambda m: [torch.optim.SGD(m.parameters(), lr=0.1)])
    assert losses == ref_losses  # bit for bit: the unfrozen layer is clipped from step k
    np.testing.assert_allclose(pre, pre64, rtol=1e-5)
    assert pre64[k] > MAX_NORM  # the test clips at the step that matters
    assert all(p <= MAX_NORM * (1 + 1e-5) for p in post64)
    params, blobs = raw_blobs(run_dir)
    names = [n for n, _ in params]
    # b was frozen when the Tracker started (step 0's change ran after construction: its
    # parameters were seen trainable then), so they keep their column and show 0 while frozen.
    assert set(names) == {n for n, _ in Net().named_parameters()}
    with RunReader(run_dir) as r:
        rows = list(r.iter_steps(with_params=True))
    b = names.index("b.weight")
    assert [float(row["param_norms"][b]) for row in rows[:k]] == [0.0] * k
    assert all(row["param_norms"][b] > 0 for row in rows[k:])
    assert len(rows) == steps


def test_parameters_frozen_at_start_appear_from_the_step_they_train(tmp_path: Path) -> None:
    k, steps = 4, 10
    torch.manual_seed(0)
    model = Net()
    model.b.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "late"
    seen: list[list[float]] = []
    with Tracker(model, opt, run_dir=run_dir, max_norm=MAX_NORM, tensorboard=False,
                 buffer_steps=3, quiet=True) as tracker:
        for step, (x, y) in enumerate(data(steps)):
            if step == k:
                model.b.requires_grad_(True)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            seen.append([norm64([p.grad]) for p in model.parameters() if p.grad is not None])
            tracker.clip()
            opt.step()
            tracker.step(loss)
    params, blobs = raw_blobs(run_dir)
    first = dict(params)
    assert first["b.weight"] == k and first["b.bias"] == k
    assert first["a.weight"] is None
    widths = [len(b) // 4 for b in blobs if b is not None]
    assert widths == [6] * k + [8] * (steps - k)
    with RunReader(run_dir) as r:
        rows = list(r.iter_steps(with_params=True))
        steps_k, norms = r.param_norms(points=1000)
    names = [n for n, _ in params]
    model_names = [n for n, _ in model.named_parameters()]
    for step, row in enumerate(rows):
        present = model_names if step >= k else [n for n in model_names if not n.startswith("b.")]
        expected = dict(zip(present, seen[step], strict=True))
        got = {n: float(v) for n, v in zip(names, row["param_norms"], strict=True)
               if not math.isnan(v)}
        assert got.keys() == expected.keys()
        for n in got:
            assert got[n] == pytest.approx(expected[n], rel=1e-5)
    assert np.isnan(norms[:k, names.index("b.weight")]).all()
    assert list(steps_k) == list(range(steps))
    with RunReader(run_dir) as r:
        events = [e["message"] for e in r.events_after() if e["kind"] == "params"]
    assert events and "from step 4" in events[0]


def test_add_param_group_is_clipped_and_its_lr_recorded(tmp_path: Path) -> None:
    m, steps = 6, 14

    def make(model: nn.Module) -> list:
        body = [p for n, p in model.named_parameters() if not n.startswith("head")]
        return [torch.optim.SGD(body, lr=0.1)]

    def change(model: nn.Module, opts: list, step: int) -> None:
        if step == m:
            opts[0].add_param_group({"params": list(model.head.parameters()), "lr": 0.03})

    losses, ref_losses, pre, pre64, _, run_dir = train_pair(tmp_path, steps, change, make)
    assert losses == ref_losses
    np.testing.assert_allclose(pre, pre64, rtol=1e-5)
    rows = steps_table(run_dir)
    assert [r["step"] for r in rows] == list(range(steps))  # no step lost
    assert [r["lr_groups"] for r in rows[:m]] == [[0.1]] * m
    assert [r["lr_groups"] for r in rows[m:]] == [[0.1, 0.03]] * (steps - m)
    with RunReader(run_dir) as r:
        assert r.meta()["n_groups"] == 2
        assert r.status() == "finished"
    params, _ = raw_blobs(run_dir)
    assert dict(params)["head.weight"] == m


def test_two_optimizers_clip_as_one_and_record_every_group(tmp_path: Path) -> None:
    def make(model: nn.Module) -> list:
        head = list(model.head.parameters())
        body = [p for n, p in model.named_parameters() if not n.startswith("head")]
        return [torch.optim.SGD(body, lr=0.1), torch.optim.Adam(head, lr=0.01)]

    losses, ref_losses, pre, pre64, post64, run_dir = train_pair(
        tmp_path, 8, lambda *_: None, make)
    assert losses == ref_losses  # one total norm over both optimizers' parameters
    np.testing.assert_allclose(pre, pre64, rtol=1e-5)
    clipped = [p for p, q in zip(pre64, post64, strict=True) if p > MAX_NORM]
    assert clipped
    assert all(q == pytest.approx(MAX_NORM, rel=1e-5) for p, q in zip(pre64, post64,
                                                                     strict=True) if p > MAX_NORM)
    rows = steps_table(run_dir)
    assert rows[0]["lr_groups"] == [0.1, 0.01]  # optimizer order, then group order
    with RunReader(run_dir) as r:
        assert r.meta()["optimizer"] == "SGD, Adam"


def test_decay_no_decay_groups_are_bit_identical_to_clip_grad_norm(tmp_path: Path) -> None:
    """nanoGPT's grouping (2-D weights decay, biases and norms don't) reorders parameters."""
    def make(model: nn.Module) -> list:
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        return [torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=3e-3)]

    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    opt, ref_opt = make(model)[0], make(ref)[0]
    batches = data(300, seed=3)
    with Tracker(model, opt, run_dir=tmp_path / "gpt", max_norm=MAX_NORM, tensorboard=False,
                 quiet=True) as tracker:
        for x, y in batches:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            tracker.clip()
            opt.step()
            tracker.step(loss)
            ref_opt.zero_grad()
            ref_loss = nn.functional.mse_loss(ref(x), y)
            ref_loss.backward()
            total = nn.utils.clip_grad_norm_(ref.parameters(), MAX_NORM)
            ref_opt.step()
            assert loss.item() == ref_loss.item()
            assert tracker.buffer.pre.item() == total.item()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_params_table_and_meta_are_json(tmp_path: Path) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, opt, run_dir=tmp_path / "m", tensorboard=False, quiet=True,
                 clip="value", max_value=0.25):
        pass
    conn = sqlite3.connect(tmp_path / "m" / DB_NAME)
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    conn.close()
    assert meta["settable"] == ["max_value", "lr"]
    assert meta["clip"]["mode"] == "value" and meta["clip"]["max_value"] == 0.25
    assert schema.SCHEMA_VERSION == 2
