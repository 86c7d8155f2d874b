"""Adaptive clipping: each rule against an independent numpy / plain-python computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from clipdash.store import RunReader
from clipdash.track.adaptive import ALL_HISTORY_CAP
from clipdash.track.clippers import EPS, make_clipper
from clipdash.track.steering import Command, Steering
from clipdash.track.tracker import Tracker

CPU = torch.device("cpu")


def norm_sequence(n: int, seed: int = 0, spikes: bool = True) -> list[float]:
    """Log-normal norms with a few spikes and, at fixed places, non-finite values."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 0.3, n))
    if spikes:
        norms[rng.choice(n, n // 10, replace=False)] *= 20
    out = norms.tolist()
    for i in (7, 31):
        if i < n:
            out[i] = math.nan if i == 7 else math.inf
    return out


def drive(clipper, norms: list[float]) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Feed one gradient per step whose total norm is `norm`; return thresholds, posts, grads."""
    direction = torch.tensor([0.6, -0.8])  # unit norm
    thresholds, posts, grads = [], [], []
    param = torch.zeros(2)
    for norm in norms:
        g = direction * norm if math.isfinite(norm) else torch.full((2,), norm)
        total = torch.linalg.vector_norm(g).to(torch.float32)
        post, threshold = clipper.apply([g], [param], total.reshape(1), total, 2.0)
        thresholds.append(float(threshold))
        posts.append(float(post))
        grads.append(g.numpy().copy())
    return thresholds, posts, grads


def expected_clip(norm: float, threshold: float) -> tuple[float, float]:
    """(coefficient, post norm) of the shared rule: scale only when norm > threshold."""
    if norm > threshold:
        coef = threshold / (norm + EPS)
        return coef, norm * coef
    return 1.0, norm


# ----------------------------------------------------------------------------- percentile


@pytest.mark.parametrize("history", [None, 16])
@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_percentile_threshold_is_numpy_percentile_of_history(p: float, history: int | None):
    norms = norm_sequence(80)
    clipper = make_clipper("percentile", CPU, percentile=p, history=history, max_norm=3.0)
    thresholds, posts, grads = drive(clipper, norms)
    for t, norm in enumerate(norms):
        window = norms[: t + 1] if history is None else norms[max(0, t + 1 - history): t + 1]
        finite = [v for v in window if math.isfinite(v)]
        want = float(np.percentile(finite, p)) if finite else 3.0
        # float32 on the device: torch interpolates with a float32 rank, numpy with float64
        assert thresholds[t] == pytest.approx(want, rel=1e-4), t
        if math.isfinite(norm):
            coef, post = expected_clip(norm, want)
            assert posts[t] == pytest.approx(post, rel=1e-4)
            np.testing.assert_allclose(grads[t], np.array([0.6, -0.8]) * norm * coef, rtol=1e-4)


def test_percentile_no_finite_history_uses_max_norm_and_all_history_grows():
    clipper = make_clipper("percentile", CPU, percentile=10, max_norm=0.7)
    thresholds, _, _ = drive(clipper, [math.nan, 2.0])
    assert thresholds == [pytest.approx(0.7), pytest.approx(2.0)]
    norms = norm_sequence(300, seed=3, spikes=False)
    clipper = make_clipper("percentile", CPU, percentile=25)
    thresholds, _, _ = drive(clipper, norms)
    assert clipper.buf.numel() == 512 <= ALL_HISTORY_CAP  # grew from 256, by doubling
    finite = [v for v in norms if math.isfinite(v)]
    assert thresholds[-1] == pytest.approx(float(np.percentile(finite, 25)), rel=1e-4)
    assert clipper.history().numel() == len(finite)


def test_percentile_state_dict_resumes_identically():
    norms = norm_sequence(60, seed=1)
    a = make_clipper("percentile", CPU, percentile=20, history=25)
    drive(a, norms[:30])
    b = make_clipper("percentile", CPU, percentile=5, history=25)
    b.load_state_dict(a.state_dict())
    assert b.percentile == 20
    assert drive(a, norms[30:])[0] == drive(b, norms[30:])[0]


# ----------------------------------------------------------------------------- zscore


def zclip_reference(norms: list[float], z: float, alpha: float, warmup: int,
                    max_norm: float) -> list[float]:
    """Thresholds of the documented ZClip rule, in plain python."""
    out, warm = [], []
    mean = var = None
    for t, g in enumerate(norms):
        ok = math.isfinite(g)
        if t < warmup:
            out.append(max_norm)
            if ok:
                warm.append(g)
            continue
        if t == warmup and warm:
            mean = sum(warm) / len(warm)
            var = sum((x - mean) ** 2 for x in warm) / len(warm)
        if mean is None:
            out.append(math.nan)
            if ok:
                mean, var = g, 0.0
            continue
        thr = mean + z * math.sqrt(var)
        out.append(thr)
        if ok:
            eff = min(g, thr)
            mean = alpha * mean + (1 - alpha) * eff
            var = alpha * var + (1 - alpha) * (eff - mean) ** 2
    return out


@pytest.mark.parametrize(("z", "alpha", "warmup"), [(2.5, 0.97, 25), (1.5, 0.8, 5), (2.0, 0.9, 0)])
def test_zscore_threshold_matches_reference(z: float, alpha: float, warmup: int):
    norms = norm_sequence(120, seed=2)
    clipper = make_clipper("zscore", CPU, z_threshold=z, ema_alpha=alpha, warmup_steps=warmup,
                            max_norm=1.5)
    thresholds, posts, _ = drive(clipper, norms)
    want = zclip_reference(norms, z, alpha, warmup, 1.5)
    np.testing.assert_allclose(thresholds, want, rtol=2e-5)
    clipped = 0
    for t, norm in enumerate(norms):
        if math.isfinite(norm) and math.isfinite(want[t]):
            coef, post = expected_clip(norm, want[t])
            clipped += coef < 1
            assert posts[t] == pytest.approx(post, rel=2e-5)
    assert clipped >= 5  # the spikes were clipped: the test exercises the rule


def test_zscore_state_dict_resumes_identically():
    norms = norm_sequence(80, seed=4)
    a = make_clipper("zscore", CPU, warmup_steps=10)
    drive(a, norms[:40])
    b = make_clipper("zscore", CPU, warmup_steps=10)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(drive(a, norms[40:])[0], drive(b, norms[40:])[0])


# ----------------------------------------------------------------------------- AGC


def agc_reference(params: list[np.ndarray], grads: list[np.ndarray], clipping: float,
                  eps: float) -> tuple[list[np.ndarray], float, float]:
    """NFNets' unit-wise rule in numpy: (clipped grads, post total norm, recorded threshold)."""
    out, post_sq, bound_sq = [], 0.0, 0.0
    for w, g in zip(params, grads, strict=True):
        units_w = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
        units_g = g.reshape(g.shape[0], -1) if g.ndim > 1 else g.reshape(1, -1)
        new = units_g.copy()
        for u in range(units_g.shape[0]):
            bound = clipping * max(np.linalg.norm(units_w[u]), eps)
            gn = np.linalg.norm(units_g[u])
            if gn >= bound:
                new[u] = units_g[u] * bound / max(gn, 1e-6)
            bound_sq += bound ** 2
            post_sq += np.linalg.norm(new[u]) ** 2
        out.append(new.reshape(g.shape))
    return out, math.sqrt(post_sq), math.sqrt(bound_sq)


def test_agc_matches_reference():
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (6,), (3, 2, 3, 3), ()]
    params = [torch.randn(s, generator=gen) for s in shapes]
    params[1][:3] = 0.0  # zero units: eps floors the parameter norm
    grads = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    grads[0][0] *= 100  # one unit far above its bound, others near it
    want, post_want, thr_want = agc_reference(
        [p.numpy() for p in params], [g.numpy() for g in grads], 0.02, 1e-3)
    clipper = make_clipper("agc", CPU, clipping=0.02, eps=1e-3, max_norm=1.0, max_value=0.5)
    per = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(per)
    post, threshold = clipper.apply(grads, params, per, total, 2.0)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-7)
    assert float(post) == pytest.approx(post_want, rel=1e-5)
    assert float(threshold) == pytest.approx(thr_want, rel=1e-5)
    assert float(post) < float(total)


# ----------------------------------------------------------------------------- integration


@pytest.mark.parametrize("mode", ["percentile", "zscore", "agc"])
def test_tracker_records_the_threshold_as_max_norm(tmp_path, mode: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    options = {"percentile": {"percentile": 30.0, "history": 8},
               "zscore": {"z_threshold": 1.0, "warmup_steps": 5, "ema_alpha": 0.9},
               "agc": {"clipping": 0.01}}[mode]
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    with Tracker(model, opt, run_dir=tmp_path / mode, clip=mode, max_norm=0.8,
                 clip_options=options, tensorboard=False) as tracker:
        for i in range(30):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[i % 8 * 8:][:8]), y[i % 8 * 8:][:8])
            loss.backward()
            if tracker.clip():
                opt.step()
            tracker.step(loss)
    with RunReader(tmp_path / mode) as reader:
        rows = reader.steps_after(-1, ("grad_norm_pre", "grad_norm_post", "max_norm", "clipped"))
        assert reader.meta()["clip_mode"] == mode
    pre, recorded = rows["grad_norm_pre"], rows["max_norm"]
    if mode == "percentile":
        want = [np.percentile(pre[max(0, t - 7): t + 1], 30) for t in range(30)]
    elif mode == "zscore":
        want = zclip_reference(pre, 1.0, 0.9, 5, 0.8)
    else:
        want = None
    if want is not None:
        np.testing.assert_allclose(recorded, want, rtol=1e-4)
    assert all(m is not None and m > 0 for m in recorded)
    for p, q, m, c in zip(pre, rows["grad_norm_post"], recorded, rows["clipped"], strict=True):
        assert q <= p * (1 + 1e-6)
        if mode != "agc":
            assert q == pytest.approx(min(p, m), rel=1e-4)
            assert c == (p > m)
    assert sum(rows["clipped"]) >= 3


def test_adaptive_settings_are_steerable():
    p = torch.zeros(2, requires_grad=True)
    clipper = make_clipper("percentile", CPU, percentile=10.0, max_norm=1.0)
    steering = Steering(clipper, torch.optim.SGD([p], lr=0.1), None)
    bad = steering.apply(Command(1, "cli", "set", "percentile", "150"), 5)
    assert not bad.applied and "percentile" in bad.message
    ok = steering.apply(Command(2, "cli", "set", "percentile", "50"), 5)
    assert ok.applied and clipper.get("percentile") == 50.0
    wrong = steering.apply(Command(3, "cli", "set", "max_norm", "2"), 5)
    assert not wrong.applied
    z = make_clipper("zscore", CPU)
    assert Steering(z, torch.optim.SGD([p], lr=0.1), None).apply(
        Command(4, "cli", "set", "z_threshold", "3"), 1).applied
    assert z.get("z_threshold") == 3.0
    agc = make_clipper("agc", CPU)
    assert agc.set("clipping", 0.05) == 0.01 and agc.get("clipping") == 0.05


def test_apply_never_reads_a_tensor_on_the_host(monkeypatch):
    """A CPU stand-in for CUDA's sync check: no .item(), float(), bool() or .tolist() in apply."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)]
    clippers = [make_clipper(m, CPU, max_norm=1.0, max_value=0.5, warmup_steps=2)
                if m == "zscore" else make_clipper(m, CPU, max_norm=1.0, max_value=0.5)
                for m in ("percentile", "zscore", "agc")]

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor on the hot path")

    steps = []
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        per = torch.stack([torch.linalg.vector_norm(g) for g in grads])
        steps.append((grads, per, torch.linalg.vector_norm(per)))
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for clipper in clippers:
        for grads, per, total in steps:
            clipper.apply([g.clone() for g in grads], params, per, total, 2.0)
