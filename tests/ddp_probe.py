"""`clipdash run` under torchrun, with every rank logging the control state it steps with.

    torchrun --nproc-per-node 2 tests/ddp_probe.py run CONFIG --runs-dir DIR --name NAME

Each rank appends `[next step, max_norm, lr of group 0, paused]` after every `Tracker.step` to
`$PROBE_DIR/rank<N>.jsonl`, so a test can check that every rank applied every command at the
same step.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from clipdash.cli import main
from clipdash.track.tracker import Tracker

log = open(os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.jsonl"), "w")  # noqa: SIM115
original = Tracker.step


def step(self: Tracker, loss: Any, epoch: int | None = None) -> None:
    original(self, loss, epoch)
    log.write(json.dumps([self.step_index, self.clipper.get("max_norm"),
                          self.optimizer.param_groups[0]["lr"], self.steering.paused]) + "\n")


Tracker.step = step  # type: ignore[method-assign]
code = main(sys.argv[1:])
log.close()
sys.exit(code)
