#!/usr/bin/env bash
# The test command of the README and of CI: lint, type-check, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check clipdash tests benchmarks examples scripts
.venv/bin/mypy clipdash
.venv/bin/python -m pytest "$@"
