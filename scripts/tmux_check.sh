#!/usr/bin/env bash
# Real-terminal check of `clipdash watch`: a real training run in the background, the dashboard
# in a tmux pane at 80x24 and then at 160x45, keys sent with send-keys, the screen read back with
# capture-pane.
#
#   scripts/tmux_check.sh            # exit 0 when every expected screen showed up
#   KEEP=1 scripts/tmux_check.sh     # keep the work directory (captures in $WORK/captures)
#
# Each capture is saved as captures/NN-name.txt so that a person can judge readability.
set -euo pipefail
export LC_ALL=C.UTF-8  # grep patterns below hold braille and box-drawing characters

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d /tmp/clipdash-tmux.XXXXXX)
RUNS=""
CAPS="$WORK/captures"
SESSION="clipdash-check-$$"
mkdir -p "$CAPS"
TRAIN_PID=""

cleanup() {
    tmux kill-session -t "$SESSION" 2>/dev/null || true
    if [[ -n "$TRAIN_PID" ]] && kill -0 "$TRAIN_PID" 2>/dev/null; then kill "$TRAIN_PID"; fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    echo "---- last screen ----" >&2
    tmux capture-pane -p -t "$SESSION" >&2 || true
    echo "---- trainer log ----" >&2
    tail -20 "$WORK/train.log" >&2 || true
    exit 1
}

N=0
# wait_for NAME PATTERN [TIMEOUT]: capture the pane until it matches PATTERN (grep -E).
wait_for() {
    local name=$1 pattern=$2 timeout=${3:-10} start=$SECONDS
    N=$((N + 1))
    local file
    file="$CAPS/$(printf '%02d' "$N")-$name.txt"
    while true; do
        tmux capture-pane -p -t "$SESSION" >"$file"
        if grep -Eq -- "$pattern" "$file"; then
            echo "ok   $name  ($((SECONDS - start)) s)"
            return 0
        fi
        ((SECONDS - start < timeout)) || fail "$name: no /$pattern/ within $timeout s"
        sleep 0.2
    done
}

keys() { tmux send-keys -t "$SESSION" "$@"; }

# check COLS ROWS: the whole tour against a fresh live run, in a pane of that size.
check() {
    local cols=$1 rows=$2
    RUNS="$WORK/runs-$cols"
    echo "== ${cols}x${rows}"
    "$PY" scripts/watch_demo_train.py --runs-dir "$RUNS" --name demo --seconds 40 --steps 4000 \
        >"$WORK/train.log" 2>&1 &
    TRAIN_PID=$!
    for _ in $(seq 100); do [[ -f "$RUNS/demo/clipdash.sqlite" ]] && break; sleep 0.2; done
    [[ -f "$RUNS/demo/clipdash.sqlite" ]] || fail "the trainer did not create its run"
    # A finished sweep beside the live run: its members must be told apart at any width.
    for member in max_norm=0.5,scheduler=CyclicLR max_norm=1.0,scheduler=StepLR; do
        "$PY" - "$RUNS/sw/$member" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from tui_fixtures import make_run

make_run(Path(sys.argv[1]), 50).close()
PY
    done

    tmux kill-session -t "$SESSION" 2>/dev/null || true
    tmux new-session -d -s "$SESSION" -x "$cols" -y "$rows" \
        "$PY -m clipdash watch '$RUNS'; echo \"watch exited with \$?\"; sleep 60"

    wait_for list 'demo +running +[0-9]+/4000'
    wait_for list-live 'demo +running +([1-9][0-9]{2,})/4000' 15
    wait_for live-first-and-sweep '▾ sw/  2 runs' 5
    wait_for sweep-members 'max_norm=0.5 CyclicLR' 5
    wait_for max-norm-column 'status +step +loss +grad norm +max_norm' 5
    wait_for footer-help '\? help' 5
    keys Right Right
    if ((cols < 100)); then  # narrow: the columns scroll, the name column stays
        wait_for name-column-stays 'run +loss +grad norm +max_norm +clip%' 5
    else  # wide: everything fits, nothing scrolls, the name takes the spare width
        wait_for wide-no-scroll 'run {20,}status +step' 5
    fi
    wait_for name-column-stays-2 'max_norm=1.0 StepLR' 5
    keys Left Left
    keys Enter
    wait_for run-view 'grad norm' 5
    wait_for run-view-plots '┤.*[⣀⣿⡇⢸⠉⠒⣇⡀⢀]' 5
    keys p
    wait_for paused 'demo +paused' 10
    wait_for paused-ack 'pause → demo: applied' 10
    keys m
    wait_for dialog 'Set max_norm of demo' 5
    keys a b c Enter
    wait_for dialog-rejects 'not a number' 5
    keys C-u
    sleep 0.3  # Textual drops characters that arrive in the same read as a control key
    keys 0 . 5 Enter
    wait_for max-norm-ack 'max_norm=0.5 → demo: applied' 10
    keys p
    wait_for resumed 'demo +running' 10
    keys 3
    wait_for events 'max_norm 1 -> 0.5' 5
    keys 2
    wait_for params 'parameters by latest' 5
    keys 4
    wait_for config-in-effect 'max_norm = 0.5 +# changed while training \(started at 1\)' 10
    wait_for config-footer '\? help' 5
    keys Escape
    wait_for back-to-list 'clipdash watch +3 runs,' 5
    keys s
    wait_for confirm 'Stop run demo' 5
    keys y
    wait_for stopped 'demo +stopped' 15
    keys q
    wait_for quit 'watch exited with 0' 5
    wait "$TRAIN_PID" || fail "the trainer exited with $?"
    TRAIN_PID=""
}

check 80 24
check 160 45
echo "PASS: clipdash watch in tmux at 80x24 and 160x45 (captures: $CAPS)"
