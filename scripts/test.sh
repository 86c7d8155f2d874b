#!/usr/bin/env bash
# The test command of the README and of CI: lint, type-check, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_venv.sh  # skips the set-up when .venv is current
# The tests start real trainer processes side by side: one torch thread each keeps them from
# starving each other on a small machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/ruff check clipdash tests benchmarks examples scripts
.venv/bin/mypy clipdash
.venv/bin/python -m pytest "$@"
