#!/usr/bin/env bash
# Creates .venv with the local CPU build of torch 2.13.0 first (so pip never reaches for a CUDA
# build), then clipdash itself. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# constraints.txt pins torch for every later install: transformers / lightning must not pull
# another torch build.
.venv/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
# Fail loudly rather than test against a torch that pip swapped in.
.venv/bin/python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
sys.exit(0 if v == '2.13.0' else f'setup.sh: torch {torch.__version__} installed, want 2.13.0')"
