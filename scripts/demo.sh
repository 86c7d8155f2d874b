#!/usr/bin/env bash
# The demo: install, then train the exploding-gradient RNN twice (unclipped, then clipped) and
# show what clipdash recorded. On a terminal it ends in the live dashboard (q quits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_venv.sh  # skips the set-up when .venv is current
RUNS=${RUNS_DIR:-runs}
# One torch thread: these models are small, and on a busy or 2-core machine torch's threads
# waiting on each other can slow a run tenfold.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
stamp=$(date +%H%M%S)
.venv/bin/clipdash run examples/exploding_rnn.toml --runs-dir "$RUNS" --name "rnn-unclipped-$stamp" \
    --set clip.mode=\"none\"
.venv/bin/clipdash run examples/exploding_rnn.toml --runs-dir "$RUNS" --name "rnn-clipped-$stamp"
echo
.venv/bin/clipdash ls "$RUNS"
echo
.venv/bin/clipdash compare "rnn-unclipped-$stamp" "rnn-clipped-$stamp" --runs-dir "$RUNS" || true
echo
echo "Watch live:      .venv/bin/clipdash watch $RUNS"
echo "TensorBoard:     .venv/bin/tensorboard --logdir $RUNS"
echo "Every step:      .venv/bin/clipdash export rnn-clipped-$stamp --runs-dir $RUNS | head"
if [ -t 0 ] && [ -t 1 ]; then
    echo "Opening the dashboard in 3 s (q quits)..."
    sleep 3
    .venv/bin/clipdash watch "$RUNS"
fi
