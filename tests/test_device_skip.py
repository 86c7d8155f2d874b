"""nonfinite="skip" with fused optimizers: skipped on the device, nothing read back on the host.

The proof counts every tensor-to-host conversion (`item`, `__bool__`, `__float__`, `__int__`,
`tolist`) made on the training thread during `clip()` and `step()`.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from clipdash import Tracker
from clipdash.store import RunReader
from clipdash.track.nonfinite import skips_on_device

CONVERSIONS = ("item", "__bool__", "__float__", "__int__", "tolist")
BAD_STEPS = {3, 4, 9}


@contextmanager
def count_host_reads() -> Iterator[list[str]]:
    seen: list[str] = []
    main = threading.current_thread()
    originals = {name: getattr(Tensor, name) for name in CONVERSIONS}

    def patched(name: str):  # type: ignore[no-untyped-def]
        original = originals[name]

        def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread() is main:
                seen.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name in CONVERSIONS:
        setattr(Tensor, name, patched(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(Tensor, name, original)


def make_opt(model: nn.Module, cls: type, **kw: object) -> torch.optim.Optimizer:
    return cls(model.parameters(), lr=1e-2, fused=True, **kw)


@pytest.mark.parametrize(("cls", "kw"), [(torch.optim.AdamW, {}), (torch.optim.Adam, {}),
                                         (torch.optim.SGD, {})])
def test_fused_skip_reads_nothing_and_matches_a_host_skip(tmp_path: Path, cls: type,
                                                          kw: dict) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    ref = copy.deepcopy(model)
    opt, ref_opt = make_opt(model, cls, **kw), make_opt(ref, cls, **kw)
    assert skips_on_device([opt])
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen))
               for _ in range(12)]
    reads: list[str] = []
    with Tracker(model, opt, run_dir=tmp_path / "r", tensorboard=False, quiet=True,
                 max_norm=0.5, buffer_steps=5) as tracker:
        assert tracker.device_skip
        for step, (x, y) in enumerate(batches):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if step in BAD_STEPS:
                model[0].weight.grad[0, 0] = math.inf
            with count_host_reads() as seen:
                stepped = tracker.clip()
                opt.step()
                tracker.step(loss)
            reads += seen
            assert stepped

            ref_opt.zero_grad()
            nn.functional.mse_loss(ref(x), y).backward()
            if step not in BAD_STEPS:  # the reference skips on the host
                nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
                ref_opt.step()
        assert tracker.nonfinite_steps == len(BAD_STEPS)
    assert reads == []
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert "found_inf" not in opt.__dict__  # closing hands the optimizer back as it was
    with RunReader(tmp_path / "r") as r:
        finite = [row["finite"] for row in r.iter_steps()]
        events = [e["step"] for e in r.events_after() if e["kind"] == "nonfinite"]
    assert [i for i, f in enumerate(finite) if not f] == sorted(BAD_STEPS)
    assert events == [3, 9]  # one per streak


def test_optimizers_that_cannot_skip_keep_the_host_read() -> None:
    model = nn.Linear(2, 1)
    assert not skips_on_device([torch.optim.AdamW(model.parameters(), lr=0.1)])  # foreach
    assert not skips_on_device([torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                fused=True)])
    assert not skips_on_device([torch.optim.RMSprop(model.parameters(), lr=0.1)])
