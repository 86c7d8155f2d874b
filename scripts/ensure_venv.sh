#!/usr/bin/env bash
# Runs scripts/setup.sh only when .venv is missing or older than what set it up: the stamp
# .venv/.stamp holds a hash of pyproject.toml and setup.sh, written after a successful set-up.
# A clean clone (or CI) has no stamp, so it sets up in full; a current venv costs ~0.1 s.
# CLIPDASH_SETUP=1 forces the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "${CLIPDASH_SETUP:-0}" != 1 ] && [ -x .venv/bin/python ] \
    && [ "$(cat .venv/.stamp 2>/dev/null)" = "$stamp" ] \
    && .venv/bin/python -c "import clipdash" 2>/dev/null; then
    exit 0
fi
bash scripts/setup.sh
echo "$stamp" > .venv/.stamp
