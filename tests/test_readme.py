"""The README's code is run, so it cannot rot: the Tracker loop records and stops on command,
the top-of-page commands can be typed, and examples/custom_loop.py has the same loop shape."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_proc import ENV, clipdash, query, wait_until
from tui_fixtures import make_run

from clipdash.store.layout import resolve_run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# What the snippet leaves to the reader: a model, its data, and the validation numbers.
PRELUDE = """
import torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.99)
x, y = torch.randn(32, 4), torch.randn(32, 1)
loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
loss_fn = torch.nn.MSELoss()
epochs = {epochs}
val_loss, val_acc = 0.5, 0.9
"""


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def tracker_snippet() -> str:
    """The hand-written loop of "Your own loop" (other snippets wrap a framework's objects)."""
    found = [b for b in code_blocks(README, "python")
             if "clipdash.Tracker(model, optimizer" in b and "for epoch in range(epochs)" in b]
    assert len(found) == 1, "expected one README snippet with the Tracker in an epoch loop"
    return found[0]


def start_snippet(tmp_path: Path, epochs: int) -> subprocess.Popen:
    script = tmp_path / "snippet.py"
    script.write_text(PRELUDE.format(epochs=epochs) + tracker_snippet())
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the README snippet did not end within {timeout} s") from None
    assert proc.returncode == 0, out
    return out


def test_tracker_snippet_records_every_step_and_eval(tmp_path: Path) -> None:
    finish(start_snippet(tmp_path, epochs=3), timeout=120)
    run = tmp_path / "runs" / "my-run"
    assert query(run, "SELECT COUNT(*), MIN(step), MAX(step) FROM steps") == [(12, 0, 11)]
    assert query(run, "SELECT step, value FROM evals WHERE metric = 'accuracy' ORDER BY step") \
        == [(3, 0.9), (7, 0.9), (11, 0.9)]
    assert query(run, "SELECT state FROM status") == [("finished",)]


def test_tracker_snippet_stops_on_ctl_stop(tmp_path: Path) -> None:
    """`ctl stop` ends the whole loop: nothing is recorded after the acknowledged step (the
    snippet once broke out of the inner loop only and trained every remaining epoch)."""
    proc = start_snippet(tmp_path, epochs=1_000_000)
    run = tmp_path / "runs" / "my-run"
    try:
        wait_until(lambda: query(run, "SELECT COUNT(*) FROM steps")[0][0] > 20, 60,
                   "the snippet's first steps")
        r = clipdash("ctl", "my", "stop", "--timeout", "30", cwd=tmp_path)  # a prefix works
        assert r.returncode == 0, r.stderr
        acked = int(re.fullmatch(r"applied at step (\d+): stopping before step \d+\n",
                                 r.stdout)[1])  # type: ignore[index]
        finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert query(run, "SELECT MAX(step) FROM steps") == [(acked - 1,)]
    assert query(run, "SELECT state FROM status") == [("stopped",)]


def _loop_breaks(tree: ast.AST) -> list[int]:
    """Depth (1 = outermost) of every loop that ends with `if tracker.should_stop: break`."""
    found: list[int] = []

    def walk(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, ast.For)
            if isinstance(child, ast.For) and any(
                    isinstance(s, ast.If) and "should_stop" in ast.unparse(s.test)
                    and isinstance(s.body[0], ast.Break) for s in child.body):
                found.append(inner)
            walk(child, inner)

    walk(tree, 0)
    return sorted(found)


def test_readme_snippet_and_example_leave_both_loops() -> None:
    assert _loop_breaks(ast.parse(tracker_snippet())) == [1, 2]
    example = ast.parse((ROOT / "examples" / "custom_loop.py").read_text())
    assert _loop_breaks(example) == [1, 2]


def test_top_commands_can_be_typed(tmp_path: Path) -> None:
    """The README's first commands name runs the way a user can type them."""
    top = code_blocks(README, "")[0]
    ctl = [ln.split("#")[0].split() for ln in top.splitlines() if ln.startswith("clipdash ctl")]
    assert ctl and all("..." not in " ".join(c) for c in ctl)
    for name in ("exploding_rnn-20261201-101010", "custom-loop"):
        make_run(tmp_path / name, 5).close()
    for words in ctl:
        assert resolve_run(words[2], tmp_path).name == "exploding_rnn-20261201-101010"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
