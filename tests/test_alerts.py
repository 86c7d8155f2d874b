"""Spike alerts and rewind: the detector against a float64 recomputation, and real runs of a
plug-in model whose training forward pass number K is scaled 40x (a spike no schedule explains)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from spike_model import make_model
from trainer_proc import query, steps_table, tensorboard_scalars, tensorboard_texts, wait_until

from clipdash import control
from clipdash.store.reader import RunReader
from clipdash.store.schema import StoreError
from clipdash.track.alerts import AlertOptions, AlertOptionsError, SpikeWatch
from clipdash.track.tracker import Tracker

K = 157  # the spiked forward pass (= step: one training pass per step)
STEPS = 240
JOIN_S = 60.0


def alerts(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = query(run_dir, "SELECT step, data FROM events WHERE kind = 'alert' ORDER BY id")
    return [(s, json.loads(d)) for s, d in rows]


def events(run_dir: Path, kind: str) -> list[tuple[int, str, dict[str, Any]]]:
    rows = query(run_dir, "SELECT step, message, data FROM events WHERE kind = ? ORDER BY id",
                 (kind,))
    return [(s, m, json.loads(d) if d else {}) for s, m, d in rows]


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"loss_spike": -1.0}, "loss_spike"), ({"grad_spike": math.inf}, "grad_spike"),
    ({"grad_spike": "6"}, "grad_spike"), ({"window": 1}, "window"), ({"window": 2.5}, "window"),
    ({"nonfinite_streak": -1}, "nonfinite_streak"), ({"action": "halt"}, "action"),
    ({"rewind_skip": True}, "rewind_skip"),
])
def test_bad_options_name_the_key(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(AlertOptionsError, match=names):
        AlertOptions(**kwargs)


def test_build_from_tracker_arguments() -> None:
    assert AlertOptions.build(None) == AlertOptions()
    assert AlertOptions.build(False) is None
    assert AlertOptions.build({"window": 20}).window == 20
    with pytest.raises(AlertOptionsError, match="unknown alert option 'windw'"):
        AlertOptions.build({"windw": 20})
    assert AlertOptions().enabled and AlertOptions(loss_spike=0, grad_spike=0).enabled
    assert not AlertOptions(loss_spike=0, grad_spike=0, nonfinite_streak=0).enabled


# -- the detector ---------------------------------------------------------------------------------


def cols(loss: np.ndarray, grad: np.ndarray | None = None, start: int = 0) -> dict[str, Any]:
    n = len(loss)
    return {"step": np.arange(start, start + n), "loss": loss,
            "grad_norm_pre": np.ones(n) if grad is None else grad}


def test_z_score_is_against_the_window_before_the_spike() -> None:
    rng = np.random.default_rng(0)
    loss = 2.0 + 0.1 * rng.standard_normal(400)
    loss[250] *= 40
    watch = SpikeWatch(AlertOptions(grad_spike=0, window=100))
    found = watch.check(cols(loss[:123])) + watch.check(cols(loss[123:], start=123))
    assert [(a.step, a.metric) for a in found] == [(250, "loss")]
    base = np.log(loss[150:250])  # float64, numpy's own std: the 100 values before the spike
    assert found[0].z == pytest.approx((np.log(loss[250]) - base.mean()) / base.std(),
                                       rel=1e-9)
    assert found[0].data == {"metric": "loss", "value": loss[250], "z": found[0].z,
                             "threshold": 6.0}
    assert watch.checked == 399


def test_no_alert_before_the_window_is_full_and_one_per_excursion() -> None:
    loss = np.ones(300) + 0.01 * np.sin(np.arange(300))
    loss[50] = 100.0  # before 100 values of history: not judged
    loss[200:205] = 100.0  # one excursion of five steps: one alert
    loss[260] = 100.0  # after coming back under the threshold: a new alert
    watch = SpikeWatch(AlertOptions(grad_spike=0))
    assert [a.step for a in watch.check(cols(loss))] == [200, 260]


def test_nonfinite_streak() -> None:
    grad = np.ones(60)
    grad[10:15] = np.nan  # 5: under the streak of 10
    grad[30:45] = np.inf  # 15: one alert, at the 10th
    found = SpikeWatch(AlertOptions(window=100)).check(cols(np.ones(60), grad))
    assert [(a.step, a.metric, a.value, a.z) for a in found] == [(39, "nonfinite", 10.0, None)]


# -- a hand-written loop --------------------------------------------------------------------------


class Loop:
    """A hand-written loop on the spike model: SGD with momentum on a small regression."""

    def __init__(self, run_dir: Path, spike_at: int | list[int] = K, **tracker: Any) -> None:
        torch.manual_seed(0)
        self.x = torch.randn(640, 8)
        self.y = torch.sin(2 * self.x[:, :2])
        self.model = make_model(8, 2, spike_at)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.tracker = Tracker(self.model, self.opt, run_dir=run_dir, max_norm=1.0,
                               quiet=True, **tracker)
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.batch = 0  # the data position
        self.skipped = 0

    def save(self) -> None:
        self.snapshots[self.tracker.step_index] = {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "opt": self.opt.state_dict(), "batch": self.batch}

    def restore(self, before: int, skip: int) -> int | None:
        saved = [s for s in self.snapshots if s <= before]
        if not saved:
            return None
        at = max(saved)
        self.model.load_state_dict(self.snapshots[at]["model"])
        self.opt.load_state_dict(self.snapshots[at]["opt"])
        self.batch = self.snapshots[at]["batch"] + skip
        self.skipped += skip
        return at

    def train(self, steps: int = STEPS, save_every: int = 0) -> None:
        t = self.tracker
        with t:
            while t.step_index < steps and not t.should_stop:
                if save_every and t.step_index % save_every == 0:
                    self.save()
                i = (self.batch * 16) % 640
                self.batch += 1
                self.opt.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(self.x[i:i + 16]),
                                                    self.y[i:i + 16])
                loss.backward()
                if t.clip():
                    self.opt.step()
                t.step(loss)


def test_alert_exactly_at_the_spike_in_store_tensorboard_and_ls(tmp_path: Path,
                                                               capsys: Any) -> None:
    run_dir = tmp_path / "hand"
    Loop(run_dir).train()
    found = alerts(run_dir)
    assert [(s, d["metric"]) for s, d in found] == [(K, "loss"), (K, "grad_norm_pre")]
    losses = [row[1] for row in steps_table(run_dir, "step, loss")]
    loss = found[0][1]
    assert loss["value"] == pytest.approx(losses[K], rel=1e-6)
    base = np.log(losses[K - 100:K])  # float64 recomputation from the record
    assert loss["z"] == pytest.approx((np.log(losses[K]) - base.mean()) / base.std(),
                                      rel=1e-6)
    assert loss["z"] > 10 and loss["threshold"] == 6.0
    texts = [(s, t) for s, t in tensorboard_texts(run_dir) if t.startswith("[alert]")]
    assert [s for s, _ in texts] == [K, K]
    from clipdash.cli import main

    assert main(["ls", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["alerts"] == 2
    assert main(["ls", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "ALERTS" and row.split()[-1] == "2"


def test_a_healthy_run_raises_no_alert(tmp_path: Path) -> None:
    Loop(tmp_path / "healthy", spike_at=-1).train(400)
    assert alerts(tmp_path / "healthy") == []


def _train_in_thread(loop: Loop, **kwargs: Any) -> threading.Thread:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            loop.train(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _join(thread: threading.Thread) -> None:
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the training thread did not end"
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


def _status(run_dir: Path) -> str:
    try:
        with RunReader(run_dir) as reader:
            return reader.status()
    except StoreError:  # the trainer is creating it right now
        return "not started"


def test_pause_lands_at_the_spike_or_the_step_after(tmp_path: Path) -> None:
    run_dir = tmp_path / "pause"
    loop = Loop(run_dir, alerts={"action": "pause"})
    thread = _train_in_thread(loop)
    wait_until(lambda: _status(run_dir) == "paused", JOIN_S, "the alert's pause")
    last = query(run_dir, "SELECT MAX(step) FROM steps")[0][0]
    assert last in (K, K + 1)
    (step, message, data), = events(run_dir, "control")
    assert step == last + 1 and data["action"] == "pause" and data["source"] == "alert"
    assert f"alert at step {K}" in message
    control.stop(run_dir)
    _join(thread)
    assert _status(run_dir) == "stopped"


def test_rewind_replaces_the_record_from_the_snapshot(tmp_path: Path) -> None:
    run_dir = tmp_path / "rewind"
    loop = Loop(run_dir, alerts={"action": "rewind", "rewind_skip": 3},
                on_rewind=lambda before, skip: loop.restore(before, skip))
    loop.train(save_every=20)
    assert loop.skipped == 3
    rows = steps_table(run_dir, "step, loss")
    assert [s for s, _ in rows] == list(range(STEPS)), "one row per step"
    losses = np.asarray([v for _, v in rows])
    assert losses[K] < 3 * np.median(losses[K - 50:K]), "a normal loss at the spiked step"
    assert [s for s, _ in alerts(run_dir)] == [K, K]
    (step, message, data), = events(run_dir, "rewind")
    assert (step, data["to"], data["skip"], data["before"]) == (140, 140, 3, K)
    assert data["from"] in (K + 1, K + 2) and "rewound from step" in message
    board = tensorboard_scalars(run_dir, "loss/train")
    assert [s for s, _ in board] == list(range(STEPS)), "TensorBoard: one value per step"
    assert board[K][1] == pytest.approx(losses[K], rel=1e-6)


def test_a_spike_in_the_replay_pauses_instead_of_rewinding_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "again"
    # Pass K + 10 spikes too: after the rewind from step F (F passes done) to 140, that is
    # step 140 + K + 10 - F, before F.
    loop = Loop(run_dir, spike_at=[K, K + 10], alerts={"action": "rewind"},
                on_rewind=lambda before, skip: loop.restore(before, skip))
    thread = _train_in_thread(loop, save_every=20)
    wait_until(lambda: _status(run_dir) == "paused", JOIN_S, "the pause after the replay")
    (_, _, rewind), = events(run_dir, "rewind")
    again = 140 + K + 10 - rewind["from"]
    assert [s for s, _ in alerts(run_dir)] == [K, K, again, again]
    (step, message, data), = events(run_dir, "control")
    assert data["action"] == "pause" and f"another alert (step {again})" in message
    control.stop(run_dir)
    _join(thread)


def test_rewind_without_a_snapshot_pauses_instead(tmp_path: Path) -> None:
    run_dir = tmp_path / "nosnap"
    loop = Loop(run_dir, alerts={"action": "rewind"},
                on_rewind=lambda before, skip: loop.restore(before, skip))
    thread = _train_in_thread(loop)  # no snapshots are saved
    wait_until(lambda: _status(run_dir) == "paused", JOIN_S, "the fallback pause")
    (step, message, data), = events(run_dir, "control")
    assert data["action"] == "pause" and f"no checkpoint at or before step {K}" in message
    control.stop(run_dir)
    _join(thread)


def test_a_loop_without_the_hook_refuses_ctl_rewind_and_pauses_on_alerts(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "nohook"
    loop = Loop(run_dir, alerts={"action": "rewind"})
    thread = _train_in_thread(loop)
    wait_until(lambda: _status(run_dir) == "paused", JOIN_S, "the fallback pause")
    assert "not supported here" in events(run_dir, "control")[0][1]
    with pytest.raises(control.ControlError, match="cannot rewind"):
        control.rewind(run_dir)
    control.stop(run_dir)
    _join(thread)


def test_run_list_and_timeline_mark_alerts() -> None:
    from clipdash.tui.messages import RunRow
    from clipdash.tui.runtable import Item, name_cell
    from clipdash.tui.widgets import event_marker

    quiet, alerted = (name_cell(Item("p", "exp", RunRow("p", "exp", "running", alerts=n)),
                                False) for n in (0, 2))
    assert quiet.plain.strip() == "exp" and alerted.plain.strip() == "exp !2"
    assert "red" in str(alerted.spans[-1].style)
    assert event_marker(K, "alert").char == "!" and event_marker(K, "checkpoint").char != "!"


# -- clipdash run ---------------------------------------------------------------------------------

RUN_CONFIG = """\
seed = 0
device = "cpu"
[model]
kind = "spike_model:make_model"
in_dim = 8
out_dim = 1
spike_at = {k}
[data]
kind = "regression"
batch_size = 16
n_samples = 640
input_dim = 8
output_dim = 1
[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9
[train]
max_steps = {steps}
eval_every = 1000
checkpoint_every = 20
[alerts]
action = "{action}"
rewind_skip = {skip}
"""


def clipdash_run(tmp_path: Path, name: str, action: str, skip: int = 0, k: int = K) -> Path:
    from clipdash.cli import main

    config = tmp_path / f"{name}.toml"
    config.write_text(RUN_CONFIG.format(k=k, steps=STEPS, action=action, skip=skip))
    assert main(["run", str(config), "--runs-dir", str(tmp_path), "--name", name,
                 "--no-progress"]) == 0
    return tmp_path / name


def test_clipdash_run_rewinds_to_the_checkpoint_before_the_spike(tmp_path: Path) -> None:
    run_dir = clipdash_run(tmp_path, "rewind", "rewind", skip=5)
    rows = steps_table(run_dir, "step, loss, epoch")
    assert [r[0] for r in rows] == list(range(STEPS)), "one row per step"
    losses = np.asarray([r[1] for r in rows])
    assert losses[K] < 3 * np.median(losses[K - 50:K]), "a normal loss at the spiked step"
    assert [s for s, _ in alerts(run_dir)] == [K, K]
    (step, _, data), = events(run_dir, "rewind")
    assert (step, data["to"], data["skip"]) == (140, 140, 5) and data["from"] in (K + 1, K + 2)
    board = tensorboard_scalars(run_dir, "loss/train")
    assert [s for s, _ in board] == list(range(STEPS))
    assert board[K][1] == pytest.approx(losses[K], rel=1e-6)
    with RunReader(run_dir) as reader:
        assert reader.status() == "finished"


def test_rewind_restores_the_checkpoint_state_exactly(tmp_path: Path) -> None:
    # The steps after a rewind with skip 0 are the steps of a run that never spiked, resumed
    # from the same checkpoint: the spike model at a pass it never reaches gives that run.
    rewound = steps_table(clipdash_run(tmp_path, "rw", "rewind"), "step, loss")
    clean = steps_table(clipdash_run(tmp_path, "clean", "event", k=-1), "step, loss")
    assert rewound[:K] == clean[:K]
    assert [r[1] for r in rewound[140:145]] == pytest.approx([r[1] for r in clean[140:145]],
                                                             rel=1e-5)


def test_the_recorded_lr_follows_the_schedule_after_a_rewind(tmp_path: Path) -> None:
    # optimizer.load_state_dict swaps every param-group dict and keeps the params lists: the
    # Tracker must then read the LRs from the new dicts, not the ones it saw before the rewind.
    config = tmp_path / "sched.toml"
    config.write_text(RUN_CONFIG.format(k=K, steps=STEPS, action="rewind", skip=0)
                      + '[scheduler]\nname = "StepLR"\nstep_size = 25\ngamma = 0.7\n'
                      + 'interval = "step"\n')
    from clipdash.cli import main

    assert main(["run", str(config), "--runs-dir", str(tmp_path), "--name", "sched",
                 "--no-progress"]) == 0
    rows = steps_table(tmp_path / "sched", "step, lr")
    assert [r[0] for r in rows] == list(range(STEPS))
    assert [r[1] for r in rows] == pytest.approx([0.05 * 0.7 ** (s // 25) for s in range(STEPS)],
                                                 rel=1e-6)


def test_stop_action_stops_with_a_checkpoint(tmp_path: Path) -> None:
    run_dir = clipdash_run(tmp_path, "stop", "stop")
    last = query(run_dir, "SELECT MAX(step) FROM steps")[0][0]
    assert last in (K, K + 1)
    with RunReader(run_dir) as reader:
        assert reader.status() == "stopped"
    assert (run_dir / "checkpoints" / f"step-{last + 1:09d}.pt").is_file()


def test_ctl_rewind_a_paused_run(tmp_path: Path, capsys: Any) -> None:
    from clipdash.cli import main

    config = tmp_path / "cfg.toml"
    config.write_text(RUN_CONFIG.format(k=K, steps=STEPS, action="pause", skip=0))
    run_dir = tmp_path / "ctl"
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main([
        "run", str(config), "--runs-dir", str(tmp_path), "--name", "ctl", "--no-progress"])),
        daemon=True)
    thread.start()
    wait_until(lambda: _status(run_dir) == "paused", JOIN_S, "the alert's pause")
    capsys.readouterr()
    assert main(["ctl", str(run_dir), "rewind", "--to", "-1"]) == 2
    assert "--to: must be >= 0" in capsys.readouterr().err
    assert main(["ctl", str(run_dir), "pause", "--skip", "2"]) == 2
    assert main(["ctl", str(run_dir), "set", "max_norm=0.5"]) == 0  # kept by the rewind
    assert main(["ctl", str(run_dir), "rewind", "--skip", "2"]) == 0
    assert "applied at step 140: rewound from step" in capsys.readouterr().out
    thread.join(JOIN_S)
    assert not thread.is_alive() and codes == [0]
    rows = steps_table(run_dir, "step, max_norm")
    assert [r[0] for r in rows] == list(range(STEPS))
    assert {r[1] for r in rows[:140]} == {1.0} and {r[1] for r in rows[140:]} == {0.5}
    (_, _, data), = events(run_dir, "rewind")
    assert (data["to"], data["skip"], data["source"]) == (140, 2, "cli")


@pytest.mark.parametrize(("line", "message"), [
    ("window = 1", "alerts.window: must be an integer >= 2, got 1"),
    ("", "alerts.action: must be one of event, pause, stop, rewind, got 'halt'"),
    ("loss_spike = -2.0", "alerts.loss_spike: must be a finite number >= 0"),
    ("rewind_skp = 3", "alerts.rewind_skp: unknown key"),
])
def test_bad_alerts_config_is_one_line_and_exit_2(tmp_path: Path, capsys: Any, line: str,
                                                  message: str) -> None:
    from clipdash.cli import main

    config = tmp_path / "bad.toml"
    action = "event" if line else "halt"
    config.write_text(RUN_CONFIG.format(k=K, steps=STEPS, action=action, skip=0) + line + "\n")
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- false alarms on the examples -----------------------------------------------------------------

# Per-step loss, pre-clip norm and epoch of full `clipdash run` runs of the examples (seed 0, one
# intra-op thread, default [alerts]), as `clipdash export` gives them: the README's "Reproduce"
# commands plus `examples/autoclip.toml` (name "autoclip"), stored as float32 / int16.
SERIES = Path(__file__).resolve().parent / "data" / "example_series.npz"
HEALTHY = ["rnn-clipped", "mlp-bn", "mlp-plain", "step-decay", "exp-decay", "cyclic", "autoclip"]


def replay(name: str) -> list[tuple[int, str]]:
    data = np.load(SERIES)
    watch = SpikeWatch(AlertOptions())
    cols_ = {"loss": data[f"{name}_loss"].astype(np.float64),
             "grad_norm_pre": data[f"{name}_grad"].astype(np.float64),
             "epoch": data[f"{name}_epoch"].astype(np.int64)}
    n = len(cols_["loss"])
    found = []
    for start in range(0, n, 37):  # in batches, as the writer sees them
        part = {k: v[start:start + 37] for k, v in cols_.items()}
        found += watch.check({"step": np.arange(start, start + len(part["loss"])), **part})
    return [(a.step, a.metric) for a in found]


def test_the_healthy_examples_raise_one_alert_in_17300_steps() -> None:
    found = {name: replay(name) for name in HEALTHY}
    assert sum(len(np.load(SERIES)[f"{n}_loss"]) for n in HEALTHY) == 17300
    # The one left: a single-batch excursion of the clipped RNN (loss x4, pre-clip norm x15,
    # clipped; see the README), which a detector that still catches the clip_by_value spikes
    # cannot tell from a real one.
    assert found == {**dict.fromkeys(HEALTHY, []), "rnn-clipped": [(1130, "loss")]}


def test_the_unhealthy_example_still_alerts() -> None:
    assert replay("rnn-value") == [
        (532, "grad_norm_pre"), (534, "loss"), (534, "grad_norm_pre"), (795, "grad_norm_pre"),
        (910, "grad_norm_pre"), (1333, "grad_norm_pre"), (1804, "grad_norm_pre"),
        (2473, "grad_norm_pre")]


def test_an_epochs_smaller_last_batch_is_judged_against_the_other_last_batches() -> None:
    rng = np.random.default_rng(0)
    n, per_epoch = 1200, 52
    grad = np.exp(0.2 * rng.standard_normal(n))
    epoch = np.arange(n) // per_epoch
    last = np.arange(per_epoch - 1, n, per_epoch)
    grad[last] *= 5.0 * np.exp(0.2 * rng.standard_normal(len(last)))  # every epoch's last
    grad[last[15]] *= 40  # a spike at an epoch's last step: caught
    grad[700] *= 40  # and one mid-epoch: caught exactly there
    watch = SpikeWatch(AlertOptions(loss_spike=0))
    found = watch.check({"step": np.arange(n), "loss": np.ones(n), "grad_norm_pre": grad,
                         "epoch": epoch})
    assert [a.step for a in found] == sorted([last[15], 700])
    assert watch.checked == n - 1 or watch.held is not None


def test_the_batchnorm_example_at_14_epochs_raises_no_alert(tmp_path: Path) -> None:
    """A real run: before the last batches were judged apart, step 623 (epoch 11's last
    batch, 12 samples instead of 64) alerted with a pre-clip norm x5.7, z 7.1."""
    from clipdash.cli import main

    config = Path(__file__).resolve().parents[1] / "examples" / "batchnorm_mlp.toml"
    torch.set_num_threads(1)
    assert main(["run", str(config), "--runs-dir", str(tmp_path), "--name", "bn", "--no-progress",
                 "--set", "train.epochs=14"]) == 0
    assert query(tmp_path / "bn", "SELECT COUNT(*) FROM steps") == [(728,)]
    assert alerts(tmp_path / "bn") == []
